"""Run one training in a child process (`segflow train --config`), as a GPU worker would.

Why a process: a crashed, killed or out-of-memory training takes only its own process down; the
orchestrator sees a non-zero exit, retries, and the new process resumes from the run folder's
last checkpoint. It also gives each architecture its own TensorFlow state and GPU memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from segflow import checkpoints
from segflow.config import TrainConfig
from segflow.errors import SegflowError

REQUEST_FILE = "requested-config.json"
LOG_FILE = "train.log"
PID_FILE = "train.pid"
LOG_TAIL_LINES = 15


def train_in_subprocess(
    config: TrainConfig,
    records_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    total_steps: int | None = None,
    out_uri: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    poll_seconds: float = 2.0,
) -> dict:
    """Train `config` into `out_dir`, resuming whatever an earlier attempt left there.

    With `out_uri` (`s3://bucket/prefix/run`), the run lives in the results store and `out_dir` is
    only its local working folder (`segflow train --out URI --work-dir DIR`): each checkpoint is
    uploaded while training runs, and an attempt on another machine resumes from the store.

    `on_progress(fraction)` is called while it runs, from the latest checkpoint's step over
    `total_steps` (when known). Returns `out_dir`, `model_path` and the `history`; raises
    SegflowError with the end of `train.log` when the process fails.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    request = out_dir / REQUEST_FILE
    request.write_text(config.model_dump_json(indent=2) + "\n")
    command = [
        sys.executable, "-m", "segflow", "train",
        "--config", str(request), "--records", str(records_dir), "--out", out_uri or str(out_dir), "--quiet",
    ]  # fmt: skip
    if out_uri:
        command += ["--work-dir", str(out_dir)]
    log_path = out_dir / LOG_FILE
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        (out_dir / PID_FILE).write_text(str(process.pid))
        while process.poll() is None:
            if on_progress and total_steps:
                on_progress(min(1.0, _checkpoint_step(out_dir) / total_steps))
            time.sleep(poll_seconds)
    if process.returncode != 0:
        raise SegflowError(
            f"training {config.architecture} in {out_dir} exited with code {process.returncode}; "
            f"end of {log_path}:\n{_tail(log_path)}"
        )
    if on_progress:
        on_progress(1.0)
    history_path = out_dir / "history.json"
    return {
        "architecture": config.architecture,
        "out_dir": str(out_dir),
        "model_path": str(out_dir / "model.keras"),
        "history": json.loads(history_path.read_text()) if history_path.is_file() else [],
    }


def _checkpoint_step(out_dir: Path) -> int:
    latest = checkpoints.latest_checkpoint(out_dir / "checkpoints")
    return latest[1]["step"] if latest else 0


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])
