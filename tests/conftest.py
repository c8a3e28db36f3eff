"""Shared fixtures: real servers on 127.0.0.1 that tests talk to over HTTP."""

import uuid

import pytest


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
