"""Shared fixtures: real servers on 127.0.0.1 that tests talk to over HTTP, and one tiny synthetic
dataset with one tiny trained model, made once per session (training is the slow part)."""

import os
import subprocess
import uuid

import pytest
from servers import free_port, stop, tool, wait_for_http


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible HTTP server (moto's) for the whole session; yields its URL.

    Dummy AWS credentials are set for the session, so nothing can reach a real AWS account.
    """
    import boto3  # noqa: F401  (fail here, clearly, if boto3 is missing)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A new empty bucket on the session's S3 server, as `s3://name`; SEGFLOW_S3_ENDPOINT_URL points there."""
    import boto3

    monkeypatch.setenv("SEGFLOW_S3_ENDPOINT_URL", s3_endpoint)
    name = f"segflow-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(params=["s3", "local"])
def results_uri(request, tmp_path):
    """A results store: the same tests run against an S3 bucket and a local folder."""
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket") + "/results"
    return str(tmp_path / "results")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real `prefect server start` on localhost, API and UI, with its own empty PREFECT_HOME;
    yields (api_url, env), env being the environment for processes that talk to it.

    Of the background services only those that record what runs report run: the task-run
    recorder (task runs reach the server as events) and the event persister, and those a lost
    worker needs (tests/test_scale_out.py): the triggers of automations and the repossessor, which
    frees the concurrency slots of a killed holder. No scheduler, so a deployment's schedule never
    fires during the tests; a served runner polls for the runs created through the API itself.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_UI_API_URL=api,  # the UI's pages call this, not the default port 4200
    )
    for service in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS",
                    "CLEANUP_RECONCILER"):  # fmt: skip
        env[f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] = "false"
    server = subprocess.Popen(
        [tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_http(f"{api}/health", server, timeout_s=120)
        yield api, {**env, "PREFECT_API_URL": api}
    finally:
        stop(server)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """(Cityscapes root, records folder) of a 64x128 synthetic dataset: 8 train, 4 val, 2 test."""
    from training_run import synthetic_records

    return synthetic_records(tmp_path_factory)


@pytest.fixture(scope="session")
def records(synthetic_dataset):
    """The records folder of `synthetic_dataset`."""
    return synthetic_dataset[1]


@pytest.fixture(scope="session")
def trained_with_warnings(records, tmp_path_factory):
    """(TrainResult of `training_run.TINY_CONFIG` trained on `records`, the warnings it raised)."""
    from training_run import trained_run

    return trained_run(records, tmp_path_factory)


@pytest.fixture(scope="session")
def trained(trained_with_warnings):
    """The TrainResult of `training_run.TINY_CONFIG` trained on `records`."""
    return trained_with_warnings[0]


@pytest.fixture(scope="session")
def training_warnings(trained_with_warnings):
    """The Python warnings raised while `trained` trained."""
    return trained_with_warnings[1]


@pytest.fixture(scope="session")
def docker_engine():
    """The environment for `docker` commands on the opt-in tests' engine (tests/docker_images.py)."""
    from docker_images import engine

    with engine() as env:
        yield env


@pytest.fixture(scope="session")
def local_bases(docker_engine, tmp_path_factory):
    """Build arguments of docker/Dockerfile naming locally made bases (no registry needed)."""
    from docker_images import local_bases

    return local_bases(docker_engine, tmp_path_factory.mktemp("bases"))
