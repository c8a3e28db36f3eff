"""Run one training job in a child process (`segflow train --config ... --evaluate`): train, export,
then score the exported model on the val split, all in that one process.

Why a process: the orchestrator never imports TensorFlow; a crashed, killed or out-of-memory
training takes only its own process down, and the next attempt resumes from the run folder's
last checkpoint; each job gets its own TensorFlow state and its own GPUs (`gpu_ids`, see
`segflow.gpus`). Evaluating in the same process keeps the GPU busy with this job until it is
done and hands back only small results: metrics, paths, timings.

The child dies with its parent: it asks the kernel for SIGKILL when the thread that started it
exits (PR_SET_PDEATHSIG), so a killed orchestrator leaves no training behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from segflow import gpus
from segflow.config import TrainConfig
from segflow.errors import SegflowError
from segflow.lifeline import die_with_parent
from segflow.run_files import CHECKPOINT_DIR, HISTORY_FILE, METRICS_FILE, MODEL_FILE

REQUEST_FILE = "requested-config.json"
LOG_FILE = "train.log"
PID_FILE = "train.pid"
LOG_TAIL_LINES = 15
SMALL_METRICS = ("miou", "category_miou", "pixel_accuracy", "num_images")


class TrainingInterrupted(RuntimeError):
    """The training process died (killed, crashed, out of memory) rather than refusing its input;
    another attempt resumes from the last checkpoint, so this one is worth retrying."""


def cpu_threads_per_training(parallel_trainings: int, cores: int | None = None) -> int:
    """The cores each of `parallel_trainings` trainings on a CPU machine gets, at least one.

    TensorFlow sizes its thread pools to every core in each process; two demo trainings on 2
    cores then run 4 + 4 threads, and their pair took 89 s against 79 s with one thread each
    (BENCHMARKS.md, 'Demo')."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, parallel_trainings))


