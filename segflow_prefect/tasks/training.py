"""The training job: one task per architecture that trains, exports and evaluates in one child process."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from segflow.config import PipelineParams
from segflow.run_files import LOG_FILE
from segflow.train_process import cpu_threads_per_training, train_in_subprocess
from segflow_prefect.tasks.gpus import training_slot
from segflow_prefect.tasks.retry import TRAINING


@task(**TRAINING, task_run_name="train and evaluate {architecture}")
def train_architecture(
    architecture: str,
    records_dir: str,
    out_dir: str,
    params: PipelineParams,
    out_uri: str | None = None,
    position: str = "",
) -> dict:
    """Wait for a training slot (and its GPUs), then train and evaluate in a child process; a retry
    resumes from the run folder's checkpoint. With `out_uri` the run folder lives in the results
    store (`out_dir` is its local working copy) and each checkpoint reaches the store as soon as it
    is written. The child's lines (one per epoch, then the evaluation) are logged as they come.
    Returns metrics, paths and timings, nothing large. `position`: e.g. "2/5", for the log."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"training {architecture}: share of optimizer steps done")
    with training_slot() as gpu_ids:
        place = f" ({position})" if position else ""
        logger.info("training %s%s — log: %s", architecture, place, Path(out_dir).resolve() / LOG_FILE)
        return train_in_subprocess(
            params.train_config(architecture),
            records_dir,
            out_dir,
            out_uri=out_uri,
            gpu_ids=gpu_ids,
            cpu_threads=None if gpu_ids else cpu_threads_per_training(params.max_parallel_training),
            on_progress=lambda fraction: update_progress_artifact(progress, 100.0 * fraction),
            on_output=lambda line: logger.info("%s: %s", architecture, line),
        )
