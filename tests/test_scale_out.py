"""The scale-out layout run for real on one machine: a `prefect server start`, moto's S3 server as
the results store, a CPU and a "GPU" work pool of type `process` with one `prefect worker start`
each, the deployments registered by `segflow deploy --pool-type process`, the pipeline triggered
through the API. Also: `segflow deploy`'s checks of its input against a real server."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from servers import REPO, api_json, stop, tail, tool, wait_for_flow_run

from segflow import storage
from segflow.config import demo_params
from segflow.run_files import METRICS_FILE

ARCHITECTURES = ["unet", "segnet"]
ARCHITECTURES_ALL = ["unet", "segnet", "icnet", "resnet", "deeplabv3plus"]  # infra/scale-out.yaml


def create_pool(name: str, pool_type: str, env: dict) -> None:
    subprocess.run([tool("prefect"), "work-pool", "create", name, "--type", pool_type], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip


@contextlib.contextmanager
def worker(pool: str, env: dict, log_path: Path, limit: int):
    """`prefect worker start --pool POOL --limit LIMIT` in its own process group (its flow runs
    and their training children inherit it); the whole group is killed afterwards."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [tool("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--limit", str(limit)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        stop(process)


def flow_runs_in_pool(api: str, pool: str) -> list[dict]:
    return api_json(f"{api}/flow_runs/filter", {"work_pools": {"name": {"any_": [pool]}}})


def test_deploy_checks_its_input_before_registering(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import deploy_to_work_pools
    from segflow.errors import SegflowError

    api, _ = prefect_api
    pool = f"scale-check-{uuid.uuid4().hex[:8]}"
    cases = [  # (arguments, the one error)
        (dict(image=None, pool_type="process", cpu_pool=pool, gpu_pool=f"{pool}-gpu"),
         f"work pool '{pool}-gpu' does not exist; create it: prefect work-pool create {pool}-gpu --type process"),
        (dict(image="segflow:test", pool_type="docker", cpu_pool=pool, gpu_pool=pool),
         f"work pool '{pool}' is of type 'process', not 'docker'"),
        (dict(image=None, pool_type="kubernetes"),
         "--image is required for kubernetes pools (the worker image built from docker/Dockerfile)"),
        (dict(image="segflow:test", pool_type="process", cpu_pool=pool, gpu_pool=pool),
         "--image 'segflow:test' does not apply to process pools: they run the flows from " + str(REPO)),
        (dict(image="segflow:test", pool_type="lambda"), "pool type must be one of process, docker, kubernetes; got 'lambda'"),
    ]  # fmt: skip
    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        for arguments, message in cases:
            with pytest.raises(SegflowError) as raised:
                deploy_to_work_pools(**arguments)
            assert str(raised.value) == message
        # Nothing was registered on the pool.
        assert api_json(f"{api}/deployments/filter", {"work_pools": {"name": {"any_": [pool]}}}) == []

        # The same deployments on process and docker pools; only the pool, the image and where
        # the code comes from differ.
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=f"{pool}-docker", type="docker"))
        registered = {}
        for pool_type, image, pool_name in (("process", None, pool), ("docker", "segflow:test", f"{pool}-docker")):
            params = demo_params(results_uri="s3://bucket/results")
            ids = deploy_to_work_pools(image, params=params, pool_type=pool_type, cpu_pool=pool_name, gpu_pool=pool_name)
            registered[pool_type] = [api_json(f"{api}/deployments/{deployment_id}") for deployment_id in ids]
    for pool_type, deployments in registered.items():
        assert [d["name"] for d in deployments] == [f"train-{arch}" for arch in ARCHITECTURES_ALL] + ["cityscapes-pipeline"]
        *trainings, pipeline = deployments
        assert {d["entrypoint"] for d in trainings} == {"flows/train_architecture.py:train_architecture_flow"}
        assert pipeline["entrypoint"] == "flows/pipeline.py:cityscapes_pipeline"
        assert pipeline["parameters"]["params"]["training_deployment"] == "train-architecture/train-{architecture}"
        assert pipeline["parameters"]["params"]["max_parallel_training"] == 5
        assert pipeline["parameters"]["params"]["results_uri"] == "s3://bucket/results"
    for deployment in registered["process"]:
        assert deployment["work_pool_name"] == pool and "image" not in deployment["job_variables"]
        assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    for deployment in registered["docker"]:
        assert deployment["work_pool_name"] == f"{pool}-docker" and deployment["job_variables"]["image"] == "segflow:test"
        assert not deployment["pull_steps"]


