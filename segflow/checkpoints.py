"""Resumable training checkpoints: model weights with the optimizer's state, the step count, and a
checksum of both, so a damaged checkpoint is recognised instead of loaded.

Each checkpoint is a folder `step-{step:09d}/` holding

    model.weights.h5   the weights; Keras saves the optimizer's variables (its iteration count
                       included) in the same file
    state.json         {"step", "epoch", "optimizer_iterations", ...}
    checksums.json     {file name: {"sha256", "size"}} of the two files above, written last

The folder is built in a staging folder (`segflow.atomic.staging_dir`) and renamed into place,
so a process killed at any moment leaves either the previous checkpoint or the new one. A
checkpoint counts only when `checksums.json` is present and every file matches it
(`verify_checkpoint`): a truncated, emptied or overwritten file, a garbage state file, or a
checkpoint copied only in part (e.g. an upload to a results store stopped half way, where the
checksum file goes last) is skipped by `find_resumable` in favour of the newest intact one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from segflow import atomic
from segflow.digests import file_sha256
from segflow.errors import SegflowError

if TYPE_CHECKING:  # Keras (and TensorFlow) stay out of processes that only read checkpoints
    import keras

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
CHECKSUM_FILE = "checksums.json"
CHECKSUMMED_FILES = (WEIGHTS_FILE, STATE_FILE)
BEST_DIR = "best"
STEP_PREFIX = "step-"
MiB = 2**20
# Free space a checkpoint needs beyond its estimate: HDF5 headers, state and checksum files.
_SPACE_MARGIN_BYTES = 1 * MiB


class Resume(NamedTuple):
    """The checkpoint to resume from (None: start from step 0) and the damaged ones skipped."""

    path: Path | None
    state: dict
    skipped: list[tuple[Path, str]]  # (checkpoint, what is wrong with it), newest first


def step_checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:09d}"


def save_checkpoint(model: keras.Model, directory: Path, name: str, state: dict) -> Path:
    """Write weights, `state` and their checksums into `directory/name`, replacing an older one.

    Raises SegflowError "disk full while writing checkpoint NAME to PATH (... MiB needed, ... MiB
    free)" before anything is written when the free space is below the checkpoint's estimated
    size (h5py can crash the process on a full disk rather than raise), or when the disk fills
    during the write; the staging folder is removed in both cases.
    """
    target = Path(directory) / name
    needed = estimated_size(model) + _SPACE_MARGIN_BYTES
    target.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(target.parent).free < needed:
        raise atomic.disk_full_error(f"checkpoint {name}", target, needed)
    with atomic.staging_dir(target, what=f"checkpoint {name}", needed_bytes=needed) as staging:
        model.save_weights(staging / WEIGHTS_FILE)
        atomic.write_json(staging / STATE_FILE, state)
        atomic.write_json(staging / CHECKSUM_FILE, {file: _file_digest(staging / file) for file in CHECKSUMMED_FILES})
    return target


def copy_checkpoint(source: Path, directory: Path, name: str, state: dict) -> Path:
    """Write `directory/name` with the weights of the intact checkpoint `source` and a new
    `state`, replacing an older one: the best checkpoint when it is the step checkpoint just
    written, without serializing the same weights again (one `save_weights` of the demo's ICNet,
    247 variables and their optimizer slots, takes 1.7 s; BENCHMARKS.md 'Demo').

    The weights file is hard-linked (checkpoint files are never changed in place: each one is
    written in a staging folder and renamed), or copied where the file system has no links.
    Raises SegflowError as `save_checkpoint` does when the disk is full.
    """
    target = Path(directory) / name
    weights = Path(source) / WEIGHTS_FILE
    needed = weights.stat().st_size + _SPACE_MARGIN_BYTES
    with atomic.staging_dir(target, what=f"checkpoint {name}", needed_bytes=needed) as staging:
        try:
            os.link(weights, staging / WEIGHTS_FILE)
        except OSError:  # no hard links here (another file system, a link limit, no permission)
            shutil.copyfile(weights, staging / WEIGHTS_FILE)
        atomic.write_json(staging / STATE_FILE, state)
        digests = {WEIGHTS_FILE: json.loads((Path(source) / CHECKSUM_FILE).read_text())[WEIGHTS_FILE],
                   STATE_FILE: _file_digest(staging / STATE_FILE)}  # fmt: skip
        atomic.write_json(staging / CHECKSUM_FILE, digests)
    return target


def estimated_size(model: keras.Model) -> int:
    """Bytes of the model's and its optimizer's variables: what `save_weights` writes, less headers."""
    variables = list(model.weights)
    if model.optimizer is not None and model.optimizer.built:
        variables += list(model.optimizer.variables)
    return sum(int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize for variable in variables)


def _file_digest(path: Path) -> dict:
    return {"sha256": file_sha256(path), "size": path.stat().st_size}


def verify_checkpoint(checkpoint: Path) -> str | None:
    """What is wrong with `checkpoint` (a missing or unreadable checksum file, a file whose size or
    sha256 differs from it, a state without a step), or None when it is intact."""
    try:
        expected = json.loads((checkpoint / CHECKSUM_FILE).read_text())
    except FileNotFoundError:
        return f"no {CHECKSUM_FILE} (incomplete)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"unreadable {CHECKSUM_FILE}"
    if not isinstance(expected, dict):
        return f"unreadable {CHECKSUM_FILE}"
    for file in CHECKSUMMED_FILES:
        path = checkpoint / file
        if not path.is_file():
            return f"{file} is missing"
        if not isinstance(expected.get(file), dict):
            return f"{CHECKSUM_FILE} does not cover {file}"
        if path.stat().st_size != expected[file].get("size"):
            return f"{file} has {path.stat().st_size} bytes, expected {expected[file].get('size')}"
        if _file_digest(path)["sha256"] != expected[file].get("sha256"):
            return f"{file} does not match its sha256"
    try:
        state = read_state(checkpoint)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"unreadable {STATE_FILE}"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE_FILE} has no step"
    return None


def step_checkpoints(directory: Path) -> list[Path]:
    """Every `step-*` folder in `directory`, intact or not, oldest first."""
    if not Path(directory).is_dir():
        return []
    return sorted(path for path in Path(directory).glob(f"{STEP_PREFIX}*") if path.is_dir())


def find_resumable(directory: Path) -> Resume:
    """The newest intact step checkpoint in `directory`, and the damaged newer ones it skipped.

    Prints one warning line to stderr per skipped checkpoint. Returns `Resume(None, {}, [])`
    when there are no checkpoints. Raises SegflowError naming them when checkpoints exist but
    none is intact: starting again from step 0 must be the user's decision (a new --out).
    """
    skipped = []
    for checkpoint in reversed(step_checkpoints(directory)):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return Resume(checkpoint, read_state(checkpoint), skipped)
        print(f"warning: skipping damaged checkpoint {checkpoint}: {problem}", file=sys.stderr, flush=True)
        skipped.append((checkpoint, problem))
    if skipped:
        details = "; ".join(f"{path}: {problem}" for path, problem in skipped)
        raise SegflowError(
            f"no intact checkpoint to resume from in {directory} ({details}); "
            "remove the damaged checkpoints to start again from step 0, or choose a new --out folder"
        )
    return Resume(None, {}, [])


def latest_checkpoint(directory: Path, *, verify: bool = False) -> tuple[Path, dict] | None:
    """The newest step checkpoint that has its checksum file and a readable state, and that state;
    None if there is none. Cheap (for progress reports); with `verify`, the files are checked
    against their checksums too (`verify_checkpoint`). Damaged ones are passed over silently:
    resuming uses `find_resumable`, which says what it skipped."""
    for checkpoint in reversed(step_checkpoints(directory)):
        if verify and verify_checkpoint(checkpoint) is not None:
            continue
        if not (checkpoint / CHECKSUM_FILE).is_file():
            continue
        try:
            state = read_state(checkpoint)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(state, dict) and isinstance(state.get("step"), int):
            return checkpoint, state
    return None


def read_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def best_state(directory: Path) -> dict | None:
    """The state of `directory/best` (with its `val_miou`) if it is intact; a damaged one is
    reported on stderr and ignored (the next better epoch replaces it)."""
    best = Path(directory) / BEST_DIR
    if not best.is_dir():
        return None
    problem = verify_checkpoint(best)
    if problem:
        print(f"warning: ignoring damaged best checkpoint {best}: {problem}", file=sys.stderr, flush=True)
        return None
    return read_state(best)


def restore_checkpoint(model: keras.Model, checkpoint: Path) -> None:
    """Load weights and optimizer state (the optimizer's variables must exist first to be filled).

    Raises SegflowError naming the file when the weights do not fit the model.
    """
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(checkpoint / WEIGHTS_FILE)
    except (OSError, ValueError, KeyError) as error:
        raise SegflowError(f"cannot load {checkpoint / WEIGHTS_FILE} into the model: {error}") from None


def prune_step_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete step checkpoints (those with a checksum file),
    the incomplete ones older than them, and the staging leftovers of killed writes."""
    directory = Path(directory)
    kept = 0
    for checkpoint in reversed(step_checkpoints(directory)):
        if kept < keep and (checkpoint / CHECKSUM_FILE).is_file():
            kept += 1
        elif kept >= keep:
            shutil.rmtree(checkpoint, ignore_errors=True)
    names = {leftover.name[1:].split(".", 1)[0] for leftover in directory.glob(f".*{atomic.STAGING_SUFFIX}")}
    for name in names:
        atomic.remove_stale(directory / name)
