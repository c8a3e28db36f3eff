"""What a run is and where it happened: its id (resumed when the same parameters ran before and
did not finish), `run.json` (parameters with secrets redacted, data, code version, hardware, times,
outcomes), without importing TensorFlow or Prefect."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from segflow import __version__, atomic, uris

REPO_ROOT = Path(__file__).resolve().parents[1]
UNFINISHED_PREFIX = ".unfinished-"
_RUN_ID = re.compile(r"[A-Za-z0-9._-]+")


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


# === run.json and the run id ===


def records_fingerprint(records_dir: str | os.PathLike) -> str | None:
    """The fingerprint in a records folder's `manifest.json` (None without one)."""
    try:
        return json.loads((Path(records_dir) / "manifest.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def run_record(
    *,
    run_id: str,
    flow_run_id: str | None,
    parameters: dict,
    data_root: str,
    records_dir: str,
    started_at: str,
    outcomes: dict[str, dict],
    decisions: list[dict],
) -> dict:
    """What `run.json` holds (the report's run section): parameters (source redacted), data,
    code, hardware, times, and each architecture's status, metrics and timings.

    `outcomes`: `{architecture: {"metrics": {...}, "seconds": ...} or {"error": "..."}}`.
    """
    return {
        "run_id": run_id,
        "flow_run_id": flow_run_id,
        "parameters": {**parameters, "source": uris.redact(parameters["source"])},
        "data": {
            "source": uris.redact(parameters["source"]),
            "synthetic": parameters["source"] == "synthetic",
            "data_root": str(data_root),
            "records_dir": str(records_dir),
            "fingerprint": records_fingerprint(records_dir),
        },
        "code_version": code_version(),
        "hardware": hardware(),
        "started_at": started_at,
        "ended_at": now(),
        "architectures": {
            arch: {"status": "failed" if "error" in outcome else "completed", "error": outcome.get("error")}
            for arch, outcome in outcomes.items()
        },
        "champions": decisions,
    }


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def parameters_key(parameters: dict) -> str:
    """A short hash of a run's parameters: equal parameters, equal key."""
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]


def unfinished_marker(work_dir: str | os.PathLike, parameters: dict) -> Path:
    """`work_dir/runs/.unfinished-<parameters key>.json`: names the run these parameters started
    and have not finished (written when it starts, removed once it is published)."""
    return Path(work_dir) / "runs" / f"{UNFINISHED_PREFIX}{parameters_key(parameters)}.json"


def start_or_resume(work_dir: str | os.PathLike, parameters: dict, flow_run_id: str | None) -> dict:
    """The run to work on: the unfinished run of the same parameters in `work_dir` if there is one
    (same run id, so its trainings resume from their checkpoints), else a new one.

    Returns `{"run_id", "resumed", "previous_flow_run_id", "previous_pid_alive"}`, and records
    this flow run and process in the marker (the next start can then tell whether they died).
    """
    marker = unfinished_marker(work_dir, parameters)
    previous = None
    try:
        previous = json.loads(marker.read_text())
    except (OSError, ValueError):
        pass
    if previous and _RUN_ID.fullmatch(str(previous.get("run_id", ""))):
        run_id = previous["run_id"]
    else:
        previous = None
        run_id = f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{parameters_key(parameters)[:8]}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    current = {"run_id": run_id, "flow_run_id": flow_run_id, "pid": os.getpid(), "host": platform.node()}
    atomic.write_json(marker, current)
    return {
        "run_id": run_id,
        "resumed": previous is not None,
        "previous_flow_run_id": previous.get("flow_run_id") if previous else None,
        "previous_pid_alive": _alive(previous) if previous else False,
    }


def finish(work_dir: str | os.PathLike, parameters: dict) -> None:
    """Forget the unfinished run of these parameters (it is published)."""
    unfinished_marker(work_dir, parameters).unlink(missing_ok=True)


def _alive(marker: dict) -> bool:
    """Whether the process a marker names still runs (only knowable on the same host)."""
    if marker.get("host") != platform.node() or not marker.get("pid") or marker["pid"] == os.getpid():
        return False
    try:
        os.kill(int(marker["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
