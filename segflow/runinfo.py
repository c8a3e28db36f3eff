"""What a report needs to say about where and how a run happened: code version and hardware."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from segflow import __version__

REPO_ROOT = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """`segflow X.Y.Z` plus the git commit (and `-dirty`) when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = os.environ.get("SEGFLOW_GIT_COMMIT", "")
    return f"segflow {__version__}" + (f" ({commit})" if commit else "")


def hardware() -> dict:
    """CPU, cores, memory and GPUs of this machine, without importing TensorFlow."""
    facts = {"machine": platform.machine(), "cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        facts["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    facts["gpus"] = _gpus()
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in output.splitlines() if line.strip()]
