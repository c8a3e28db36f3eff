"""The pipeline flow end to end on Prefect's real (ephemeral) API, real training processes and a
real S3-compatible server: publishing, no-op re-runs, retries that resume, partial failure, GPU
slots from Prefect's concurrency limit, and the retry policy."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from segflow import champion, storage
from segflow.config import demo_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def tiny_params(tmp_path: Path, results_uri: str, **overrides):
    values = dict(
        work_dir=str(tmp_path / "work"),
        results_uri=results_uri,
        synthetic_images=(6, 2),
        epochs=2,
        steps_per_epoch=3,
        batch_size=2,
        checkpoint_every_steps=1,
    )
    return demo_params(**{**values, **overrides})


def test_pipeline_publishes_to_s3_and_a_second_run_finds_data_and_records_up_to_date(prefect_harness, s3_bucket, tmp_path):
    from segflow_prefect.flows.pipeline import cityscapes_pipeline

    results_uri = f"{s3_bucket}/results"
    params = tiny_params(tmp_path, results_uri, architectures=["unet"])

    first = cityscapes_pipeline(params, return_state=True)
    assert first.is_completed() and first.name == "Completed", first.message
    summary = first.result()
    assert set(summary["miou"]) == {"unet"} and not summary["failed"]

    latest = storage.latest_run(results_uri)
    assert latest["run_id"] == summary["run_id"]
    published = set(storage.list_files(latest["uri"]))
    for arch in ("unet",):
        for name in ("metrics.json", "history.json", "model.keras", "config.json"):
            assert f"{arch}/{name}" in published
        # Optimizer-state checkpoints stay in the work folder unless keep_checkpoints asks for them.
        assert not any(name.startswith(f"{arch}/checkpoints/") for name in published)
        assert (tmp_path / "work" / "runs" / summary["run_id"] / arch / "checkpoints").is_dir()
        assert any(name.startswith(f"{arch}/tensorboard/") for name in published)
        metrics = storage.read_json(storage.join(latest["uri"], arch, "metrics.json"))
        assert metrics["miou"] == pytest.approx(summary["miou"][arch])
        assert champion.current_champion(results_uri, arch)["run_id"] == summary["run_id"]
        # Trained and evaluated by one process: train.log shows one start, then the evaluation.
        log = (tmp_path / "work" / "runs" / summary["run_id"] / arch / "train.log").read_text()
        assert log.count("=== ") == 1 and "--evaluate" in log and "metrics.json: val mIoU" in log
    for name in ("report.html", "report.json", "report.md"):
        assert f"report/{name}" in published
    assert storage.read_json(storage.join(latest["uri"], "run.json"))["data"]["synthetic"] is True
    assert not list((tmp_path / "work" / "runs").glob(".unfinished-*"))  # finished: nothing to resume

    records_manifest = next((tmp_path / "work" / "records").glob("*/manifest.json"))
    data_marker = next((tmp_path / "work" / "data").glob("*/.segflow-source.json"))
    converted_at, prepared_at = records_manifest.stat().st_mtime_ns, data_marker.stat().st_mtime_ns
    second = cityscapes_pipeline(params, return_state=True)
    assert second.is_completed(), second.message
    assert records_manifest.stat().st_mtime_ns == converted_at and data_marker.stat().st_mtime_ns == prepared_at
    # The nightly rule: the newer run becomes champion only if it is strictly better.
    again = second.result()
    assert again["run_id"] != summary["run_id"]
    for arch in ("unet",):
        expected = again["run_id"] if again["miou"][arch] > summary["miou"][arch] else summary["run_id"]
        assert champion.current_champion(results_uri, arch)["run_id"] == expected
    assert storage.latest_run(results_uri)["run_id"] == again["run_id"]


class TrainingKiller(threading.Thread):
    """Kills an architecture's training process (SIGKILL) once it has written a checkpoint, as a
    preempted GPU node would: `times[arch]` kills, each of a new process."""

    def __init__(self, runs_dir: Path, times: dict[str, int]):
        super().__init__(daemon=True)
        self.runs_dir, self.times, self.killed = runs_dir, dict(times), {arch: [] for arch in times}
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            for arch, remaining in self.times.items():
                if len(self.killed[arch]) >= remaining:
                    continue
                for out_dir in self.runs_dir.glob(f"*/{arch}"):
                    pid_file = out_dir / "train.pid"
                    if not pid_file.is_file() or not list((out_dir / "checkpoints").glob("step-*")):
                        continue
                    pid = int(pid_file.read_text())
                    step = max(int(path.name.split("-")[1]) for path in (out_dir / "checkpoints").glob("step-*"))
                    if pid in [killed_pid for killed_pid, _ in self.killed[arch]] or step < 1:
                        continue
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed[arch].append((pid, step))
            time.sleep(0.05)


def test_killed_training_retries_and_resumes_and_a_failed_architecture_leaves_a_partial_run(
    prefect_harness, tmp_path, monkeypatch
):
    import segflow_prefect.flows.pipeline as pipeline

    monkeypatch.setattr(pipeline, "train_architecture", pipeline.train_architecture.with_options(retries=1, retry_delay_seconds=0))
    params = tiny_params(tmp_path, str(tmp_path / "results"), architectures=["unet", "segnet"], epochs=2, steps_per_epoch=4)
    killer = TrainingKiller(tmp_path / "work" / "runs", {"unet": 1, "segnet": 2})
    killer.start()
    try:
        state = pipeline.cityscapes_pipeline(params, return_state=True)
    finally:
        killer.stopped.set()
        killer.join()

    assert state.is_completed() and state.name == "Partial", state.message
    assert "segnet" in state.message and "unet" not in state.message
    summary = state.result()
    assert summary["miou"]["unet"] is not None and summary["miou"]["segnet"] is None
    assert len(killer.killed["unet"]) == 1 and len(killer.killed["segnet"]) == 2

    run_dir = tmp_path / "work" / "runs" / summary["run_id"]
    # The retry resumed from the checkpoint: the interrupted epoch was finished with only its
    # remaining steps, and the run ended after exactly epochs × steps_per_epoch optimizer steps.
    history = storage.read_json(str(run_dir / "unet" / "history.json"))
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[-1]["step"] == 8
    killed_at_step = killer.killed["unet"][0][1]
    log = (run_dir / "unet" / "train.log").read_text()
    assert log.count("=== ") == 2  # two processes: the killed one and the retry
    resumed_from = int(re.search(r"resumed from step (\d+)", log).group(1))
    assert killed_at_step <= resumed_from < 8

    report = (tmp_path / "results" / "runs" / summary["run_id"] / "report" / "report.html").read_text()
    assert "segnet" in report and "failed" in report.lower()
    run_record = storage.read_json(str(run_dir / "run.json"))
    assert run_record["architectures"]["segnet"]["status"] == "failed"
    assert run_record["architectures"]["unet"]["status"] == "completed"


def test_training_flow_for_a_gpu_pool_reads_and_writes_only_the_results_store(prefect_harness, s3_bucket, tmp_path):
    from segflow_prefect.flows.train_architecture import train_architecture_flow
    from segflow_prefect.tasks.remote import download_files
    from segflow.convert import convert
    from segflow.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", train=4, val=2, test=1, height=64, width=128)
    convert(data, tmp_path / "records", workers=1, progress=False)
    records_uri = storage.join(s3_bucket, "results", "records", "r1")
    storage.upload_dir(tmp_path / "records", records_uri)
    out_uri = storage.join(s3_bucket, "results", "training", "run-1", "unet")
    params = tiny_params(tmp_path / "gpu-worker", s3_bucket, architectures=["unet"], epochs=1, steps_per_epoch=2)

    result = train_architecture_flow("unet", records_uri, out_uri, params)
    assert result["out_uri"] == out_uri and 0 <= result["metrics"]["miou"] <= 1 and result["epochs"] == 1
    uploaded = set(storage.list_files(out_uri))
    assert {"model.keras", "history.json", "config.json", "metrics.json"} <= uploaded
    assert storage.read_json(storage.join(out_uri, "metrics.json"))["miou"] == result["metrics"]["miou"]
    assert any(name.startswith("checkpoints/step-") for name in uploaded)
    assert storage.read_json(storage.join(out_uri, "history.json"))[-1]["step"] == 2
    # The report's sample tiles too; the orchestrator fetches them with the small files.
    tiles = storage.read_json(storage.join(out_uri, "samples", "samples.json"))["images"]
    assert len(tiles) == 2 and all(f"samples/{entry['prediction']}" in uploaded for entry in tiles)
    fetched = Path(download_files.fn(out_uri, ["metrics.json", "samples/"], str(tmp_path / "report-input")))
    assert sorted(path.relative_to(fetched).as_posix() for path in fetched.rglob("*.*")) == sorted(
        name for name in uploaded if name == "metrics.json" or name.startswith("samples/")
    )


REPORT_VISIBLE_DEVICES = "import os, sys, time; print(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(float(sys.argv[1]))"


def test_training_slots_come_from_prefect_and_each_child_sees_its_own_gpus(prefect_harness, tmp_path, monkeypatch):
    """Four fake GPUs, two per training: two children at a time, each seeing two GPUs that no
    concurrent child sees; a slot is taken again soon after a short job ends, while the long one
    still runs."""
    import subprocess
    import sys

    from prefect import flow, task

    from segflow import gpus
    from segflow_prefect.tasks.gpus import size_training_limit, training_slot

    monkeypatch.setenv("SEGFLOW_GPU_IDS", "0,1,2,3")
    monkeypatch.setenv("SEGFLOW_GPUS_PER_TRAINING", "2")
    monkeypatch.setenv("SEGFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))

    holding = tmp_path / "long-holds-its-slot"

    @task
    def fake_training(seconds: float) -> dict:
        with training_slot() as gpu_ids:
            started = time.monotonic()
            if seconds > 10:
                holding.touch()
            child = subprocess.run(
                [sys.executable, "-c", REPORT_VISIBLE_DEVICES, str(seconds)],
                env=gpus.child_env(gpu_ids), capture_output=True, text=True, check=True,
            )  # fmt: skip
            return {"visible": child.stdout.strip(), "start": started, "end": time.monotonic()}

    @flow
    def trainings() -> list[dict]:
        assert size_training_limit(cpu_slots=1) == 4
        # The long job takes its slot first (on a loaded machine Prefect may otherwise hand both
        # slots to the short ones first); then the two short ones compete for the other slot.
        long = fake_training.submit(50.0)
        deadline = time.monotonic() + 60
        while not holding.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shorts = fake_training.map([2.0, 2.0])
        return [long.result()] + [future.result() for future in shorts]

    # The long job runs well past Prefect's retry-after (about the limit's average slot occupancy),
    # so the refill is seen even on a loaded machine.
    long, short, later = trainings()
    assert gpus.training_slots(cpu_slots=1) == 2
    for job in (short, long, later):
        assert len(job["visible"].split(",")) == 2 and set(job["visible"].split(",")) <= {"0", "1", "2", "3"}
    # At most two at once: the second short job started only after the first ended, and with its
    # GPUs, which the long job never saw.
    first, third = sorted([short, later], key=lambda job: job["start"])
    assert first["start"] > long["start"]
    assert third["start"] >= first["end"]
    assert third["visible"] == first["visible"]
    assert set(long["visible"].split(",")).isdisjoint(first["visible"].split(","))
    # The freed slot refilled while the long training still ran (Prefect's retry-after is the
    # limit's average slot occupancy, a few seconds here).
    assert third["start"] < long["end"] - 5, (first, third, long)


def test_a_machines_trainings_start_costliest_first_as_slots_free(prefect_harness, tmp_path, monkeypatch):
    """The demo's recipe: ICNet 240 steps, SegNet 160, U-Net 60, two at a time: U-Net, asked
    first, starts last, once one of the others has ended; the results keep the order asked."""
    from prefect import flow, task

    from segflow_prefect.flows import pipeline

    @task
    def fake_training(architecture, records_dir, out_dir, params, position=""):
        started = time.monotonic()
        time.sleep(1.0)
        return {"start": started, "end": time.monotonic(), "position": position}

    monkeypatch.setattr(pipeline, "train_architecture", fake_training)
    params = demo_params(work_dir=str(tmp_path / "work"), architectures=["unet", "segnet", "icnet"])
    assert params.max_parallel_training == 2

    @flow
    def trainings() -> dict:
        return {arch: future.result() for arch, future in pipeline._train_here(params, str(tmp_path), tmp_path).items()}

    jobs = trainings()
    assert list(jobs) == ["unet", "segnet", "icnet"]
    assert [job["position"] for job in jobs.values()] == ["1/3", "2/3", "3/3"]
    assert jobs["unet"]["start"] >= min(jobs["segnet"]["end"], jobs["icnet"]["end"]) - 0.05
    assert max(jobs["segnet"]["start"], jobs["icnet"]["start"]) < min(jobs["segnet"]["end"], jobs["icnet"]["end"])


def test_data_comes_with_one_login_none_on_a_rerun_and_a_wrong_password_fails_once(prefect_harness, tmp_path, monkeypatch):
    from prefect import flow

    from segflow import synthetic
    from cityscapes_site import CityscapesSiteServer
    from segflow_prefect.tasks.data import prepare_dataset

    synthetic.write_dataset(tmp_path / "synthetic", train=2, val=1, test=1, height=32, width=64, zips=True)
    packages = tmp_path / "site"
    packages.mkdir()
    for name in ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"):
        (packages / name).write_bytes((tmp_path / "synthetic" / name).read_bytes())

    @flow
    def get_data(source: str, work_dir: str):
        return prepare_dataset(source, work_dir, (2, 1), (32, 64), 0, return_state=True)

    with CityscapesSiteServer(packages, username="alice", password="right-password") as site:
        def logins():
            return sum(1 for request in site.requests if request.method == "POST" and request.path.startswith("/login"))

        monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
        monkeypatch.setenv("CITYSCAPES_PASSWORD", "right-password")
        first = get_data(f"cityscapes+{site.url}", str(tmp_path / "work"))
        assert first.is_completed(), first.message
        assert (Path(first.result()) / "gtFine").is_dir()
        assert logins() == 1
        again = get_data(f"cityscapes+{site.url}", str(tmp_path / "work"))
        assert again.is_completed() and logins() == 1  # a no-op re-run does not log in

        monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong-password")
        refused = get_data(f"cityscapes+{site.url}", str(tmp_path / "other-work"), return_state=True)
        assert logins() == 2  # one attempt, not retried by the task
        assert refused.is_failed()
        [attempt] = [run for name, run in task_runs(refused.state_details.flow_run_id).items() if name.startswith("get data")]
        assert attempt["run_count"] == 1 and attempt["state"] == "Failed"
        assert "SegflowError: Cityscapes login as 'alice'" in attempt["message"]
        assert "wrong username or password" in attempt["message"] and "wrong-password" not in attempt["message"]


def task_runs(flow_run_id) -> dict[str, dict]:
    """{task run name: {"state", "run_count"}} of one flow run, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200
        )
    return {run.name: {"state": run.state.name, "run_count": run.run_count, "message": run.state.message} for run in runs}


