"""Resumable training checkpoints: model weights with the optimizer's state, and the step count.

Each checkpoint is a folder `step-{step:09d}/` holding `model.weights.h5` (Keras saves the
optimizer's variables, its iteration count included, in the same file) and `state.json`. A
checkpoint is written into a hidden temporary folder and renamed into place, so a process killed
at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import keras

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
BEST_DIR = "best"


def save_checkpoint(model: keras.Model, directory: Path, name: str, state: dict) -> Path:
    """Write weights and `state` into `directory/name`, replacing an older one of the same name."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}."))
    try:
        model.save_weights(staging / WEIGHTS_FILE)
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        target = directory / name
        if target.exists():
            retired = Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}.old."))
            os.replace(target, retired / name)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def step_checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def latest_checkpoint(directory: Path) -> tuple[Path, dict] | None:
    """The complete checkpoint with the most steps, and its state; None if there is none."""
    if not directory.is_dir():
        return None
    candidates = sorted(
        (path for path in directory.glob("step-*") if (path / STATE_FILE).is_file()),
        key=lambda path: path.name,
    )
    if not candidates:
        return None
    return candidates[-1], read_state(candidates[-1])


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def restore_checkpoint(model: keras.Model, checkpoint: Path) -> None:
    """Load weights and optimizer state (the optimizer's variables must exist first to be filled)."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint / WEIGHTS_FILE)


def prune_step_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (and leftovers of interrupted writes)."""
    complete = sorted(path for path in directory.glob("step-*") if (path / STATE_FILE).is_file())
    for path in complete[:-keep] if keep else complete:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in directory.glob(".*"):
        shutil.rmtree(leftover, ignore_errors=True)
