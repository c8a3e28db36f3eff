"""One architecture's training job as its own flow, deployed on the GPU work pool. It reads the
records from the results store, trains and evaluates in one child process on the GPUs this worker
gives it, with its run folder in the store (`segflow train --out s3://…`): each checkpoint is
uploaded as soon as it is written, so a retry on another machine resumes from it. It returns only
metrics, URIs and timings, so the pipeline on the CPU pool never moves checkpoints or models.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow

from segflow.config import Architecture, PipelineParams
from segflow_prefect.tasks.gpus import size_training_limit
from segflow_prefect.tasks.remote import download_folder
from segflow_prefect.tasks.training import train_architecture


@flow(name="train-architecture", flow_run_name="train {architecture}")
def train_architecture_flow(architecture: Architecture, records_uri: str, out_uri: str, params: PipelineParams) -> dict:
    """Fetch the records, then train and evaluate with the run folder at `out_uri` (the training
    child restores the newest intact checkpoint from there and uploads each new one beside training)."""
    local = Path(params.work_dir).resolve() / "remote" / hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    records_dir = download_folder(records_uri, str(local / "records"))
    size_training_limit(params.max_parallel_training)
    result = train_architecture(architecture, records_dir, str(local / architecture), params, out_uri=out_uri)
    return {key: result[key] for key in ("architecture", "metrics", "epochs", "seconds", "gpu_ids")} | {"out_uri": out_uri}
