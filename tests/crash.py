"""Helpers for crash tests: die at every rename, kill a command for real, find its processes."""

import os
import subprocess
import sys
import time
from pathlib import Path

from segflow import atomic

KILLED = 137  # the exit code a SIGKILLed command shows in a shell


def killed_after_renames(renames: int, action) -> bool:
    """Run `action()` in a forked child that dies (os._exit, no cleanup, like SIGKILL) when it is
    about to make its rename number `renames + 1` (os.replace, os.rename or atomic.exchange).
    Returns True if it died there, False if `action` finished first."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            count = [0]

            def counted(real):
                def rename(*args, **kwargs):
                    if count[0] == renames:
                        os._exit(KILLED)
                    count[0] += 1
                    return real(*args, **kwargs)

                return rename

            os.replace, os.rename, atomic.exchange = counted(os.replace), counted(os.rename), counted(atomic.exchange)
            action()
            os._exit(0)
        except BaseException as error:  # noqa: BLE001
            print(f"crash helper child failed: {error!r}", file=sys.stderr)
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the child failed (exit {code})"
    return code == KILLED


def segflow_command(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m segflow ARGS` in its own process group, with this worktree importable."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "segflow", *args], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def run_segflow(*args: str) -> subprocess.CompletedProcess:
    process = segflow_command(*args)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_for(condition, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
