"""A training run whose folder lives in a results store (`s3://bucket/prefix/run`).

Training writes to a local working folder (`--work-dir`, default `default_work_dir(uri)`); a
background thread beside it copies each checkpoint to the store as soon as it is written, so a
machine that dies loses only the steps since the last uploaded checkpoint:

    checkpoints/step-N/model.weights.h5, state.json   first
    checkpoints/step-N/checksums.json                 last: the checkpoint counts from here on
    history.json, config.json, tensorboard/           after each checkpoint

A half-uploaded checkpoint has no `checksums.json` (or files that do not match it) and is never
taken as the latest. At start, `restore` downloads the store's newest complete checkpoint (and
the run's `config.json`, `history.json` and `best/`) when it is newer than the local one, so the
same command on another machine, with an empty working folder, resumes where the lost one
stopped. At the end `finish` uploads the exported model and everything else in the folder.

The store keeps the newest `keep` step checkpoints, like the local folder; older ones are
deleted, each checksum file first so a checkpoint is never complete-looking but partial.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
from pathlib import Path

from segflow import atomic, checkpoints, run_files, storage

KEEP_STEP_CHECKPOINTS = 2
_UPLOAD_ORDER = (checkpoints.WEIGHTS_FILE, checkpoints.STATE_FILE, checkpoints.CHECKSUM_FILE)
_STOP = object()


def default_work_dir(uri: str) -> Path:
    """`$SEGFLOW_CACHE/runs/<first 16 hex digits of sha256(uri)>` (SEGFLOW_CACHE defaults to
    ~/.cache/segflow): the same URI maps to the same folder on one machine."""
    cache = Path(os.environ.get("SEGFLOW_CACHE") or Path.home() / ".cache" / "segflow")
    return cache / "runs" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


class RunSync:
    """Keeps the run folder at the store URI `uri` in step with the local folder `local_dir`.

    Use: `restore()` before training, `start()`, `checkpoint_saved(path)` from the training
    thread after each checkpoint, `finish()` after the export, `stop()` in a `finally`.
    Upload failures during training are reported on stderr and retried with the next checkpoint;
    `finish` raises SegflowError if the final upload fails.
    """

    def __init__(self, uri: str, work_dir: str | os.PathLike | None = None, *, keep: int = KEEP_STEP_CHECKPOINTS):
        storage.split_s3(uri)  # a URI without a bucket is refused here, before any work
        self.uri = uri.rstrip("/")
        self.local_dir = Path(work_dir) if work_dir else default_work_dir(self.uri)
        self.keep = keep
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last uploaded
        self._uploaded_checkpoints: dict[str, bytes] = {}  # folder name -> its checksum file uploaded

    # === Start: the store's newest complete checkpoint ===

    def restore(self) -> int | None:
        """Download the store's newest complete checkpoint when it is newer than the newest intact
        local one, with the run's config, history and best checkpoint. Returns its step, or None
        when the local folder is as new (or the store holds no checkpoint)."""
        local = checkpoints.latest_checkpoint(self.local_dir / run_files.CHECKPOINT_DIR, verify=True)
        local_step = local[1]["step"] if local else -1
        remote = self._remote_checkpoints()
        for name in sorted((name for name in remote if name.startswith(checkpoints.STEP_PREFIX)), reverse=True):
            if checkpoints.CHECKSUM_FILE not in remote[name]:
                continue  # an upload that did not finish
            target = self.local_dir / run_files.CHECKPOINT_DIR / name
            if int(name[len(checkpoints.STEP_PREFIX) :]) <= local_step:
                return None
            if not self._download_checkpoint(name, remote[name], target):
                continue
            for file in (run_files.CONFIG_FILE, run_files.HISTORY_FILE):
                if storage.exists(storage.join(self.uri, file)):
                    storage.download_file(storage.join(self.uri, file), self.local_dir / file)
            if checkpoints.CHECKSUM_FILE in remote.get(checkpoints.BEST_DIR, ()):
                self._download_checkpoint(checkpoints.BEST_DIR, remote[checkpoints.BEST_DIR], target.parent / checkpoints.BEST_DIR)
            step = checkpoints.read_state(target)["step"]
            print(f"downloaded checkpoint {name} from {self.uri}", file=sys.stderr, flush=True)
            return step
        return None

    def _remote_checkpoints(self) -> dict[str, set[str]]:
        """Checkpoint folder name -> the file names the store holds in it."""
        folders: dict[str, set[str]] = {}
        for name in storage.list_files(storage.join(self.uri, run_files.CHECKPOINT_DIR)):
            folder, _, file = name.partition("/")
            if file and "/" not in file:
                folders.setdefault(folder, set()).add(file)
        return folders

    def _download_checkpoint(self, name: str, files: set[str], target: Path) -> bool:
        """Download one checkpoint into `target` atomically; False (with a warning) if it does
        not verify against its checksum file."""
        uri = storage.join(self.uri, run_files.CHECKPOINT_DIR, name)
        try:
            with atomic.staging_dir(target) as staging:
                for file in sorted(files):
                    storage.download_file(storage.join(uri, file), staging / file)
                problem = checkpoints.verify_checkpoint(staging)
                if problem:
                    raise _Damaged(problem)
        except _Damaged as damaged:
            print(f"warning: skipping damaged checkpoint {uri}: {damaged}", file=sys.stderr, flush=True)
            return False
        return True

    # === During training: uploads beside it ===

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="segflow-run-sync", daemon=True)
        self._thread.start()

    def checkpoint_saved(self, checkpoint: Path) -> None:
        """Queue `checkpoint` (a folder just written) for upload; returns at once."""
        self._queue.put(Path(checkpoint))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            # Only the newest step checkpoint waiting matters; older ones may be pruned already.
            pending = [item]
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
            stop = _STOP in pending
            pending = [path for path in pending if path is not _STOP]
            steps = [path for path in pending if path.name.startswith(checkpoints.STEP_PREFIX)]
            others = {path for path in pending if path not in steps}
            try:
                for path in [*others, *steps[-1:]]:
                    self._upload_checkpoint(path)
                self._upload_run_files()
                if steps:
                    self._prune_remote()
            except Exception as error:  # noqa: BLE001  (reported; training goes on, `finish` retries)
                print(f"warning: upload to {self.uri} failed, retried after the next checkpoint: {error}", file=sys.stderr, flush=True)
            if stop:
                return

    def _upload_checkpoint(self, checkpoint: Path) -> None:
        checksums = (checkpoint / checkpoints.CHECKSUM_FILE).read_bytes()
        if self._uploaded_checkpoints.get(checkpoint.name) == checksums:
            return
        uri = storage.join(self.uri, run_files.CHECKPOINT_DIR, checkpoint.name)
        if checkpoint.name == checkpoints.BEST_DIR:  # replaced in place: mark it incomplete first
            self._delete([storage.join(uri, checkpoints.CHECKSUM_FILE)])
        for file in _UPLOAD_ORDER:
            storage.upload_file(checkpoint / file, storage.join(uri, file))
        self._uploaded_checkpoints[checkpoint.name] = checksums

    def _upload_run_files(self, everything: bool = False) -> None:
        """Upload the run's files that changed since their last upload: history, config and
        TensorBoard logs; with `everything`, also the exported model and the rest."""
        for path in sorted(self.local_dir.rglob("*")):
            relative = path.relative_to(self.local_dir)
            if path.is_dir() or any(part.startswith(".") for part in relative.parts):
                continue  # staging of a write in progress
            if relative.parts[0] == run_files.CHECKPOINT_DIR:
                continue
            if not everything and relative.parts[0] not in (run_files.CONFIG_FILE, run_files.HISTORY_FILE, run_files.TENSORBOARD_DIR):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self._uploaded.get(relative.as_posix()) == (stat.st_size, stat.st_mtime_ns):
                continue
            storage.upload_file(path, storage.join(self.uri, relative.as_posix()))
            self._uploaded[relative.as_posix()] = (stat.st_size, stat.st_mtime_ns)

    def _prune_remote(self) -> None:
        remote = self._remote_checkpoints()
        names = sorted(name for name in remote if name.startswith(checkpoints.STEP_PREFIX))
        complete = [name for name in names if checkpoints.CHECKSUM_FILE in remote[name]]
        if len(complete) <= self.keep:
            return
        oldest_kept = complete[-self.keep]
        for name in names:
            if name < oldest_kept:
                uri = storage.join(self.uri, run_files.CHECKPOINT_DIR, name)
                files = sorted(remote[name], key=lambda file: file != checkpoints.CHECKSUM_FILE)
                self._delete([storage.join(uri, file) for file in files])

    def _delete(self, uris: list[str]) -> None:
        """Delete objects one by one, in order (the first ones first, for the checksum file)."""
        for uri in uris:
            bucket, key = storage.split_s3(uri)
            storage.s3_client().delete_object(Bucket=bucket, Key=key)

    # === End ===

    def finish(self) -> None:
        """Wait for the checkpoint uploads, then upload every file of the run folder (the final
        checkpoint, `best/`, the exported model, SavedModel, history, config, TensorBoard logs).
        Raises SegflowError if an upload fails."""
        self.stop()
        step_dir = checkpoints.latest_checkpoint(self.local_dir / run_files.CHECKPOINT_DIR, verify=True)
        for checkpoint in [step_dir[0] if step_dir else None, self.local_dir / run_files.CHECKPOINT_DIR / checkpoints.BEST_DIR]:
            if checkpoint is not None and checkpoint.is_dir():
                self._upload_checkpoint(checkpoint)
        self._prune_remote()
        self._upload_run_files(everything=True)

    def stop(self) -> None:
        """Let the upload thread finish what is queued, then end it (idempotent)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None


class _Damaged(Exception):
    pass
