"""Which GPUs this worker owns, and which of them one training process may use.

A worker owns the GPU ids in SEGFLOW_GPU_IDS (comma-separated, e.g. "0,1,2,3"; the Docker and
Kubernetes templates set it; an empty value means no GPU), else those `nvidia-smi -L` lists,
else none. A training takes `count` of them with `lease(count)`: each id is held through an
exclusive `flock` on `<lock dir>/gpu-<id>.lock`, so trainings in different threads or processes
of one machine never share a GPU, and the kernel frees the ids of a process that dies, even by
SIGKILL. The child process then sees only its ids (`child_env`: CUDA_VISIBLE_DEVICES) and grows
its GPU memory as needed (TF_FORCE_GPU_ALLOW_GROWTH), so MirroredStrategy spans exactly its set.

How many trainings run at once is not decided here: the orchestrator sizes its concurrency limit
to `len(worker_gpu_ids()) // count` and the lease only picks which ids.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from segflow.errors import SegflowError

GPU_IDS_ENV = "SEGFLOW_GPU_IDS"
LOCK_DIR_ENV = "SEGFLOW_GPU_LOCK_DIR"
GPUS_PER_TRAINING_ENV = "SEGFLOW_GPUS_PER_TRAINING"


def worker_gpu_ids(environ: dict | None = None) -> list[str]:
    """The GPU ids this worker owns: SEGFLOW_GPU_IDS if set (empty = none), else `nvidia-smi -L`."""
    environ = os.environ if environ is None else environ
    if GPU_IDS_ENV in environ:
        return [part.strip() for part in environ[GPU_IDS_ENV].split(",") if part.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"^GPU (\d+):", listing, flags=re.MULTILINE)


def gpus_per_training(environ: dict | None = None) -> int:
    """GPUs one training uses (SEGFLOW_GPUS_PER_TRAINING, default 1); 0 on a worker without GPUs."""
    environ = os.environ if environ is None else environ
    text = environ.get(GPUS_PER_TRAINING_ENV, "1")
    if not text.isdigit() or int(text) < 1:
        raise SegflowError(f"{GPUS_PER_TRAINING_ENV} must be a whole number >= 1; got {text!r}")
    count = int(text)
    owned = worker_gpu_ids(environ)
    if owned and count > len(owned):
        raise SegflowError(f"{GPUS_PER_TRAINING_ENV}={count} but this worker owns {len(owned)} GPU(s): {','.join(owned)}")
    return count if owned else 0


def training_slots(cpu_slots: int, environ: dict | None = None) -> int:
    """How many trainings may run at once here: one per `gpus_per_training` GPUs, or `cpu_slots`
    on a worker without GPUs."""
    owned = worker_gpu_ids(environ)
    return len(owned) // gpus_per_training(environ) if owned else cpu_slots


@contextlib.contextmanager
def lease(count: int, *, environ: dict | None = None, poll_seconds: float = 0.2) -> Iterator[list[str]]:
    """Hold `count` of this worker's GPU ids (none when it owns none) until the block ends.

    Waits while fewer than `count` are free. Raises SegflowError if the worker owns fewer than
    `count` GPUs in all.
    """
    owned = worker_gpu_ids(environ)
    if not owned or count == 0:
        yield []
        return
    if count > len(owned):
        raise SegflowError(f"a training asked for {count} GPUs but this worker owns {len(owned)}: {','.join(owned)}")
    lock_dir = Path((environ or os.environ).get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "segflow-gpu-locks")
    lock_dir.mkdir(parents=True, exist_ok=True)
    held: dict[str, int] = {}
    try:
        while len(held) < count:
            for gpu_id in owned:
                if gpu_id not in held and len(held) < count:
                    descriptor = _try_lock(lock_dir / f"gpu-{gpu_id}.lock")
                    if descriptor is not None:
                        held[gpu_id] = descriptor
            if len(held) < count:
                for descriptor in held.values():  # never sit on part of a set while waiting
                    os.close(descriptor)
                held.clear()
                time.sleep(poll_seconds)
        yield list(held)
    finally:
        for descriptor in held.values():
            os.close(descriptor)  # closing the descriptor releases its flock


def _try_lock(path: Path) -> int | None:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def child_env(gpu_ids: list[str], environ: dict | None = None) -> dict:
    """The environment of a training process that may use `gpu_ids` and no other GPU.

    Without ids on a worker that owns none, CUDA_VISIBLE_DEVICES is left as it is.
    """
    env = dict(os.environ if environ is None else environ)
    if gpu_ids or worker_gpu_ids(env):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env
