"""Reading a run for the report: run.json and each architecture's files, from a local folder or
`s3://` (its small files and sample tiles are fetched into a temporary folder; models only when
the samples must be computed). A results store root (holding `latest.json`) stands for the run it points at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from segflow import storage
from segflow.errors import SegflowError
from segflow.run_files import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, RUN_FILE, SAMPLES_DIR, SAMPLES_FILE

ARCHITECTURE_FILES = (METRICS_FILE, HISTORY_FILE, CONFIG_FILE)


@dataclasses.dataclass
class ArchitectureResult:
    """What one architecture's folder holds; `status` is completed, failed or incomplete."""

    name: str
    status: str
    error: str | None = None
    metrics: dict | None = None
    history: list[dict] = dataclasses.field(default_factory=list)
    config: dict | None = None
    model_uri: str | None = None
    samples_dir: Path | None = None  # the tiles evaluation wrote (`segflow.report.samples.write_samples`)


@dataclasses.dataclass
class Run:
    source: str
    record: dict | None  # run.json, None for a folder of `segflow train` outputs
    architectures: list[ArchitectureResult]

    @property
    def completed(self) -> list[ArchitectureResult]:
        return [arch for arch in self.architectures if arch.metrics is not None]

    def architecture(self, name: str) -> ArchitectureResult:
        return next(arch for arch in self.architectures if arch.name == name)


def resolve_latest(runs: str | os.PathLike) -> str | os.PathLike:
    """`runs` itself, or the run its `latest.json` points at when `runs` is a results store root
    (a folder or URI holding `latest.json` and no `run.json`). A pointer written on another
    machine (a local path that is not here) falls back to `runs/runs/{run_id}`."""
    if storage.is_s3(runs):
        if storage.exists(storage.join(str(runs), RUN_FILE)):
            return runs
    elif not storage.local_path(runs).is_dir() or (storage.local_path(runs) / RUN_FILE).is_file():
        return runs
    pointer = storage.latest_run(str(runs))
    if pointer is None:
        return runs
    uri = pointer.get("uri")
    if uri and (storage.is_s3(uri) or storage.local_path(uri).is_dir()):
        return uri
    return storage.join(str(runs), "runs", pointer["run_id"])


@contextlib.contextmanager
def local_run_folder(runs: str | os.PathLike) -> Iterator[tuple[Path, Callable[[str], Path]]]:
    """The run as a local folder, and a function that makes a model URI a local file."""
    if not storage.is_s3(runs):
        run_dir = storage.local_path(runs)
        if not run_dir.is_dir():
            raise SegflowError(f"run folder {run_dir} does not exist")
        yield run_dir, Path
        return
    names = storage.list_files(str(runs))
    if not names:
        raise SegflowError(f"nothing found at {runs}: expected a run folder holding {RUN_FILE} or {METRICS_FILE} files")
    wanted = {RUN_FILE, *ARCHITECTURE_FILES}
    with tempfile.TemporaryDirectory(prefix="segflow-report-") as temporary:
        run_dir = Path(temporary)
        for name in names:
            parts = name.split("/")
            small = len(parts) <= 2 and parts[-1] in wanted
            if storage.is_plain_relative(name) and (small or _is_sample_tile(parts)):
                storage.download_file(storage.join(str(runs), name), run_dir / name)

        def fetch_model(uri: str) -> Path:
            return storage.download_file(uri, run_dir / ".models" / Path(uri).parent.name / MODEL_FILE)

        yield run_dir, fetch_model


def _is_sample_tile(parts: list[str]) -> bool:
    """`samples/...` of a `segflow train` folder or `{arch}/samples/...` of a run."""
    return len(parts) in (2, 3) and parts[-2] == SAMPLES_DIR


def load_run(run_dir: Path, *, source: str | None = None) -> Run:
    """Read run.json (if any) and each architecture's files from a local run folder.

    Raises SegflowError naming the folder when it holds no run, or the file that is not JSON.
    """
    run_dir = Path(run_dir)
    remote = source if source and storage.is_s3(source) else None
    record = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).is_file() else None
    if record is not None:
        statuses = record.get("architectures") or {}
        folders = {name: run_dir / name for name in statuses}
        # An architecture folder run.json does not list (a rerun by hand) still shows.
        folders.update({path.name: path for path in _architecture_folders(run_dir) if path.name not in folders})
    else:
        statuses = {}
        folders = {path.name: path for path in _architecture_folders(run_dir)}
        if _is_architecture_folder(run_dir):  # a single `segflow train` output folder
            config = read_json(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else {}
            folders = {config.get("architecture") or run_dir.name: run_dir}
    if not folders:
        raise SegflowError(
            f"{source or run_dir} holds no run: expected {RUN_FILE} or architecture folders with "
            f"{METRICS_FILE}, {HISTORY_FILE} or {CONFIG_FILE}"
        )
    architectures = []
    for name, folder in folders.items():
        result = ArchitectureResult(name=name, status="completed")
        result.metrics = _read_if_present(folder / METRICS_FILE)
        result.history = _read_if_present(folder / HISTORY_FILE) or []
        result.config = _read_if_present(folder / CONFIG_FILE)
        parts = folder.relative_to(run_dir).parts  # () for a single `segflow train` folder
        model_uri = storage.join(remote, *parts, MODEL_FILE) if remote else str(folder / MODEL_FILE)
        result.model_uri = model_uri if remote or Path(model_uri).is_file() else None
        result.samples_dir = folder / SAMPLES_DIR if (folder / SAMPLES_DIR / SAMPLES_FILE).is_file() else None
        status = statuses.get(name) or {}
        result.error = status.get("error")
        if status.get("status") == "failed" or result.error:
            result.status, result.metrics = "failed", None
            result.error = result.error or f"failed ({RUN_FILE} gives no error)"
        elif result.metrics is None:
            result.status = "failed" if record is not None else "incomplete"
            result.error = f"no {METRICS_FILE} in {storage.join(source or str(run_dir), *parts)}"
        architectures.append(result)
    return Run(source=source or str(run_dir), record=record, architectures=architectures)


def _architecture_folders(run_dir: Path) -> list[Path]:
    return sorted(path for path in run_dir.iterdir() if path.is_dir() and _is_architecture_folder(path))


def _is_architecture_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ARCHITECTURE_FILES)


def _read_if_present(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def read_json(path: Path) -> Any:
    """The JSON in `path`; SegflowError naming the file if it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SegflowError(f"{path} is not valid JSON ({error})") from None
    except OSError as error:
        raise SegflowError(f"cannot read {path}: {error.strerror}") from None
