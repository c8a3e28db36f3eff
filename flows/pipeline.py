"""The Cityscapes pipeline as a Prefect flow.

    prepare_dataset → convert_records → train_architecture ×N → evaluate_architecture ×N
        → decide_champion ×N → write_report → publish_run → promote_champion ×N

One failing architecture does not stop the others: the run is reported and published, and its
final state is `Partial` (a Completed state) naming what failed; only when every architecture
fails is the run Failed.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from segflow import dataset, runinfo, storage
from segflow.config import PipelineParams
from tasks.data import get_dataset, get_records
from tasks.remote import download_folder, train_on_deployment, upload_folder
from tasks.results import decide_champion, promote_champion, publish_run, write_report
from tasks.training import evaluate_architecture, train_architecture

RUN_FILE = "run.json"


@flow(
    name="cityscapes-pipeline",
    flow_run_name="cityscapes {params.source}: {params.architectures}",
    task_runner=ThreadPoolTaskRunner(max_workers=16),
    log_prints=True,
)
def cityscapes_pipeline(params: PipelineParams = PipelineParams()):
    """Download Cityscapes, convert it to TFRecords, train and evaluate each architecture, write
    the report and publish everything to the results store."""
    logger = get_run_logger()
    started_at = _now()
    run_id = _run_id()
    work_dir = Path(params.work_dir).resolve()
    run_dir = work_dir / "runs" / run_id

    data_root = get_dataset(params.source, str(work_dir), params.synthetic_images, params.synthetic_size, params.training.seed)
    records_dir = get_records(data_root, str(work_dir / "records" / Path(data_root).name))

    outcomes = _train_and_evaluate(params, records_dir, run_dir, run_id)
    decisions = [
        decide_champion(params.results_uri, arch, run_id, outcome.get("metrics", {}).get("miou"))
        for arch, outcome in outcomes.items()
    ] if params.promote_champions else []  # fmt: skip

    failed = {arch: outcome["error"] for arch, outcome in outcomes.items() if "error" in outcome}
    _write_run_record(run_dir, run_id, params, data_root, records_dir, started_at, outcomes, decisions)
    report_html = write_report(str(run_dir))
    run_uri = publish_run(str(run_dir), params.results_uri, run_id)
    promoted = [decision["architecture"] for decision in decisions if promote_champion(params.results_uri, decision, run_uri)]

    summary = {
        "run_id": run_id,
        "run_uri": run_uri,
        "report": storage.join(run_uri, "report", "report.html"),
        "local_report": report_html,
        "miou": {arch: outcome.get("metrics", {}).get("miou") for arch, outcome in outcomes.items()},
        "failed": failed,
        "promoted": promoted,
    }
    logger.info("report: %s", summary["report"])
    if len(failed) == len(outcomes):
        return Failed(message=f"every architecture failed: {_describe(failed)}", data=summary)
    if failed:
        return Completed(name="Partial", message=f"{len(failed)} of {len(outcomes)} failed: {_describe(failed)}", data=summary)
    return Completed(message=f"{len(outcomes)} architectures trained and evaluated", data=summary)


def _train_and_evaluate(params: PipelineParams, records_dir: str, run_dir: Path, run_id: str) -> dict[str, dict]:
    """Train up to `max_parallel_training` architectures at once (here, or each as a flow run of
    `training_deployment` on the GPU pool); evaluate each as it finishes.

    Returns `{architecture: {"metrics": {...}} or {"error": "..."}}`, in the order asked for.
    """
    if params.training_deployment:
        records_uri = upload_folder(records_dir, storage.join(params.results_uri, "records", Path(records_dir).name))
        runs_uri = storage.join(params.results_uri, "training", run_id)

        def start(arch):
            deployment = params.training_deployment.format(architecture=arch)
            return train_on_deployment.submit(deployment, arch, records_uri, storage.join(runs_uri, arch), params)

        def model_path(arch, out_uri):
            return str(Path(download_folder(out_uri, str(run_dir / arch))) / "model.keras")
    else:

        def start(arch):
            return train_architecture.submit(arch, records_dir, str(run_dir / arch), params)

        def model_path(arch, trained):
            return trained["model_path"]

    pending = list(params.architectures)
    running, outcomes = {}, {}
    while pending or running:
        while pending and len(running) < params.max_parallel_training:
            arch = pending.pop(0)
            running[arch] = start(arch)
        first_done = next(as_completed(list(running.values())))
        for arch in [arch for arch, future in running.items() if future is first_done or future.state.is_final()]:
            future = running.pop(arch)
            future.wait()
            if not future.state.is_completed():
                outcomes[arch] = {"error": f"training failed: {future.state.message}"}
                continue
            evaluated = evaluate_architecture(arch, model_path(arch, future.result()), records_dir, return_state=True)
            if evaluated.is_completed():
                outcomes[arch] = {"metrics": evaluated.result()}
            else:
                outcomes[arch] = {"error": f"evaluation failed: {evaluated.message}"}
    return {arch: outcomes[arch] for arch in params.architectures}


def _write_run_record(run_dir, run_id, params, data_root, records_dir, started_at, outcomes, decisions) -> None:
    """run.json: what the report's run section shows (parameters, data, code, hardware, times)."""
    record = {
        "run_id": run_id,
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "parameters": params.model_dump(mode="json"),
        "data": {
            "source": dataset._redacted(params.source),
            "synthetic": params.source == dataset.SYNTHETIC,
            "data_root": str(data_root),
            "records_dir": str(records_dir),
            "fingerprint": json.loads((Path(records_dir) / "manifest.json").read_text()).get("fingerprint"),
        },
        "code_version": runinfo.code_version(),
        "hardware": runinfo.hardware(),
        "started_at": started_at,
        "ended_at": _now(),
        "architectures": {
            arch: {"status": "failed" if "error" in outcome else "completed", "error": outcome.get("error")}
            for arch, outcome in outcomes.items()
        },
        "champions": decisions,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    storage.write_json(str(run_dir / RUN_FILE), record)


def _run_id() -> str:
    """Time-ordered and stable across retries of the same flow run (its id is part of it)."""
    started = flow_run.scheduled_start_time or datetime.datetime.now(datetime.timezone.utc)
    suffix = str(flow_run.id)[:8] if flow_run.id else "local"
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _describe(failed: dict[str, str]) -> str:
    return "; ".join(f"{arch}: {error.splitlines()[0][:300]}" for arch, error in failed.items())
