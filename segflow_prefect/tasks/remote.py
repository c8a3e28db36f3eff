"""Tasks for training on another machine: move folders through the results store and start the
per-architecture training deployment on the GPU work pool.

Copies are not retried here: boto3 retries S3 requests itself (see segflow_prefect/tasks/retry.py).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.deployments import run_deployment

from segflow import storage
from segflow.config import PipelineParams
from segflow.errors import SegflowError
from segflow.run_files import METRICS_FILE, MODEL_FILE
from segflow.train_process import SMALL_METRICS
from segflow_prefect.tasks.retry import not_a_segflow_error


@task(task_run_name="upload {local_dir}")
def upload_folder(local_dir: str, uri: str) -> str:
    storage.upload_dir(local_dir, uri)
    return uri


@task(task_run_name="download {uri}")
def download_folder(uri: str, local_dir: str, missing_ok: bool = False) -> str:
    """Copy `uri` to `local_dir`; with `missing_ok`, nothing there yet is not an error."""
    if missing_ok and not storage.list_files(uri):
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        return local_dir
    storage.download_dir(uri, local_dir)
    return local_dir


@task(task_run_name="fetch small files of {uri}")
def download_files(uri: str, names: list[str], local_dir: str) -> str:
    """Copy the named files of `uri` (those that exist; a name ending in "/" is every file of that
    folder) into `local_dir`: what the report needs of a run trained elsewhere, without its
    checkpoints or model."""
    folders = tuple(name for name in names if name.endswith("/"))
    for name in storage.list_files(uri):
        if not storage.is_plain_relative(name):
            continue  # a key that would land outside local_dir, or a folder marker
        if name in names or name.startswith(folders):
            storage.download_file(storage.join(uri, name), Path(local_dir) / name)
    return local_dir


@task(retries=1, retry_delay_seconds=30, retry_condition_fn=not_a_segflow_error,
      task_run_name="train {architecture} on {deployment}")  # fmt: skip
def train_on_deployment(deployment: str, architecture: str, records_uri: str, out_uri: str, params: PipelineParams) -> dict:
    """Run the training deployment (a flow run on the GPU pool) and wait for it; returns its small
    result (metrics, URIs, timings). A crashed flow run (lost worker) is retried and resumes from
    the checkpoints in the store; a failed one (its own retries spent) is not."""
    parameters = {
        "architecture": architecture,
        "records_uri": records_uri,
        "out_uri": out_uri,
        "params": params.model_dump(mode="json"),
    }
    flow_run = run_deployment(deployment, parameters=parameters, timeout=None)
    if flow_run.state.is_failed():
        raise SegflowError(f"{deployment} failed: {flow_run.state.message}")
    if not flow_run.state.is_completed():
        raise RuntimeError(f"{deployment} ended {flow_run.state.name}: {flow_run.state.message}")
    metrics = storage.read_json(storage.join(out_uri, METRICS_FILE))
    return {
        "architecture": architecture,
        "out_uri": out_uri,
        "model_path": storage.join(out_uri, MODEL_FILE),
        "metrics": {key: metrics.get(key) for key in SMALL_METRICS},
        "flow_run_id": str(flow_run.id),
    }
