"""The scale-out layout run for real on one machine: a `prefect server start`, moto's S3 server as
the results store, a CPU and a "GPU" work pool of type `process` with one `prefect worker start`
each, the deployments registered by `segflow deploy --pool-type process`, the pipeline triggered
through the API. Also: `segflow deploy`'s checks of its input against a real server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from docker_images import docker_tests
from servers import REPO, api_json, stop, tail, tool, wait_for_flow_run

from segflow import storage
from segflow.config import demo_params
from segflow.run_files import METRICS_FILE

ARCHITECTURES = ["unet", "segnet"]
ARCHITECTURES_ALL = ["unet", "segnet", "icnet", "resnet", "deeplabv3plus"]  # infra/scale-out.yaml
# Smaller than the demo's models and data: these tests are about where trainings run, not what they learn.
TINY = dict(width=0.125, batch_size=4, synthetic_images=(16, 4))


def create_pools(api: str, names: list[str], pool_type: str = "process", templates: list[dict] | None = None) -> None:
    """What `prefect work-pool create NAME --type TYPE [--base-job-template FILE]` does, through
    the API of this process."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        for name, template in zip(names, templates or [{}] * len(names)):
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))


def deploy_process_pools(api: str, cpu_pool: str, gpu_pool: str, params) -> list:
    """`segflow deploy --pool-type process --cpu-pool CPU --gpu-pool GPU` with `params` as the
    pipeline's defaults, in this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segflow_prefect.flows.deploy import deploy_to_work_pools

    with temporary_settings({PREFECT_API_URL: api}):
        return deploy_to_work_pools(None, params=params, pool_type="process", cpu_pool=cpu_pool, gpu_pool=gpu_pool)


@contextlib.contextmanager
def worker(pool: str, env: dict, log_path: Path, limit: int, pool_type: str = "process"):
    """`prefect worker start --pool POOL --limit LIMIT` in its own process group (its flow runs
    and their training children inherit it); the whole group is killed afterwards."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [tool("prefect"), "worker", "start", "--pool", pool, "--type", pool_type, "--limit", str(limit)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        stop(process)


def worker_env(prefect_env: dict, s3_endpoint: str, tmp_path: Path) -> dict:
    """What the workers and `segflow deploy` run with: the Prefect server, moto's S3 server with
    the session's dummy credentials, this checkout on the path, INFO logs (the worker's log names
    each flow run it submits), a 2 s poll for runs, GPU lock files of this test."""
    return {
        **prefect_env,
        **{key: value for key, value in os.environ.items() if key.startswith("AWS_")},
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "SEGFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "SEGFLOW_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"),
    }


def flow_runs_in_pool(api: str, pool: str) -> list[dict]:
    return api_json(f"{api}/flow_runs/filter", {"work_pools": {"name": {"any_": [pool]}}})


