"""The Cityscapes pipeline as a Prefect flow.

    start_run → prepare_dataset → convert_records → train_architecture ×N (train + evaluate)
        → decide_champion ×N → write_run_record → write_report → publish_run → promote_champion ×N

Every training job (here, or a flow run of `training_deployment` on the GPU pool) trains and
evaluates in its own child process and hands back only metrics, paths and timings; how many run
at once is Prefect's global concurrency limit of the machine (one slot per GPU), and this machine's
trainings start costliest first. This process
never imports TensorFlow. One failing architecture does not stop the others: the run is reported
and published, and its final state is `Partial` (a Completed state) naming what failed; only
when every architecture fails is the run Failed.

Running the same parameters on the same work folder again resumes an unfinished run: same run id,
the trainings continue from their checkpoints (segflow.runinfo.start_or_resume).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from segflow import gpus, runinfo, storage
from segflow.config import PipelineParams
from segflow.run_files import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, SAMPLES_DIR
from segflow.train_process import training_pixels
from segflow_prefect.tasks.data import convert_records, prepare_dataset
from segflow_prefect.tasks.gpus import size_training_limit
from segflow_prefect.tasks.remote import download_files, train_on_deployment, upload_folder
from segflow_prefect.tasks.results import decide_champion, promote_champion, publish_run, write_report
from segflow_prefect.tasks.runs import finish_run, start_run, write_run_record
from segflow_prefect.tasks.training import train_architecture


@flow(
    name="cityscapes-pipeline",
    flow_run_name="cityscapes {params.source}: {params.architectures}",
    task_runner=ThreadPoolTaskRunner(max_workers=16),
    log_prints=True,
)
def cityscapes_pipeline(params: PipelineParams = PipelineParams()):
    """Download Cityscapes, convert it to TFRecords, train and evaluate each architecture, write
    the report and publish everything to the results store."""
    started_at = runinfo.now()
    parameters = params.model_dump(mode="json")
    work_dir = Path(params.work_dir).resolve()
    run_id = start_run(str(work_dir), parameters, _flow_run_id())
    run_dir = work_dir / "runs" / run_id

    data_root = prepare_dataset(params.source, str(work_dir), params.synthetic_images, params.synthetic_size, params.training.seed)
    records_dir = convert_records(data_root, str(work_dir / "records" / Path(data_root).name))
    outcomes = _train_all(params, records_dir, run_dir, run_id)
    decisions = [
        decide_champion(params.results_uri, arch, run_id, outcome.get("metrics", {}).get("miou"))
        for arch, outcome in outcomes.items()
    ] if params.promote_champions else []  # fmt: skip

    write_run_record(str(run_dir), run_id=run_id, flow_run_id=_flow_run_id(), parameters=parameters, data_root=data_root,
                     records_dir=records_dir, started_at=started_at, outcomes=outcomes, decisions=decisions)  # fmt: skip
    report_html = write_report(str(run_dir))
    run_uri = publish_run(str(run_dir), params.results_uri, run_id, params.keep_checkpoints)
    promoted = [
        decision["architecture"]
        for decision in decisions
        if promote_champion(params.results_uri, decision, _model_uri(run_uri, outcomes[decision["architecture"]], decision))
    ]
    finish_run(str(work_dir), parameters)
    return _final_state(run_id, run_uri, report_html, outcomes, promoted)


def _train_all(params: PipelineParams, records_dir: str, run_dir: Path, run_id: str) -> dict[str, dict]:
    """Run every architecture's training job: on the GPU pool all at once (its workers' limits
    start each as a slot frees), or here costliest first as slots free. Returns
    `{architecture: small result or {"error": "..."}}` in the order asked."""
    if params.training_deployment:
        records_uri = upload_folder(records_dir, storage.join(params.results_uri, "records", Path(records_dir).name))
        futures = {
            arch: train_on_deployment.submit(
                params.training_deployment.format(architecture=arch),
                arch,
                records_uri,
                storage.join(params.results_uri, "training", run_id, arch),
                params,
            )
            for arch in params.architectures
        }
    else:
        futures = _train_here(params, records_dir, run_dir)
    outcomes = {}
    for arch, future in futures.items():
        future.wait()
        if not future.state.is_completed():
            outcomes[arch] = {"error": f"training failed: {future.state.message}"}
            continue
        outcomes[arch] = future.result()
        if params.training_deployment:  # the report needs these small files of a run trained elsewhere
            download_files(outcomes[arch]["out_uri"], [CONFIG_FILE, HISTORY_FILE, METRICS_FILE, SAMPLES_DIR + "/"],
                           str(run_dir / arch))
    return outcomes


def _train_here(params: PipelineParams, records_dir: str, run_dir: Path) -> dict:
    """Start this machine's trainings costliest first (`training_pixels`), each as a training
    slot frees; the slots (Prefect's concurrency limit) still guard the GPUs against other flow
    runs. Returns `{architecture: future}` in the order asked."""
    size_training_limit(params.max_parallel_training)
    at_once = gpus.training_slots(params.max_parallel_training)
    count = len(params.architectures)
    position = {arch: f"{number}/{count}" for number, arch in enumerate(params.architectures, start=1)}
    order = sorted(params.architectures, key=lambda arch: -training_pixels(params.train_config(arch), records_dir))
    futures, running = {}, []
    for arch in order:
        if len(running) >= at_once:
            running.remove(next(as_completed(running)))
        futures[arch] = train_architecture.submit(arch, records_dir, str(run_dir / arch), params, position=position[arch])
        running.append(futures[arch])
    return {arch: futures[arch] for arch in params.architectures}


def _model_uri(run_uri: str, outcome: dict, decision: dict) -> str:
    """The published model of an architecture: in the run, or where its GPU-pool flow run left it."""
    return outcome.get("model_path") if "out_uri" in outcome else storage.join(run_uri, decision["architecture"], MODEL_FILE)


def _final_state(run_id, run_uri, report_html, outcomes, promoted):
    failed = {arch: outcome["error"] for arch, outcome in outcomes.items() if "error" in outcome}
    summary = {
        "run_id": run_id,
        "run_uri": run_uri,
        "report": storage.join(run_uri, "report", "report.html"),
        "local_report": report_html,
        "miou": {arch: (outcome.get("metrics") or {}).get("miou") for arch, outcome in outcomes.items()},
        "failed": failed,
        "promoted": promoted,
    }
    get_run_logger().info("report: %s", summary["report"])
    if len(failed) == len(outcomes):
        return Failed(message=f"every architecture failed: {_describe(failed)}", data=summary)
    if failed:
        return Completed(name="Partial", message=f"{len(failed)} of {len(outcomes)} failed: {_describe(failed)}", data=summary)
    return Completed(message=f"{len(outcomes)} architectures trained and evaluated", data=summary)


def _flow_run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


def _describe(failed: dict[str, str]) -> str:
    return "; ".join(f"{arch}: {error.splitlines()[0][:300]}" for arch, error in failed.items())
