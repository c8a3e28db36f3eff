"""All-or-nothing writes: a file or a folder appears whole, or not at all.

Every file segflow writes goes through `write_bytes` / `write_text` / `write_json` or the
`temporary_file` context; every folder that must appear at once is built with `staging_dir`.
Both stage beside the target (same filesystem, so the final `rename` is atomic), fsync what was
written before the rename, give files the normal mode `open()` would (0666 less the umask, not
`mkstemp`'s 0600), and remove the staging copy if anything fails.

Staging names are recognisable: `.{target name}.{pid}.{random}.segflow-tmp`, so a later run can
remove the leftovers of a killed process (`remove_stale`) without touching anything else, nor the
staging of a process that is still running.

A full disk becomes one `SegflowError` naming what was being written, where, and the free space
(`disk_full_error`), instead of an `OSError` traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from segflow.errors import SegflowError

STAGING_SUFFIX = ".segflow-tmp"
_RETIRED_SUFFIX = f".old{STAGING_SUFFIX}"  # the old copy `replace_dir` moves aside where it cannot exchange
_RENAME_EXCHANGE = 2  # linux/fs.h

logger = logging.getLogger(__name__)


def normal_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the process umask."""
    return 0o666 & ~_umask()


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def disk_full_error(what: str, path: str | os.PathLike, needed_bytes: int | None = None) -> SegflowError:
    """One clear message for ENOSPC: what was being written, where, the space needed and free."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
        free_text = f"{free / 2**20:.1f} MiB free"
    except OSError:
        free_text = "free space unknown"
    needed_text = f"{needed_bytes / 2**20:.1f} MiB needed, " if needed_bytes else ""
    return SegflowError(f"disk full while writing {what} to {path} ({needed_text}{free_text}); free some space and run again")


@contextlib.contextmanager
def disk_full_as_error(what: str, path: str | os.PathLike, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn an ENOSPC/EDQUOT raised inside the block into `disk_full_error(...)`."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(what, path, needed_bytes) from None
        raise


def _staging_name(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


@contextlib.contextmanager
def temporary_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it is fsynced, given the normal mode
    and renamed to `path`; on an error it is removed. Folders above `path` are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=_staging_name(path), suffix=STAGING_SUFFIX)
    os.close(descriptor)
    temporary = Path(name)
    try:
        with disk_full_as_error(path.name, path):
            yield temporary
            commit(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def commit(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make the finished file `temporary` (in `path`'s folder) the file `path`: fsync it, give it
    the normal mode, rename it over `path`, fsync the folder. For files staged by their own
    rules (a resumable download's `.part`); everything else uses `temporary_file`."""
    path = Path(path)
    with open(temporary, "rb+") as stream:
        os.fsync(stream.fileno())
    os.chmod(temporary, normal_file_mode())
    os.replace(temporary, path)
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (a reader sees the old content or the new, never a mix)."""
    with temporary_file(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """`value` as indented JSON (keys in their given order), written atomically."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where the
    system or filesystem cannot (the caller then falls back to two renames)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first))


def replace_dir(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` at `target` in one atomic step, replacing what was there.

    Where `target` exists, the two are exchanged atomically and the old copy (now at `staging`)
    is removed. Where the filesystem cannot exchange, the old copy is renamed aside first, which
    leaves a moment with no `target`; callers that cannot afford it flip a pointer file instead.
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        if not exchange(staging, target):
            retired = target.with_name(f"{_staging_name(target)}{_RETIRED_SUFFIX[1:]}")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(staging, target)
            staging = retired
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, target)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def staging_dir(
    target: str | os.PathLike, *, what: str | None = None, needed_bytes: int | None = None
) -> Iterator[Path]:
    """Yield a new empty folder beside `target` (with the normal folder mode); on a clean exit it
    replaces `target` atomically (`replace_dir`), on an error it is removed.

    A full disk inside the block becomes `disk_full_error(what or target's name, target,
    needed_bytes)`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = None
    try:
        with disk_full_as_error(what or target.name, target, needed_bytes):
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=_staging_name(target), suffix=STAGING_SUFFIX))
            os.chmod(staging, 0o777 & ~_umask())
            yield staging
            replace_dir(staging, target)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the staging leftovers of `target` that a killed process left (files and folders
    named `.{target name}.{pid}.*.segflow-tmp` beside it, whose process is gone); returns what
    was removed. Where `target` itself is missing because a process was killed inside
    `replace_dir`'s two-rename fallback, the old copy it had moved aside is put back instead."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for leftover in sorted(target.parent.glob(f".{glob.escape(target.name)}.*{STAGING_SUFFIX}")):
        owner = leftover.name[len(target.name) + 2 :].split(".", 1)[0]
        if owner.isdigit() and _alive(int(owner)):
            continue
        if leftover.name.endswith(_RETIRED_SUFFIX) and not (target.exists() or target.is_symlink()):
            # Killed between the two renames of `replace_dir`'s fallback: put the old copy back.
            os.replace(leftover, target)
            logger.warning("restored %s from %s, which a killed run had moved aside", target, leftover)
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def remove_leftovers(target: str | os.PathLike, log: logging.Logger, *legacy_patterns: str) -> list[Path]:
    """`remove_stale(target)`, plus the entries beside `target` matching `legacy_patterns` (glob
    patterns of the staging names older versions used), and one warning line saying what went."""
    target = Path(target)
    removed = remove_stale(target)
    if target.parent.is_dir():
        for pattern in legacy_patterns:
            for leftover in target.parent.glob(pattern):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed.append(leftover)
    if removed:
        names = ", ".join(str(path) for path in removed)
        log.warning("removed %d leftover staging folders of a killed run: %s", len(removed), names)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process calls remove_stale before it stages anything
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