def test_deploy_checks_its_input_before_registering(prefect_api):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segflow_prefect.flows.deploy import deploy_to_work_pools
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
    # The command: one line, exit code 1, before it contacts the server.
    from click.testing import CliRunner

    from segflow.cli import cli

    result = CliRunner().invoke(cli, ["deploy", "--pool-type", "docker"])
    assert (result.exit_code, result.output) == (1, "Error: --image is required for docker pools (the worker image built from docker/Dockerfile)\n")
    with temporary_settings({PREFECT_API_URL: api}):
        create_pools(api, [pool])
        for arguments, message in cases:
            with pytest.raises(SegflowError) as raised:
                deploy_to_work_pools(**arguments)
            assert str(raised.value) == message
        # Nothing was registered on the pool.
        assert api_json(f"{api}/deployments/filter", {"work_pools": {"name": {"any_": [pool]}}}) == []

        # The same deployments on process and docker pools; only the pool, the image and where
        # the code comes from differ.
        create_pools(api, [f"{pool}-docker"], "docker")
        registered = {}
        for pool_type, image, pool_name in (("process", None, pool), ("docker", "segflow:test", f"{pool}-docker")):
            params = demo_params(results_uri="s3://bucket/results")
            ids = deploy_to_work_pools(image, params=params, pool_type=pool_type, cpu_pool=pool_name, gpu_pool=pool_name)
            registered[pool_type] = [api_json(f"{api}/deployments/{deployment_id}") for deployment_id in ids]
    for pool_type, deployments in registered.items():
        assert [d["name"] for d in deployments] == [f"train-{arch}" for arch in ARCHITECTURES_ALL] + ["cityscapes-pipeline"]
        *trainings, pipeline = deployments
        assert {d["entrypoint"] for d in trainings} == {"segflow_prefect/flows/train_architecture.py:train_architecture_flow"}
        # Heartbeats every 30 s, so that the automation can tell a training whose worker died.
        assert all(d["job_variables"]["env"] == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"} for d in trainings)
        assert pipeline["entrypoint"] == "segflow_prefect/flows/pipeline.py:cityscapes_pipeline"
        assert pipeline["parameters"]["params"]["training_deployment"] == "train-architecture/train-{architecture}"
        assert pipeline["parameters"]["params"]["max_parallel_training"] == 5
        assert pipeline["parameters"]["params"]["results_uri"] == "s3://bucket/results"
    # One automation marks silent trainings Crashed (registered twice, kept once).
    automations = [a for a in api_json(f"{api}/automations/filter", {}) if a["name"] == "segflow: crash silent trainings"]
    assert len(automations) == 1 and automations[0]["enabled"]
    assert automations[0]["actions"] == [
        {"type": "change-flow-run-state", "name": "Crashed", "state": "CRASHED", "message": "no heartbeat for 90 s: its worker is gone",
         "force": False}
    ]
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
        **worker_env(prefect_env, s3_endpoint, tmp_path),
    }
    create_pools(api, [cpu_pool, gpu_pool])
    params = demo_params(architectures=ARCHITECTURES, epochs=1, steps_per_epoch=2, results_uri=s3_bucket, work_dir=str(work),
                         **TINY)  # fmt: skip
    assert len(deploy_process_pools(api, cpu_pool, gpu_pool, params)) == 6  # five trainings and the pipeline
    cpu_log, gpu_log = tmp_path / "cpu-worker.log", tmp_path / "gpu-worker.log"
    logs = lambda: f"CPU worker:\n{tail(cpu_log)}\nGPU worker:\n{tail(gpu_log)}"  # noqa: E731
    with (
        worker(cpu_pool, {**env, "SEGFLOW_GPU_IDS": ""}, cpu_log, limit=1),
        worker(gpu_pool, {**env, "SEGFLOW_GPU_IDS": "0,1"}, gpu_log, limit=2),
    ):
        deployment = api_json(f"{api}/deployments/name/cityscapes-pipeline/cityscapes-pipeline")
        pipeline = api_json(f"{api}/deployments/{deployment['id']}/create_flow_run", {})  # its defaults: `params`, 2 at once
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
    assert_published(s3_bucket, pipeline["id"])


def assert_published(s3_bucket: str, pipeline_id: str) -> None:
    """The run's report, run.json and latest.json are in the S3 store, every architecture completed."""
    latest = storage.read_json(storage.join(s3_bucket, "latest.json"))
    record = storage.read_json(storage.join(latest["uri"], "run.json"))
    assert record["flow_run_id"] == pipeline_id
    assert record["architectures"] == {arch: {"status": "completed", "error": None} for arch in ARCHITECTURES}
    report = storage.read_text(storage.join(latest["uri"], "report", "report.html"))
    assert all(arch in report for arch in ARCHITECTURES)


def stored_checkpoints(out_uri: str) -> list[str]:
    """The complete checkpoints of a run folder in the store (their checksums file comes last)."""
    return sorted(name.split("/")[0] for name in storage.list_files(storage.join(out_uri, "checkpoints"))
                  if name.startswith("step-") and name.endswith("/checksums.json"))  # fmt: skip


