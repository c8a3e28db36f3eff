"""Tasks that turn a finished run into a report, publish it, and move champion pointers."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from segflow import champion, storage


@task(task_run_name="decide champion: {architecture}", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def decide_champion(results_uri: str, architecture: str, run_id: str, val_miou: float | None) -> dict:
    return champion.decide(results_uri, architecture, run_id, val_miou)


@task
def write_report(run_dir: str) -> str:
    """Render report.html/.json/.md into `run_dir/report`, and show the summary in the Prefect UI."""
    from segflow.report import write_report as render

    paths = render(run_dir, Path(run_dir) / "report")
    create_markdown_artifact(Path(paths["md"]).read_text(), key="segflow-report", description="Run summary")
    rows = json.loads(Path(paths["json"]).read_text())["comparison"]
    create_table_artifact(rows, key="segflow-metrics", description="Per-architecture metrics")
    return str(paths["html"])


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5))
def publish_run(run_dir: str, results_uri: str, run_id: str) -> str:
    """Copy the run folder to the results store; `latest.json` moves only once it is all there."""
    run_uri = storage.publish(run_dir, results_uri, run_id)
    report_uri = storage.join(run_uri, "report", "report.html")
    link = report_uri if storage.is_s3(report_uri) else Path(report_uri).resolve().as_uri()
    create_link_artifact(link, link_text="report.html", key="segflow-report-link")
    return run_uri


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def promote_champion(results_uri: str, decision: dict, run_uri: str) -> dict | None:
    model_uri = storage.join(run_uri, decision["architecture"], "model.keras")
    return champion.promote(results_uri, decision, model_uri)
