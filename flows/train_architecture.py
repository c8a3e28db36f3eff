"""One architecture's training as its own flow, deployed on the GPU work pool (one flow run per
GPU). It reads the records from the results store and writes its run folder back there, so the
pipeline on the CPU pool and this flow share nothing but the store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow

from segflow.config import Architecture, PipelineParams
from tasks.remote import download_folder, upload_folder
from tasks.training import train_architecture


@flow(name="train-architecture", flow_run_name="train {architecture}")
def train_architecture_flow(architecture: Architecture, records_uri: str, out_uri: str, params: PipelineParams) -> str:
    """Fetch the records and any earlier attempt's checkpoints, train, and upload the run folder
    (also after a failure, so the retry, wherever it runs, resumes from the last checkpoint)."""
    local = Path(params.work_dir).resolve() / "remote" / hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    records_dir = download_folder(records_uri, str(local / "records"))
    out_dir = download_folder(out_uri, str(local / architecture), missing_ok=True)
    try:
        train_architecture(architecture, records_dir, out_dir, params)
    finally:
        upload_folder(out_dir, out_uri)
    return out_uri