def wait_until(condition, timeout_s: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s\n{logs()}"
        time.sleep(1)


@pytest.mark.slow
def test_a_lost_gpu_worker_s_trainings_resume_on_another_from_the_store(prefect_api, s3_bucket, s3_endpoint, tmp_path):
    """SIGKILL the process group of the GPU worker running both trainings once each has a
    checkpoint in the store (its local disk is gone too): Prefect marks its flow runs Crashed
    (their processes lose the worker's control channel), the pipeline starts the deployments again, the
    second GPU worker runs them, each resumes from its stored checkpoint and ends after as many
    optimizer steps as an uninterrupted run; the pipeline ends Completed."""
    api, prefect_env = prefect_api
    suffix = uuid.uuid4().hex[:8]
    cpu_pool, gpu_pool = f"scale-cpu-{suffix}", f"scale-gpu-{suffix}"
    work = tmp_path / "work"
    env = {
        **worker_env(prefect_env, s3_endpoint, tmp_path),
        "SEGFLOW_GPU_IDS": "0,1",
    }
    create_pools(api, [cpu_pool, gpu_pool])
    steps = 40
    params = demo_params(
        architectures=ARCHITECTURES, epochs=1, steps_per_epoch=steps, checkpoint_every_steps=4, results_uri=s3_bucket,
        work_dir=str(work), **TINY,
    )  # fmt: skip
    deploy_process_pools(api, cpu_pool, gpu_pool, params)
    cpu_log, lost_log, spare_log = (tmp_path / f"{name}-worker.log" for name in ("cpu", "lost", "spare"))
    logs = lambda: "\n".join(f"{p.name}:\n{tail(p)}" for p in (cpu_log, lost_log, spare_log))  # noqa: E731
    with (
        worker(cpu_pool, {**env, "SEGFLOW_GPU_IDS": ""}, cpu_log, limit=1),
        worker(gpu_pool, env, lost_log, limit=2) as lost,
    ):
        deployment = api_json(f"{api}/deployments/name/cityscapes-pipeline/cityscapes-pipeline")
        pipeline = api_json(f"{api}/deployments/{deployment['id']}/create_flow_run", {})
        running = lambda: [run for run in flow_runs_in_pool(api, gpu_pool) if run["state_type"] == "RUNNING"]  # noqa: E731
        wait_until(lambda: len(running()) == 2, 600, "both trainings running on the first GPU worker", logs)
        with worker(gpu_pool, env, spare_log, limit=2):
            out_uris = {run["id"]: run["parameters"]["out_uri"] for run in running()}
            wait_until(lambda: all(stored_checkpoints(uri) for uri in out_uris.values()), 600, "a checkpoint of each in the store", logs)
            killed = {run["id"]: run for run in running()}
            assert killed, f"both trainings ended before a checkpoint reached the store: make `steps` larger\n{logs()}"
            stored_before = {run_id: stored_checkpoints(out_uris[run_id])[-1] for run_id in killed}
            os.killpg(lost.pid, signal.SIGKILL)
            lost.wait()
            # Each flow run process (its own session) loses its worker's control channel and
            # reports Crashed as it exits; its training child dies with it (PR_SET_PDEATHSIG).
            crashed = lambda: all(api_json(f"{api}/flow_runs/{run_id}")["state_type"] == "CRASHED" for run_id in killed)  # noqa: E731
            wait_until(crashed, 300, "the lost worker's flow runs Crashed", logs)
            time.sleep(2)
            for run_id in killed:  # the lost machine's disk: only the store is left
                shutil.rmtree(work / "remote" / hashlib.sha256(out_uris[run_id].encode()).hexdigest()[:16])
            finished = wait_for_flow_run(api, pipeline["id"], timeout_s=900, log_path=spare_log)
        trainings = flow_runs_in_pool(api, gpu_pool)

    assert finished["state_type"] == "COMPLETED", f"{finished['state_name']}: {finished['state']['message']}\n{logs()}"
    assert finished["state"]["message"] == "2 architectures trained and evaluated"
    by_id = {run["id"]: run for run in trainings}
    for run_id, run in killed.items():
        assert by_id[run_id]["state_type"] == "CRASHED", by_id[run_id]
        out_uri = out_uris[run_id]
        [retry] = [r for r in trainings if r["parameters"]["out_uri"] == out_uri and r["id"] != run_id]
        assert retry["state_type"] == "COMPLETED" and retry["id"] in spare_log.read_text(), retry
        # It resumed from the newest checkpoint in the store (at least the one there at the kill).
        [log_path] = work.glob(f"remote/*/{run['parameters']['architecture']}/train.log")
        text = log_path.read_text()
        [downloaded] = re.findall(r"downloaded checkpoint (step-\d+) from ", text)
        assert downloaded >= stored_before[run_id], (downloaded, stored_before[run_id])
        [resumed] = re.findall(r"resumed from step (\d+)", text)
        assert int(resumed) == int(downloaded.removeprefix("step-")) > 0
        history = storage.read_json(storage.join(out_uri, "history.json"))
        assert [(entry["step"], entry["optimizer_updates"]) for entry in history] == [(steps, steps)], history


# === Opt-in: the same scenario through Docker pools (SEGFLOW_DOCKER_TESTS=1, tests/docker_images.py) ===


def docker_pool_template(name: str, image: str, env: dict) -> dict:
    """infra/work-pools/NAME-docker.json with this machine's defaults: the test image (never
    pulled: there is no registry), the host's network (the containers reach the Prefect server and
    moto's S3 server on 127.0.0.1), the store's endpoint and dummy credentials in `env`, and no
    GPU request (no NVIDIA runtime here)."""
    template = json.loads((REPO / "infra" / "work-pools" / f"{name}-docker.json").read_text())
    variables = template["variables"]["properties"]
    variables["image"]["default"] = image
    variables["image_pull_policy"]["default"] = "Never"
    variables["network_mode"]["default"] = "host"
    variables["env"]["default"] = env
    variables["container_create_kwargs"]["default"] = None
    return template


@docker_tests
@pytest.mark.slow
def test_docker_pools_run_the_pipeline_and_each_training_in_its_own_container(
    prefect_api, s3_bucket, s3_endpoint, tmp_path, docker_engine, local_bases
):
    """`segflow deploy --pool-type docker --image IMAGE` onto Docker pools made from
    infra/work-pools/, one `prefect worker start --type docker` on each: the pipeline runs in a
    container of the CPU pool, each architecture's training in its own container of the GPU pool
    (CPU TensorFlow here), all from the image built from docker/Dockerfile."""
    from docker_images import build_image

    image = build_image("worker", local_bases, docker_engine, tmp_path)
    api, prefect_env = prefect_api
    suffix = uuid.uuid4().hex[:8]
    cpu_pool, gpu_pool = f"docker-cpu-{suffix}", f"docker-gpu-{suffix}"
    container_env = {
        **{key: os.environ[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
        "SEGFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "SEGFLOW_GPU_IDS": "",
    }
    create_pools(api, [cpu_pool, gpu_pool], "docker",
                 [docker_pool_template(name, image, container_env) for name in ("segflow-cpu", "segflow-gpu")])  # fmt: skip
    # The containers' user (10001) owns /data; nothing of theirs lands on this machine's disk.
    params = demo_params(architectures=ARCHITECTURES, epochs=1, steps_per_epoch=2, results_uri=s3_bucket, work_dir="/data/work")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segflow_prefect.flows.deploy import deploy_to_work_pools

    with temporary_settings({PREFECT_API_URL: api}):
        ids = deploy_to_work_pools(image, params=params, pool_type="docker", cpu_pool=cpu_pool, gpu_pool=gpu_pool)
    assert len(ids) == 6
    env = {
        **prefect_env,
        "DOCKER_HOST": docker_engine["DOCKER_HOST"],
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    cpu_log, gpu_log = tmp_path / "cpu-worker.log", tmp_path / "gpu-worker.log"
    logs = lambda: f"CPU worker:\n{tail(cpu_log)}\nGPU worker:\n{tail(gpu_log)}"  # noqa: E731
    started = time.monotonic()
    with (
        worker(cpu_pool, env, cpu_log, limit=1, pool_type="docker"),
        worker(gpu_pool, env, gpu_log, limit=2, pool_type="docker"),
    ):
        deployment = api_json(f"{api}/deployments/name/cityscapes-pipeline/cityscapes-pipeline")
        pipeline = api_json(f"{api}/deployments/{deployment['id']}/create_flow_run", {})
        finished = wait_for_flow_run(api, pipeline["id"], timeout_s=1800, log_path=gpu_log)
        assert finished["state_type"] == "COMPLETED", f"{finished['state_name']}: {finished['state']['message']}\n{logs()}"
        trainings = flow_runs_in_pool(api, gpu_pool)
    print(f"Docker pools: pipeline run of {len(ARCHITECTURES)} architectures in {time.monotonic() - started:.0f} s")

    assert finished["work_pool_name"] == cpu_pool
    assert finished["state"]["message"] == "2 architectures trained and evaluated"
    assert sorted(run["parameters"]["architecture"] for run in trainings) == sorted(ARCHITECTURES)
    assert all(run["state_type"] == "COMPLETED" for run in trainings), trainings
    first, second = sorted(trainings, key=lambda run: run["start_time"])
    assert second["start_time"] < first["end_time"], "the two trainings did not overlap"
    # Each flow run ran in its own container of the image, on the host's network, started by its
    # pool's worker (whose log streams the container's output).
    containers = {}
    for run, log in [(finished, cpu_log)] + [(run, gpu_log) for run in trainings]:
        container_id = run["infrastructure_pid"].rsplit(":", 1)[1]
        inspected = json.loads(subprocess.run(["docker", "inspect", container_id], env=docker_engine, capture_output=True,
                                              text=True, check=True).stdout)[0]  # fmt: skip
        containers[run["id"]] = container_id
        assert inspected["Config"]["Image"] == image and inspected["HostConfig"]["NetworkMode"] == "host", inspected["Config"]
        assert inspected["State"]["ExitCode"] == 0 and inspected["Config"]["User"] == "10001:10001"
        assert run["id"] in log.read_text()
    assert len(set(containers.values())) == 3
    assert pipeline["id"] not in gpu_log.read_text()
    for run in trainings:
        assert run["id"] not in cpu_log.read_text()
        metrics = storage.read_json(storage.join(run["parameters"]["out_uri"], METRICS_FILE))
        assert 0.0 <= metrics["miou"] <= 1.0 and metrics["num_images"] == 4, metrics
    assert_published(s3_bucket, pipeline["id"])
    subprocess.run(["docker", "rm", "--force", *containers.values()], env=docker_engine, capture_output=True)
