"""The pipeline flow end to end on Prefect's real (ephemeral) API, real training processes and a
real S3-compatible server: publishing, caching, retries that resume, and partial failure."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from segflow import champion, storage
from segflow.config import demo_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def tiny_params(tmp_path: Path, results_uri: str, **overrides):
    values = dict(
        work_dir=str(tmp_path / "work"),
        results_uri=results_uri,
        synthetic_images=(6, 2),
        epochs=2,
        steps_per_epoch=3,
        batch_size=2,
        checkpoint_every_steps=1,
    )
    return demo_params(**{**values, **overrides})


def task_states(flow_run_id) -> dict[str, str]:
    """{task run name: final state name} of one flow run, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                limit=200,
            )
            return {run.name: run.state.name for run in runs}

    return asyncio.run(read())


def test_pipeline_publishes_to_s3_and_a_second_run_hits_the_caches(prefect_harness, s3_bucket, tmp_path):
    from flows.pipeline import cityscapes_pipeline

    results_uri = f"{s3_bucket}/results"
    params = tiny_params(tmp_path, results_uri, architectures=["unet"])

    first = cityscapes_pipeline(params, return_state=True)
    assert first.is_completed() and first.name == "Completed", first.message
    summary = first.result()
    assert set(summary["miou"]) == {"unet"} and not summary["failed"]

    latest = storage.latest_run(results_uri)
    assert latest["run_id"] == summary["run_id"]
    published = set(storage.list_files(latest["uri"]))
    for arch in ("unet",):
        for name in ("metrics.json", "history.json", "model.keras", "config.json"):
            assert f"{arch}/{name}" in published
        assert any(name.startswith(f"{arch}/checkpoints/") for name in published)
        assert any(name.startswith(f"{arch}/tensorboard/") for name in published)
        metrics = storage.read_json(storage.join(latest["uri"], arch, "metrics.json"))
        assert metrics["miou"] == pytest.approx(summary["miou"][arch])
        assert champion.current_champion(results_uri, arch)["run_id"] == summary["run_id"]
    for name in ("report.html", "report.json", "report.md"):
        assert f"report/{name}" in published
    assert storage.read_json(storage.join(latest["uri"], "run.json"))["data"]["synthetic"] is True

    records_manifest = next((tmp_path / "work" / "records").glob("*/manifest.json"))
    converted_at = records_manifest.stat().st_mtime_ns
    second = cityscapes_pipeline(params, return_state=True)
    assert second.is_completed(), second.message
    states = task_states(second.state_details.flow_run_id)
    assert states[next(name for name in states if name.startswith("get data"))] == "Cached"
    assert states[next(name for name in states if name.startswith("convert_records"))] == "Cached"
    assert records_manifest.stat().st_mtime_ns == converted_at
    # The nightly rule: the newer run becomes champion only if it is strictly better.
    again = second.result()
    for arch in ("unet",):
        expected = again["run_id"] if again["miou"][arch] > summary["miou"][arch] else summary["run_id"]
        assert champion.current_champion(results_uri, arch)["run_id"] == expected
    assert storage.latest_run(results_uri)["run_id"] == again["run_id"]


class TrainingKiller(threading.Thread):
    """Kills an architecture's training process (SIGKILL) once it has written a checkpoint, as a
    preempted GPU node would: `times[arch]` kills, each of a new process."""

    def __init__(self, runs_dir: Path, times: dict[str, int]):
        super().__init__(daemon=True)
        self.runs_dir, self.times, self.killed = runs_dir, dict(times), {arch: [] for arch in times}
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            for arch, remaining in self.times.items():
                if len(self.killed[arch]) >= remaining:
                    continue
                for out_dir in self.runs_dir.glob(f"*/{arch}"):
                    pid_file = out_dir / "train.pid"
                    if not pid_file.is_file() or not list((out_dir / "checkpoints").glob("step-*")):
                        continue
                    pid = int(pid_file.read_text())
                    step = max(int(path.name.split("-")[1]) for path in (out_dir / "checkpoints").glob("step-*"))
                    if pid in [killed_pid for killed_pid, _ in self.killed[arch]] or step < 1:
                        continue
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed[arch].append((pid, step))
            time.sleep(0.05)


def test_killed_training_retries_and_resumes_and_a_failed_architecture_leaves_a_partial_run(
    prefect_harness, tmp_path, monkeypatch
):
    import flows.pipeline as pipeline

    monkeypatch.setattr(pipeline, "train_architecture", pipeline.train_architecture.with_options(retries=1, retry_delay_seconds=0))
    params = tiny_params(tmp_path, str(tmp_path / "results"), architectures=["unet", "segnet"], epochs=2, steps_per_epoch=4)
    killer = TrainingKiller(tmp_path / "work" / "runs", {"unet": 1, "segnet": 2})
    killer.start()
    try:
        state = pipeline.cityscapes_pipeline(params, return_state=True)
    finally:
        killer.stopped.set()
        killer.join()

    assert state.is_completed() and state.name == "Partial", state.message
    assert "segnet" in state.message and "unet" not in state.message
    summary = state.result()
    assert summary["miou"]["unet"] is not None and summary["miou"]["segnet"] is None
    assert len(killer.killed["unet"]) == 1 and len(killer.killed["segnet"]) == 2

    run_dir = tmp_path / "work" / "runs" / summary["run_id"]
    # The retry resumed from the checkpoint: the interrupted epoch was finished with only its
    # remaining steps, and the run ended after exactly epochs × steps_per_epoch optimizer steps.
    history = storage.read_json(str(run_dir / "unet" / "history.json"))
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[-1]["step"] == 8
    killed_at_step = killer.killed["unet"][0][1]
    log = (run_dir / "unet" / "train.log").read_text()
    assert log.count("=== ") == 2  # two processes: the killed one and the retry
    resumed_from = int(re.search(r"resumed from step (\d+)", log).group(1))
    assert killed_at_step <= resumed_from < 8

    report = (tmp_path / "results" / "runs" / summary["run_id"] / "report" / "report.html").read_text()
    assert "segnet" in report and "failed" in report.lower()
    run_record = storage.read_json(str(run_dir / "run.json"))
    assert run_record["architectures"]["segnet"]["status"] == "failed"
    assert run_record["architectures"]["unet"]["status"] == "completed"


def test_training_flow_for_a_gpu_pool_reads_and_writes_only_the_results_store(prefect_harness, s3_bucket, tmp_path):
    from flows.train_architecture import train_architecture_flow
    from segflow.convert import convert
    from segflow.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", train=4, val=2, test=1, height=64, width=128)
    convert(data, tmp_path / "records", workers=1, progress=False)
    records_uri = storage.join(s3_bucket, "results", "records", "r1")
    storage.upload_dir(tmp_path / "records", records_uri)
    out_uri = storage.join(s3_bucket, "results", "training", "run-1", "unet")
    params = tiny_params(tmp_path / "gpu-worker", s3_bucket, architectures=["unet"], epochs=1, steps_per_epoch=2)

    assert train_architecture_flow("unet", records_uri, out_uri, params) == out_uri
    uploaded = set(storage.list_files(out_uri))
    assert {"model.keras", "history.json", "config.json"} <= uploaded
    assert any(name.startswith("checkpoints/step-") for name in uploaded)
    assert storage.read_json(storage.join(out_uri, "history.json"))[-1]["step"] == 2
