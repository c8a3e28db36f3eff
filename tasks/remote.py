"""Tasks for training on another machine: move folders through the results store and start the
per-architecture training deployment on the GPU work pool."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.deployments import run_deployment
from prefect.tasks import exponential_backoff

from segflow import storage
from segflow.config import PipelineParams


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5), task_run_name="upload {local_dir}")
def upload_folder(local_dir: str, uri: str) -> str:
    storage.upload_dir(local_dir, uri)
    return uri


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5), task_run_name="download {uri}")
def download_folder(uri: str, local_dir: str, missing_ok: bool = False) -> str:
    """Copy `uri` to `local_dir`; with `missing_ok`, nothing there yet is not an error."""
    if missing_ok and not storage.list_files(uri):
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        return local_dir
    storage.download_dir(uri, local_dir)
    return local_dir


@task(retries=1, retry_delay_seconds=30, task_run_name="train {architecture} on {deployment}")
def train_on_deployment(deployment: str, architecture: str, records_uri: str, out_uri: str, params: PipelineParams) -> str:
    """Run the training deployment (a flow run on the GPU pool) and wait for it; returns `out_uri`."""
    parameters = {
        "architecture": architecture,
        "records_uri": records_uri,
        "out_uri": out_uri,
        "params": params.model_dump(mode="json"),
    }
    flow_run = run_deployment(deployment, parameters=parameters, timeout=None)
    if not flow_run.state.is_completed():
        raise RuntimeError(f"{deployment} ended {flow_run.state.name}: {flow_run.state.message}")
    return out_uri
