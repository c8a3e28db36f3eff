"""Tasks that start, resume and finish a pipeline run's bookkeeping (see segflow.runinfo)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from segflow import runinfo, storage
from segflow.run_files import RUN_FILE


@task(task_run_name="start or resume the run")
def start_run(work_dir: str, parameters: dict, flow_run_id: str | None) -> str:
    """The run id: the unfinished run of these parameters (resumed), or a new one. A previous
    flow run of it whose process is gone is marked Crashed, so the UI does not show it Running."""
    run = runinfo.start_or_resume(work_dir, parameters, flow_run_id)
    if run["resumed"]:
        get_run_logger().info("resuming unfinished run %s (same parameters, same work folder)", run["run_id"])
    previous = run["previous_flow_run_id"]
    if previous and previous != flow_run_id and not run["previous_pid_alive"]:
        with get_client(sync_client=True) as client:
            if not client.read_flow_run(previous).state.is_final():
                client.set_flow_run_state(
                    previous, Crashed(message=f"its process died; run {run['run_id']} resumed by {flow_run_id}"), force=True
                )
    return run["run_id"]


@task(task_run_name="write run.json")
def write_run_record(run_dir: str, **facts) -> str:
    """run.json in the run folder: what the report's run section shows."""
    path = storage.join(run_dir, RUN_FILE)
    storage.write_json(path, runinfo.run_record(**facts))
    return path


@task(task_run_name="finish the run")
def finish_run(work_dir: str, parameters: dict) -> None:
    runinfo.finish(work_dir, parameters)
