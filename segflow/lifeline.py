"""Nothing a command started outlives it: a watcher process that kills the command's descendants
when the command dies, even by SIGKILL (which the command itself cannot catch).

Why: `segflow demo` starts Prefect's temporary API server, conversion workers and training
processes. Training processes ask the kernel to die with their parent (PR_SET_PDEATHSIG), but
Prefect's server and the pool workers are started by libraries. The watcher is a separate small
process in its own session; it notes the command's descendants every `poll_seconds` and, once the
command is gone, sends SIGKILL to each of them that still runs, then exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def watch_this_process(poll_seconds: float = 0.5) -> subprocess.Popen:
    """Start the watcher for the calling process; returns it (it ends by itself)."""
    return subprocess.Popen(
        [sys.executable, "-m", "segflow.lifeline", str(os.getpid()), str(poll_seconds)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def descendants(pid: int) -> set[int]:
    """Process ids of every descendant of `pid`, read from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _start_time(pid: int) -> str | None:
    """The start time of a running process (None once it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _watch(pid: int, poll_seconds: float) -> None:
    seen: dict[int, str | None] = {}
    me = os.getpid()
    while _start_time(pid) is not None:
        for child in descendants(pid) - {me}:
            seen.setdefault(child, _start_time(child))
        time.sleep(poll_seconds)
    for child, started in seen.items():
        if started is not None and _start_time(child) == started:  # the same process, not a reused pid
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    _watch(int(sys.argv[1]), float(sys.argv[2]))


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)  # loaded here, never between fork and exec
    except OSError:
        return None


_LIBC = _libc()
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a child (between fork and exec, or a pool worker's initializer): get SIGKILL when the
    parent (thread) goes away. Linux only; elsewhere a child may outlive a killed parent."""
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