def test_killed_demo_leaves_no_process_and_the_same_command_resumes_its_run(tmp_path):
    """kill -9 of `segflow demo` during training: everything it started is gone within seconds;
    the same command again resumes the same run from its checkpoint, and the killed flow run is
    marked Crashed instead of staying Running."""
    import sqlite3
    import subprocess
    import sys

    from segflow.lifeline import descendants

    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_LOGGING_LEVEL="WARNING")  # fmt: skip
    command = [sys.executable, "-m", "segflow", "demo", "--out", "demo", "--arch", "unet"]
    demo = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    out_dir = tmp_path / "demo" / "work" / "runs"
    try:
        deadline = time.monotonic() + 600
        while not list(out_dir.glob("*/unet/checkpoints/step-*")):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo ended before its first checkpoint"
            time.sleep(0.2)
        started = descendants(demo.pid)
        assert started, "the demo started no process"
        demo.kill()  # kill -9 of the command alone, not of its process group
        demo.wait()
        deadline = time.monotonic() + 10
        while (alive := [pid for pid in started if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive == [], [Path(f"/proc/{pid}/cmdline").read_text() for pid in alive]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    [killed_run] = [path.parent.parent.name for path in out_dir.glob("*/unet/checkpoints")]
    killed_at = max(int(path.name.split("-")[1]) for path in (out_dir / killed_run / "unet" / "checkpoints").glob("step-*"))

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting a temporary Prefect server" in again.stdout
    report_line = [line for line in again.stdout.splitlines() if line.startswith("report: ")][-1]
    assert Path(report_line.removeprefix("report: ")).is_absolute() and Path(report_line.removeprefix("report: ")).is_file()
    assert [path.name for path in out_dir.iterdir() if path.is_dir()] == [killed_run]
    log = (out_dir / killed_run / "unet" / "train.log").read_text()
    assert int(re.search(r"resumed from step (\d+)", log).group(1)) >= killed_at
    assert storage.latest_run(str(tmp_path / "demo" / "results"))["run_id"] == killed_run
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:
        states = sorted(state for (state,) in db.execute("SELECT state_type FROM flow_run"))
    assert states == ["COMPLETED", "CRASHED"]
