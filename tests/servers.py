"""Starting and stopping the real servers the tests talk to: a free port, a wait until a URL
answers, a stop that takes the server's child processes with it; and `segflow serve` against a
real Prefect server, with the few API calls the tests make to it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import urllib3


def tool(name: str) -> str:
    """A command installed next to this Python (the project's venv), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"`{name}` is not installed: it comes with the dev dependencies (make setup)"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a server a test started in its own session, with the processes it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:  # children left behind in its session (e.g. a flow run a runner started)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# === Prefect ===

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FLOW = "cityscapes-pipeline"
DEPLOYMENTS = ("pipeline", "nightly")


class ApiError(Exception):
    """The Prefect API answered `status` (4xx or 5xx) with `body`."""

    def __init__(self, url: str, status: int, body: str):
        super().__init__(f"{url}: HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


# What Prefect's own client retries (prefect.client.base.PrefectHttpxAsyncClient.send): 503 is the
# server's answer when its SQLite database is locked by another writer, as it is while workers,
# runners and flow runs write states on a busy machine (a create_flow_run failed so in CI).
_PREFECT_RETRIES = urllib3.Retry(
    total=8, backoff_factor=0.25, status_forcelist=(408, 429, 502, 503), allowed_methods=None, raise_on_status=False
)
_http = urllib3.PoolManager(retries=_PREFECT_RETRIES, timeout=urllib3.Timeout(total=10))


def api_json(url: str, body: dict | None = None) -> dict | list:
    """GET `url` (or POST `body` to it) and decode the JSON answer, retrying what Prefect's client
    retries (up to 8 times, about a minute in all).

    Raises:
        ApiError: any other 4xx or 5xx answer, or a retried one still failing.
    """
    response = _http.request("GET" if body is None else "POST", url, json=body)
    if response.status >= 400:
        raise ApiError(url, response.status, response.data.decode(errors="replace"))
    return response.json()


def read_deployment(api: str, name: str) -> dict | None:
    try:
        return api_json(f"{api}/deployments/name/{PIPELINE_FLOW}/{name}")
    except ApiError as error:
        if error.status == 404:
            return None
        raise


@contextlib.contextmanager
def serving(api: str, env: dict, log_path: Path, *options: str, timeout_s: float = 120):
    """Run `segflow serve OPTIONS` against the Prefect server at `api`; yields the `pipeline` and
    `nightly` deployments once this process has registered them (their default results URI is
    env's SEGFLOW_RESULTS_URI), and stops it afterwards. The log is in `log_path`."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [tool("segflow"), "serve", *options],
            cwd=REPO,  # the deployments' entrypoint, segflow_prefect/flows/pipeline.py, is relative to it
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            deployments = {name: read_deployment(api, name) for name in DEPLOYMENTS}
            if all(registered_by(deployment, env) for deployment in deployments.values()):
                break
            assert process.poll() is None, f"segflow serve exited with {process.returncode}:\n{tail(log_path)}"
            assert time.monotonic() < deadline, f"deployments not registered in {timeout_s} s:\n{tail(log_path)}"
            time.sleep(0.5)
        yield deployments
    finally:
        stop(process)


def registered_by(deployment: dict | None, env: dict) -> bool:
    """Whether `deployment` was registered from `env` (not left over from another test) and a
    runner polls for its runs (READY)."""
    return (
        deployment is not None
        and not deployment["paused"]
        and deployment["status"] == "READY"
        and deployment["parameters"]["params"]["results_uri"] == env["SEGFLOW_RESULTS_URI"]
    )


def wait_for_flow_run(api: str, flow_run_id: str, timeout_s: float, log_path: Path) -> dict:
    """Poll the flow run until its state is final; returns it (the serve log tells why if not)."""
    deadline = time.monotonic() + timeout_s
    while True:
        flow_run = api_json(f"{api}/flow_runs/{flow_run_id}")
        if flow_run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return flow_run
        assert time.monotonic() < deadline, (
            f"flow run still {flow_run['state_name']} after {timeout_s} s:\n{tail(log_path)}"
        )
        time.sleep(2)


def tail(path: Path, characters: int = 4000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""


def serve_env(prefect_env: dict, folder: Path, **variables: str) -> dict:
    """The environment of a `segflow serve` whose runs write results/ and work/ under `folder`:
    no SEGFLOW_* from the caller's shell, its own PREFECT_HOME, INFO logs, a 2 s poll for runs."""
    env = {key: value for key, value in prefect_env.items() if not key.startswith("SEGFLOW_")}
    return {
        **env,
        "PREFECT_HOME": str(folder / "prefect-home"),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "SEGFLOW_RESULTS_URI": str(folder / "results"),
        "SEGFLOW_WORK_DIR": str(folder / "work"),
        **variables,
    }


def task_runs(api: str, flow_run_id: str, count: int, timeout_s: float = 30) -> dict[str, str]:
    """`{name: state type}` of the flow run's task runs, once the server has recorded `count` of
    them (they arrive as events, a moment after the flow run ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = api_json(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        if len(runs) >= count or time.monotonic() > deadline:
            return {run["name"]: run["state_type"] for run in runs}
        time.sleep(0.5)