def train_in_subprocess(
    config: TrainConfig,
    records_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    out_uri: str | None = None,
    gpu_ids: list[str] | None = None,
    cpu_threads: int | None = None,
    evaluate: bool = True,
    on_progress: Callable[[float], None] | None = None,
    on_output: Callable[[str], None] | None = None,
    poll_seconds: float = 0.5,
) -> dict:
    """Train `config` into `out_dir` (resuming whatever an earlier attempt left there) and, with
    `evaluate`, score the exported model on val in the same process.

    `gpu_ids`: the only GPUs the child may see (CUDA_VISIBLE_DEVICES); None leaves the
    environment's. `cpu_threads`: the size of TensorFlow's intra- and inter-op thread pools in
    the child (`TF_NUM_INTRAOP_THREADS`/`TF_NUM_INTEROP_THREADS`, unless the environment sets
    them); None: TensorFlow's default, every core. `on_progress(fraction)` is called while it runs
    (newest checkpoint's step over the run's optimizer steps), `on_output(line)` with each line the child prints (one per epoch:
    loss, val mIoU, images/s, ETA; then the evaluation), as it prints it. Returns `{architecture, out_dir, model_path, metrics, epochs,
    seconds, gpu_ids}`; `metrics` holds only the headline numbers (the full set is in
    `out_dir/metrics.json`). Raises SegflowError when the child refused its input (its one
    `Error:` line included), TrainingInterrupted when it died otherwise.

    With `out_uri` (`s3://bucket/prefix/run`), the run lives in the results store and `out_dir` is
    only its local working folder (`segflow train --out URI --work-dir DIR`): each checkpoint is
    uploaded while training runs, and an attempt on another machine resumes from the store.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    request = out_dir / REQUEST_FILE
    request.write_text(config.model_dump_json(indent=2) + "\n")
    command = [
        sys.executable, "-m", "segflow", "train",
        "--config", str(request), "--records", str(records_dir), "--out", out_uri or str(out_dir), "--quiet",
    ] + (["--work-dir", str(out_dir)] if out_uri else []) + (["--evaluate"] if evaluate else [])  # fmt: skip
    env = gpus.child_env(gpu_ids) if gpu_ids is not None else dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cpu_threads:
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(cpu_threads))
        env.setdefault("TF_NUM_INTEROP_THREADS", str(cpu_threads))
    total_steps = _total_steps(config, records_dir)
    log_path = out_dir / LOG_FILE
    started = time.monotonic()
    with open(log_path, "ab") as log:
        visible = f" CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}{visible} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        (out_dir / PID_FILE).write_text(str(process.pid))
        relayed = log.tell()  # the child's output starts here
        while process.poll() is None:
            if on_progress and total_steps:
                on_progress(min(1.0, checkpoint_step(out_dir) / total_steps))
            time.sleep(poll_seconds)
            relayed = _relay(log_path, relayed, on_output)
        _relay(log_path, relayed, on_output)
    seconds = round(time.monotonic() - started, 1)
    if process.returncode != 0:
        tail = _tail(log_path)
        what = f"training {config.architecture} in {out_dir}"
        if process.returncode == 1 and tail.splitlines() and tail.splitlines()[-1].startswith("Error: "):
            raise SegflowError(f"{what}: {tail.splitlines()[-1].removeprefix('Error: ')}")
        raise TrainingInterrupted(f"{what} {_describe_exit(process.returncode)}; end of {log_path}:\n{tail}")
    if on_progress:
        on_progress(1.0)
    return {
        "architecture": config.architecture,
        "out_dir": str(out_dir),
        "model_path": str(out_dir / MODEL_FILE),
        "metrics": _small_metrics(out_dir / METRICS_FILE) if evaluate else None,
        "epochs": len(_read_json(out_dir / HISTORY_FILE) or []),
        "seconds": seconds,
        "gpu_ids": gpu_ids,
    }


def _relay(log_path: Path, offset: int, on_output: Callable[[str], None] | None) -> int:
    """Pass the complete lines written to `log_path` after `offset` to `on_output`; returns the
    offset after them (a line still being written waits for the next call)."""
    if on_output is None:
        return offset
    with open(log_path, "rb") as stream:
        stream.seek(offset)
        written = stream.read()
    complete = written.rfind(b"\n") + 1
    for line in written[:complete].decode("utf-8", errors="replace").splitlines():
        if line.strip():
            on_output(line)
    return offset + complete


def checkpoint_step(out_dir: str | os.PathLike) -> int:
    """The step of the newest `checkpoints/step-NNNNNNNNN/` folder (0 when none), read from its name."""
    steps = [int(match[1]) for path in (Path(out_dir) / CHECKPOINT_DIR).glob("step-*")
             if (match := re.fullmatch(r"step-(\d+)", path.name))]  # fmt: skip
    return max(steps, default=0)


def training_pixels(config: TrainConfig, records_dir) -> int:
    """Pixels a run trains on, steps × batch × crop pixels (0 when the records do not say how
    many steps): a machine that trains several architectures in turn starts the costliest first,
    so that the last to finish is not a long one started late (the demo on 2 cores: 364 s from
    the first training's start to the last one's end in submission order, 313 s estimated
    costliest first; BENCHMARKS.md, 'Demo')."""
    height, width = config.train_size
    return (_total_steps(config, records_dir) or 0) * config.batch_size * height * width


def _total_steps(config: TrainConfig, records_dir) -> int | None:
    """Optimizer steps of the whole run, from the records' manifest (no TensorFlow needed)."""
    if config.steps_per_epoch:
        return config.steps_per_epoch * config.epochs
    manifest = _read_json(Path(records_dir) / "manifest.json") or {}
    examples = manifest.get("splits", {}).get("train", {}).get("num_examples")
    return (examples // config.batch_size) * config.epochs if examples else None


def _small_metrics(path: Path) -> dict:
    metrics = _read_json(path)
    if metrics is None:
        raise TrainingInterrupted(f"the training process ended without writing {path}")
    return {key: metrics.get(key) for key in SMALL_METRICS}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])
