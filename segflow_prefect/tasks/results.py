"""Tasks that turn a finished run into a report, publish it, and move champion pointers.

None is retried: storage retries S3 requests itself (see segflow_prefect/tasks/retry.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from segflow import champion, run_files, storage
from segflow.errors import SegflowError
from segflow.lifeline import die_with_parent


@task(task_run_name="decide champion: {architecture}")
def decide_champion(results_uri: str, architecture: str, run_id: str, val_miou: float | None) -> dict:
    return champion.decide(results_uri, architecture, run_id, val_miou)


@task(task_run_name="write report")
def write_report(run_dir: str) -> str:
    """Render report.html/.json/.md into `run_dir/report` in a child process (`segflow report`:
    the sample predictions load Keras and matplotlib), and show the summary in the Prefect UI."""
    out_dir = Path(run_dir) / "report"
    command = [sys.executable, "-m", "segflow", "report", "--runs", run_dir, "--out", str(out_dir)]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=die_with_parent)
    if done.returncode != 0:
        raise SegflowError(f"writing the report of {run_dir} failed: {done.stderr.strip()[-2000:]}")
    create_markdown_artifact((out_dir / "report.md").read_text(), key="segflow-report", description="Run summary")
    rows = json.loads((out_dir / "report.json").read_text())["comparison"]
    create_table_artifact(rows, key="segflow-metrics", description="Per-architecture metrics")
    return str(out_dir / "report.html")


@task(task_run_name="publish run {run_id}")
def publish_run(run_dir: str, results_uri: str, run_id: str, keep_checkpoints: bool = False) -> str:
    """Copy the run folder (without its checkpoints unless `keep_checkpoints`) to the results
    store; `latest.json` moves only once it is all there."""
    exclude = () if keep_checkpoints else (run_files.CHECKPOINT_DIR,)
    run_uri = storage.publish(run_dir, results_uri, run_id, exclude_dirs=exclude)
    report_uri = storage.join(run_uri, "report", "report.html")
    link = report_uri if storage.is_s3(report_uri) else Path(report_uri).resolve().as_uri()
    create_link_artifact(link, link_text="report.html", key="segflow-report-link")
    return run_uri


@task(task_run_name="promote champion: {decision[architecture]}")
def promote_champion(results_uri: str, decision: dict, model_uri: str) -> dict | None:
    return champion.promote(results_uri, decision, model_uri)
