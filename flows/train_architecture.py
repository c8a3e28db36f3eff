"""One architecture's training job as its own flow, deployed on the GPU work pool. It reads the
records from the results store, trains and evaluates in one child process on the GPUs this worker
gives it, and writes its run folder back to the store; it returns only metrics, URIs and timings,
so the pipeline on the CPU pool never moves checkpoints or models.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow

from segflow.config import Architecture, PipelineParams
from tasks.gpus import size_training_limit
from tasks.remote import download_folder, upload_folder
from tasks.training import train_architecture


@flow(name="train-architecture", flow_run_name="train {architecture}")
def train_architecture_flow(architecture: Architecture, records_uri: str, out_uri: str, params: PipelineParams) -> dict:
    """Fetch the records and any earlier attempt's checkpoints, train and evaluate, and upload the
    run folder (also after a failure, so the retry, wherever it runs, resumes from the last checkpoint)."""
    local = Path(params.work_dir).resolve() / "remote" / hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    records_dir = download_folder(records_uri, str(local / "records"))
    out_dir = download_folder(out_uri, str(local / architecture), missing_ok=True)
    size_training_limit(params.max_parallel_training)
    try:
        result = train_architecture(architecture, records_dir, out_dir, params)
    finally:
        upload_folder(out_dir, out_uri)
    return {key: result[key] for key in ("architecture", "metrics", "epochs", "seconds", "gpu_ids")} | {"out_uri": out_uri}
