"""Training and evaluation tasks, one run of each per architecture."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.tasks import exponential_backoff

from segflow import data
from segflow.config import PipelineParams
from segflow.train_process import train_in_subprocess


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), task_run_name="train {architecture}")
def train_architecture(architecture: str, records_dir: str, out_dir: str, params: PipelineParams) -> dict:
    """Train one architecture in its own process; a retry resumes from the run folder's checkpoint."""
    config = params.train_config(architecture)
    steps_per_epoch = config.steps_per_epoch or data.count_examples(records_dir, "train") // config.batch_size
    progress = create_progress_artifact(0.0, description=f"training {architecture}: share of optimizer steps done")
    result = train_in_subprocess(
        config,
        records_dir,
        out_dir,
        total_steps=steps_per_epoch * config.epochs,
        on_progress=lambda fraction: update_progress_artifact(progress, 100.0 * fraction),
    )
    return {"architecture": architecture, "model_path": result["model_path"], "out_dir": result["out_dir"]}


@task(retries=1, retry_delay_seconds=10, task_run_name="evaluate {architecture}")
def evaluate_architecture(architecture: str, model_path: str, records_dir: str) -> dict:
    """Score the exported model on the val split; metrics.json lands beside the model."""
    from segflow.evaluate import evaluate_model

    metrics = evaluate_model(model_path, records_dir, Path(model_path).parent)
    return {key: metrics[key] for key in ("miou", "category_miou", "pixel_accuracy", "num_images")}