@pytest.mark.slow
def test_workers_run_the_pipeline_and_each_training_on_its_own_gpu(prefect_api, s3_bucket, s3_endpoint, tmp_path):
    api, prefect_env = prefect_api
    suffix = uuid.uuid4().hex[:8]
    cpu_pool, gpu_pool = f"scale-cpu-{suffix}", f"scale-gpu-{suffix}"
    work = tmp_path / "work"
    env = {
        **prefect_env,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "SEGFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "SEGFLOW_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"),
        "SEGFLOW_DEMO": "1",
        "SEGFLOW_RESULTS_URI": s3_bucket,
        "SEGFLOW_WORK_DIR": str(work),
    }
    for pool in (cpu_pool, gpu_pool):
        create_pool(pool, "process", env)
    registered = subprocess.run(
        [tool("segflow"), "deploy", "--pool-type", "process", "--cpu-pool", cpu_pool, "--gpu-pool", gpu_pool],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    assert len(registered.stdout.split()) == 6  # five trainings and the pipeline

    params = demo_params(
        architectures=ARCHITECTURES, epochs=1, steps_per_epoch=2, results_uri=s3_bucket, work_dir=str(work),
        training_deployment="train-architecture/train-{architecture}", max_parallel_training=2,
    )  # fmt: skip
    cpu_log, gpu_log = tmp_path / "cpu-worker.log", tmp_path / "gpu-worker.log"
    logs = lambda: f"CPU worker:\n{tail(cpu_log)}\nGPU worker:\n{tail(gpu_log)}"  # noqa: E731
    with (
        worker(cpu_pool, {**env, "SEGFLOW_GPU_IDS": ""}, cpu_log, limit=1),
        worker(gpu_pool, {**env, "SEGFLOW_GPU_IDS": "0,1"}, gpu_log, limit=2),
    ):
        deployment = api_json(f"{api}/deployments/name/cityscapes-pipeline/cityscapes-pipeline")
        pipeline = api_json(f"{api}/deployments/{deployment['id']}/create_flow_run", {"parameters": {"params": params.model_dump(mode="json")}})
        finished = wait_for_flow_run(api, pipeline["id"], timeout_s=900, log_path=gpu_log)
        assert finished["state_type"] == "COMPLETED", f"{finished['state_name']}: {finished['state']['message']}\n{logs()}"
        trainings = flow_runs_in_pool(api, gpu_pool)

    assert finished["work_pool_name"] == cpu_pool
    assert finished["state"]["message"] == "2 architectures trained and evaluated"
    # The pipeline ran on the CPU worker; each architecture trained as its own flow run on the GPU worker.
    assert pipeline["id"] in cpu_log.read_text() and pipeline["id"] not in gpu_log.read_text()
    assert sorted(run["parameters"]["architecture"] for run in trainings) == sorted(ARCHITECTURES)
    for run in trainings:
        assert run["state_type"] == "COMPLETED" and run["deployment_id"] != deployment["id"], run
        assert run["id"] in gpu_log.read_text() and run["id"] not in cpu_log.read_text()
    # ... at the same time, each with its own GPU (the training child's CUDA_VISIBLE_DEVICES).
    first, second = sorted(trainings, key=lambda run: run["start_time"])
    assert second["start_time"] < first["end_time"], "the two trainings did not overlap"
    visible = {}
    for run in trainings:
        out_uri = run["parameters"]["out_uri"]
        [log_path] = work.glob(f"remote/*/{run['parameters']['architecture']}/train.log")
        [visible[run["parameters"]["architecture"]]] = re.findall(r"CUDA_VISIBLE_DEVICES=(\S+)", log_path.read_text())
        # Evaluation results are in the store beside the training.
        metrics = storage.read_json(storage.join(out_uri, METRICS_FILE))
        assert 0.0 <= metrics["miou"] <= 1.0 and metrics["num_images"] == 4, metrics
    assert sorted(visible.values()) == ["0", "1"], visible
    # The report and latest.json are in the S3 store.
    latest = storage.read_json(storage.join(s3_bucket, "latest.json"))
    record = storage.read_json(storage.join(latest["uri"], "run.json"))
    assert record["flow_run_id"] == pipeline["id"]
    assert record["architectures"] == {arch: {"status": "completed", "error": None} for arch in ARCHITECTURES}
    report = storage.read_text(storage.join(latest["uri"], "report", "report.html"))
    assert all(arch in report for arch in ARCHITECTURES)
