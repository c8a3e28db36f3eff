"""Training survives real faults: damaged checkpoint files, a SIGKILL at an epoch boundary, a
diverging loss, a run folder in S3 whose machine is killed, a full disk."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from segflow import checkpoints, storage
from segflow.cli import cli

SUBPROCESS_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
# A tiny run of 2 epochs of 4 steps, a checkpoint every 2 steps, 2 val images per epoch.
SMALL_OPTIONS = [
    "--arch", "unet", "--width", "0.0625", "--image-size", "64x128", "--batch-size", "2", "--epochs", "2",
    "--steps-per-epoch", "4", "--warmup-steps", "0", "--checkpoint-every", "2", "--val-max-examples", "2",
]  # fmt: skip
SMALL_SETTINGS = {
    "architecture": "unet", "width": 0.0625, "image_size": "64x128", "batch_size": 2, "epochs": 2,
    "steps_per_epoch": 4, "warmup_steps": 0, "checkpoint_every_steps": 2, "val_max_examples": 2,
}  # fmt: skip


def _copy_run(trained, tmp_path):
    """A copy of the shared finished run (checkpoints of steps 35 and 40), safe to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained.out_dir, copy)
    return copy


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


def _overwrite_64k(path):
    with open(path, "r+b") as stream:
        stream.seek(path.stat().st_size // 3)
        stream.write(np.random.default_rng(0).bytes(64 * 1024))


DAMAGES = {
    "truncated weights": (checkpoints.WEIGHTS_FILE, _truncate, "model.weights.h5 has"),
    "empty weights": (checkpoints.WEIGHTS_FILE, _empty, "model.weights.h5 has 0 bytes"),
    "64 KiB of random bytes over the weights": (checkpoints.WEIGHTS_FILE, _overwrite_64k, "does not match its sha256"),
    "garbage state": (checkpoints.STATE_FILE, lambda path: path.write_text("{garbage"), "state.json has"),
    "state file gone": (checkpoints.STATE_FILE, lambda path: path.unlink(), "state.json is missing"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_is_skipped_with_one_warning_naming_it(trained, tmp_path, capsys, damage):
    run = _copy_run(trained, tmp_path)
    newest = run / "checkpoints" / "step-000000040"
    file, damage_file, problem = DAMAGES[damage]
    damage_file(newest / file)

    resume = checkpoints.find_resumable(run / "checkpoints")
    assert resume.path == run / "checkpoints" / "step-000000035" and resume.state["step"] == 35
    assert [path for path, _ in resume.skipped] == [newest]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and str(newest) in warnings[0] and problem in warnings[0]


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_so(trained, records, tmp_path):
    run = _copy_run(trained, tmp_path)
    newest = run / "checkpoints" / "step-000000040"
    _overwrite_64k(newest / checkpoints.WEIGHTS_FILE)
    command = [sys.executable, "-m", "segflow", "train", "--config", str(run / "config.json"), "--records", str(records), "--out", str(run), "--quiet"]  # fmt: skip
    finished = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"40 steps, resumed from step 35 (skipped damaged checkpoint {newest})" in finished.stdout
    assert finished.stderr.count("skipping damaged checkpoint") == 1
    _, state = checkpoints.latest_checkpoint(run / "checkpoints")
    assert state["step"] == state["optimizer_iterations"] == 40  # rewritten, intact
    history = json.loads((run / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4]
    assert np.isfinite(history[-1]["loss"]) and history[-1]["steps_this_session"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated weights", "state file gone"])
def test_when_no_checkpoint_is_intact_training_refuses_to_start_from_zero(trained, records, tmp_path, damage):
    run = _copy_run(trained, tmp_path)
    file, damage_file, _ = DAMAGES[damage]
    for checkpoint in checkpoints.step_checkpoints(run / "checkpoints"):
        damage_file(checkpoint / file)
    history = (run / "history.json").read_text()

    result = CliRunner().invoke(cli, ["train", "--config", str(run / "config.json"), "--records", str(records), "--out", str(run), "--quiet"])  # fmt: skip
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "no intact checkpoint to resume from" in line
    assert str(run / "checkpoints" / "step-000000035") in line and str(run / "checkpoints" / "step-000000040") in line
    assert "Traceback" not in result.output
    assert (run / "history.json").read_text() == history


# The first run kills itself for real (SIGKILL, no cleanup) at the start of epoch 1's end-of-epoch
# work: after the step checkpoint of the epoch's last step, before validation and history.
KILL_AT_EPOCH_END_SCRIPT = """
import json, os, signal, sys
from segflow.config import train_config
from segflow import train as training

def kill(self, epoch, logs=None):
    os.kill(os.getpid(), signal.SIGKILL)

training.ValidationMIoU.on_epoch_end = kill
training.train(train_config(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[2], verbose=0)
"""


@pytest.mark.slow
def test_a_kill_between_the_last_step_checkpoint_and_the_epoch_end_loses_no_epoch(records, tmp_path):
    out = tmp_path / "run"
    first = subprocess.run(
        [sys.executable, "-c", KILL_AT_EPOCH_END_SCRIPT, str(records), str(out), json.dumps(SMALL_SETTINGS)],
        env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    assert checkpoints.latest_checkpoint(out / "checkpoints")[1]["step"] == 4
    assert not (out / "history.json").exists() and not (out / "checkpoints" / "best").exists()

    command = [sys.executable, "-m", "segflow", "train", "--records", str(records), "--out", str(out), "--quiet"]
    finished = subprocess.run(command + SMALL_OPTIONS, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "8 steps, resumed from step 4" in finished.stdout
    history = json.loads((out / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert [entry["step"] for entry in history] == [4, 8]
    assert [entry["steps_this_session"] for entry in history] == [0, 4]  # epoch 1: only its epoch end
    assert all(0 <= entry["val_miou"] <= 1 and np.isfinite(entry["loss"]) for entry in history)
    best = checkpoints.best_state(out / "checkpoints")
    assert best["val_miou"] == max(entry["val_miou"] for entry in history)
    assert best["step"] == history[int(np.argmax([entry["val_miou"] for entry in history]))]["step"]


def _weights_are_finite(path):
    finite = []
    with h5py.File(path, "r") as weights:
        weights.visititems(lambda name, item: finite.append(bool(np.all(np.isfinite(item[()])))) if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" else None)  # fmt: skip
    return bool(finite) and all(finite)


@pytest.mark.slow
def test_a_diverging_loss_stops_the_run_naming_the_step_and_exports_nothing(records, tmp_path):
    out = tmp_path / "run"
    options = [*SMALL_OPTIONS, "--lr", "1e6"]
    command = [sys.executable, "-m", "segflow", "train", "--records", str(records), "--out", str(out), "--quiet"]
    finished = subprocess.run(command + options, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 1, finished.stdout + finished.stderr
    (line,) = [line for line in finished.stderr.splitlines() if line.startswith("Error:")]
    assert "training diverged at step" in line and "nothing was exported" in line
    step = int(line.split("training diverged at step ")[1].split(":")[0])
    assert 1 <= step <= 8
    assert "Traceback" not in finished.stderr
    assert not (out / "model.keras").exists() and not (out / "saved_model").exists()
    for checkpoint in checkpoints.step_checkpoints(out / "checkpoints"):  # only those from before the step
        assert checkpoints.read_state(checkpoint)["step"] < step
        assert _weights_are_finite(checkpoint / checkpoints.WEIGHTS_FILE)


@pytest.mark.slow
def test_mixed_precision_records_applied_updates_and_the_loss_scale(records, tmp_path):
    out = tmp_path / "run"
    options = [*SMALL_OPTIONS, "--epochs", "1", "--steps-per-epoch", "2", "--mixed-precision"]
    result = CliRunner().invoke(cli, ["train", "--records", str(records), "--out", str(out), "--quiet", *options])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((out / "history.json").read_text())
    assert entry["step"] == 2 and 0 <= entry["optimizer_updates"] <= 2
    # Keras' LossScaleOptimizer starts at 2**15 and halves the scale at each skipped update
    # (it doubles only after 2000 good steps).
    assert entry["loss_scale"] == 2.0**15 / 2 ** (2 - entry["optimizer_updates"])
    assert f"mixed precision: {entry['optimizer_updates']} of 2 optimizer updates applied" in result.output


# --- A run folder in S3: the machine dies, another one resumes -------------------------------


@pytest.mark.slow
def test_a_run_in_s3_resumes_on_another_machine_after_its_process_group_is_killed(records, s3_bucket, tmp_path):
    uri = f"{s3_bucket}/prefix/run"
    options = [*SMALL_OPTIONS, "--epochs", "3", "--checkpoint-every", "1"]

    def command(work_dir):
        return [sys.executable, "-m", "segflow", "train", "--records", str(records), "--out", uri,
                "--work-dir", str(work_dir), "--quiet", *options]  # fmt: skip

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}  # with the fixture's S3 settings
    first = subprocess.Popen(command(tmp_path / "machine-1"), env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 500
    uploaded = []
    while not uploaded:  # kill as soon as a complete checkpoint is in the store
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint reached the store within 500 s"
        names = storage.list_files(f"{uri}/checkpoints")
        uploaded = [name.split("/")[0] for name in names if name.startswith("step-") and name.endswith(checkpoints.CHECKSUM_FILE)]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    stored_step = max(int(name[len("step-") :]) for name in uploaded)
    assert stored_step < 12 and not storage.exists(f"{uri}/model.keras")

    second = subprocess.run(command(tmp_path / "machine-2"), env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    resumed = int(re.search(r"resumed from step (\d+)", second.stdout)[1])
    assert resumed >= stored_step
    assert f"{uri}/model.keras: 12 steps, resumed from step {resumed}" in second.stdout
    history = storage.read_json(f"{uri}/history.json")
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert history[-1]["step"] == history[-1]["optimizer_updates"] == 12  # as many as an uninterrupted run
    stored = {name.split("/")[0] for name in storage.list_files(f"{uri}/checkpoints")}
    assert stored == {"best", "step-000000011", "step-000000012"}
    assert storage.exists(f"{uri}/saved_model/saved_model.pb") and storage.exists(f"{uri}/config.json")
    assert not (tmp_path / "s3:").exists() and not os.path.exists("s3:")


def test_an_s3_out_without_a_bucket_is_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--records", str(tmp_path), "--out", "s3:///run", "--arch", "unet"])
    assert result.exit_code == 2  # a bad option value, refused by click before the command runs
    assert result.output.strip().splitlines()[-1] == (
        "Error: Invalid value for '--out': --out: 's3:///run' has no bucket; expected s3://bucket or s3://bucket/prefix"
    )
    assert not (tmp_path / "s3:").exists()


# --- Full disk ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_training_into_a_full_disk_is_one_line_and_exit_code_1(records, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True)
    try:
        # Leave about 1 MiB: room for the config, logs and history, not for a checkpoint (1.1 MiB
        # of weights and momentum, plus its margin).
        (mount / "filler").write_bytes(b"\0" * (shutil.disk_usage(mount).free - 2**20))
        out = mount / "run"
        command = [sys.executable, "-m", "segflow", "train", "--records", str(records), "--out", str(out), "--quiet"]
        finished = subprocess.run(command + SMALL_OPTIONS, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 1, finished.stdout + finished.stderr
        errors = [line for line in finished.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in finished.stderr
        assert errors[0].startswith(f"Error: disk full while writing checkpoint step-000000002 to {out / 'checkpoints' / 'step-000000002'} (")
        assert "MiB free" in errors[0]
        leftovers = [path for path in out.rglob("*") if ".segflow-tmp" in path.name]
        assert leftovers == [] and not (out / "checkpoints" / "step-000000002").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_train_in_subprocess_with_an_out_uri_keeps_the_run_in_the_store(records, s3_bucket, tmp_path):
    """What the GPU-pool flow calls: the local folder is only a working copy."""
    from segflow.config import train_config
    from segflow.train_process import train_in_subprocess

    uri = f"{s3_bucket}/runs/unet"
    config = train_config(None, **{**SMALL_SETTINGS, "epochs": 1, "steps_per_epoch": 2})
    lines = []
    result = train_in_subprocess(config, records, tmp_path / "work", out_uri=uri, poll_seconds=0.5, on_output=lines.append)
    assert result["epochs"] == 1
    # The child's progress reaches the caller line by line: the epoch's line, then the evaluation.
    (epoch_line,) = [line for line in lines if line.startswith("epoch ")]
    assert re.fullmatch(r"epoch 1/1: loss \d+\.\d{4}, val mIoU \d\.\d{4}, \d+\.\d images/s, ETA 0 s", epoch_line)
    assert any(line.startswith(f"{uri}/metrics.json: val mIoU ") for line in lines)
    assert [entry["step"] for entry in storage.read_json(f"{uri}/history.json")] == [2]
    stored = storage.list_files(uri)
    assert {"model.keras", "history.json", "config.json", "metrics.json",
            "checkpoints/step-000000002/checksums.json"} <= set(stored)  # fmt: skip
    assert result["metrics"]["miou"] == storage.read_json(f"{uri}/metrics.json")["miou"]
