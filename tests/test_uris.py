"""Locations are checked when the parameters are read, and credentials inside URLs never leave
the request that needs them (segflow/uris.py and its callers)."""

import base64
import io
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from segflow import download, storage, uris
from segflow.cli import cli
from segflow.config import demo_params, train_config
from segflow.errors import SegflowError

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://", "results_uri: 's3://' has no bucket"),
        ("s3:///prefix", "results_uri: 's3:///prefix' has no bucket"),
        ("s3:bucket/x", "results_uri: 's3:bucket/x' is malformed"),
        ("gs://bucket/x", "results_uri: unsupported scheme gs://"),
        ("s3://Bad_Bucket/x", "results_uri: 'Bad_Bucket' .* is not an S3 bucket name"),
        ("https://host/x", "results_uri: 'https://host/x' is a web URL, expected a local folder"),
        ("  ", "results_uri: empty"),
    ],
)
def test_a_malformed_results_uri_is_refused_when_the_parameters_are_read(uri, message):
    with pytest.raises(SegflowError, match=message):
        demo_params(results_uri=uri)


@pytest.mark.parametrize("uri", ["s3://my-bucket", "s3://my-bucket/a/b/", "results", "/abs/results", "file:///abs/r"])
def test_well_formed_locations_pass_unchanged(uri):
    assert demo_params(results_uri=uri).results_uri == uri


@pytest.mark.parametrize(
    ("source", "message"),
    [("ftp://host/x", "unsupported scheme ftp://"), ("https:///x", "has no host"), ("s3://", "has no bucket"),
     ("cityscapes+ftp://h", "is a local folder|unsupported scheme")],
)  # fmt: skip
def test_a_malformed_source_is_refused_when_the_parameters_are_read(source, message):
    with pytest.raises(SegflowError, match=f"source: .*({message})"):
        demo_params(source=source)


def test_a_work_dir_must_be_local():
    with pytest.raises(SegflowError, match="work_dir: 's3://b/w' is an S3 URI, expected a local folder"):
        demo_params(work_dir="s3://b/w")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["demo", "--results", "s3://"], "--results: 's3://' has no bucket"),
        (["demo", "--results", "s3:///prefix"], "--results: 's3:///prefix' has no bucket"),
        (["report", "--runs", "s3:///x", "--out", "r"], "--runs: 's3:///x' has no bucket"),
        (["download", "--source", "ftp://h/x"], "--source: unsupported scheme ftp://"),
        (["train", "--arch", "unet", "--records", "s3://b/r", "--out", "o"], "--records: .* is malformed"),
    ],
)
def test_commands_refuse_a_malformed_location_before_any_work(arguments, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2 and result.exception.__class__ is SystemExit
    assert pytest.importorskip("re").search(message, result.output), result.output
    assert list(tmp_path.iterdir()) == []  # nothing written: no `s3:` folder


def test_a_source_with_credentials_is_shown_and_stored_without_them():
    params = demo_params(source=f"https://alice:{SECRET}@mirror.example/cs/")

    assert params.source == "https://***@mirror.example/cs/"
    for text in (repr(params), params.model_dump_json(), str(params.model_dump())):
        assert SECRET not in text and "alice" not in text
    assert uris.reveal(params.source) == f"https://alice:{SECRET}@mirror.example/cs/"  # only where the request is made
    assert uris.reveal("https://plain.example/x") == "https://plain.example/x"


def test_credentials_unknown_to_a_process_are_an_error_or_come_from_the_environment(monkeypatch):
    hidden = "https://***@elsewhere.example/cs"
    with pytest.raises(SegflowError, match=r"credentials of https://\*\*\*@elsewhere.example/cs are not known"):
        uris.reveal(hidden)
    monkeypatch.setenv("SEGFLOW_SOURCE", f"https://bob:{SECRET}@elsewhere.example/cs")
    assert uris.reveal(hidden) == f"https://bob:{SECRET}@elsewhere.example/cs"
    # The environment's URL is another one: its credentials are not handed to this URL.
    with pytest.raises(SegflowError, match=r"set SEGFLOW_SOURCE to the URL with its user:password@ on this worker$"):
        uris.reveal("https://***@other.example/cs")


def test_redact_removes_every_userinfo_from_a_text():
    text = f'Could not connect to "http://user:{SECRET}@10.0.0.1:9000/b?x" nor https://tok@h/p'
    assert uris.redact(text) == 'Could not connect to "http://***@10.0.0.1:9000/b?x" nor https://***@h/p'


def test_an_endpoint_with_credentials_never_appears_in_an_error(monkeypatch):
    monkeypatch.setenv("SEGFLOW_S3_ENDPOINT_URL", f"http://user:{SECRET}@127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(SegflowError) as raised:
        storage.read_text("s3://some-bucket/x.json")
    assert "cannot reach the S3 endpoint" in str(raised.value) and SECRET not in str(raised.value)
    assert uris.endpoint_from_env() == "http://127.0.0.1:1"


def test_a_malformed_endpoint_names_its_variable_when_an_s3_location_is_read(monkeypatch):
    monkeypatch.setenv("SEGFLOW_S3_ENDPOINT_URL", "minio:9000")
    message = "SEGFLOW_S3_ENDPOINT_URL: 'minio:9000' is a local folder, expected http"
    with pytest.raises(SegflowError, match=message):
        demo_params(results_uri="s3://my-bucket/results")
    with pytest.raises(SegflowError, match=message):
        storage.read_text("s3://my-bucket/x.json")
    assert demo_params(results_uri="local-results").results_uri == "local-results"


@pytest.fixture
def private_folder(tmp_path):
    """A web folder on 127.0.0.1 that answers only requests with basic auth alice:SECRET; yields
    (its URL with the credentials, the folder it serves)."""
    folder = tmp_path / "served"
    folder.mkdir()
    expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def send_head(self):
            if self.headers.get("Authorization") != expected:
                self.send_error(401, "Unauthorized")
                return None
            return super().send_head()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://alice:{SECRET}@127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()
    server.server_close()


def test_a_credentialed_web_folder_is_fetched_with_basic_auth_and_errors_hide_the_password(private_folder, tmp_path):
    url, folder = private_folder
    (folder / "a.zip").write_bytes(b"zip bytes")
    params = demo_params(source=url)

    [fetched] = download.fetch_packages(params.source, tmp_path / "dest", ["a.zip"])
    assert fetched.read_bytes() == b"zip bytes"
    with pytest.raises(SegflowError) as missing:
        download.fetch_packages(params.source, tmp_path / "dest", ["b.zip"])
    with pytest.raises(SegflowError) as refused:
        download.fetch_packages(url.replace(SECRET, "wrong"), tmp_path / "dest", ["a.zip"])
    with pytest.raises(SegflowError) as unreachable:
        download.fetch_packages("http://alice:" + SECRET + "@127.0.0.1:1/", tmp_path, ["a.zip"],
                                retry=download.RetryPolicy(attempts=1))  # fmt: skip
    assert "HTTP 404" in str(missing.value) and "HTTP 401" in str(refused.value)
    for error in (missing, refused, unreachable):
        assert SECRET not in str(error.value) and "wrong" not in str(error.value)


# === Settings: the setting, the value and the expected form ===


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"image_size": [64]}, r"image_size: \[64\] is not valid; expected \[HEIGHT, WIDTH\]"),
        ({"scale_range": [1.0]}, r"scale_range: \[1.0\] is not valid; expected \[MIN, MAX\]"),
        ({"epochs": True}, "epochs: True is a boolean, not a number"),
        ({"learning_rate": False}, "learning_rate: False is a boolean, not a number"),
        ({"image_size": [True, 64]}, r"image_size: \[True, 64\] is a boolean"),
    ],
)
def test_a_config_error_names_the_setting_the_value_and_the_form(settings, message, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps({"architecture": "unet", **settings}))
    with pytest.raises(SegflowError, match=message):
        train_config(path)


def test_booleans_are_still_booleans():
    assert train_config(architecture="unet", class_weights=True, epochs=3).class_weights is True
    with pytest.raises(ValidationError, match="epochs\n.*True is a boolean, not a number"):
        demo_params(epochs=True)


# === The whole pipeline: the secret is nowhere ===


@pytest.mark.slow
def test_pipeline_with_a_credentialed_source_and_endpoint_leaks_the_secrets_nowhere(
    private_folder, s3_bucket, s3_endpoint, tmp_path, monkeypatch, capfd
):
    import os

    import boto3
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    from segflow import synthetic

    url, folder = private_folder
    synthetic.write_dataset(tmp_path / "synthetic", train=6, val=2, test=1, height=64, width=128, zips=True)
    for name in ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"):
        (tmp_path / "synthetic" / name).rename(folder / name)
    endpoint_secret = "endpoint-" + SECRET
    monkeypatch.setenv("SEGFLOW_S3_ENDPOINT_URL", s3_endpoint.replace("http://", f"http://keeper:{endpoint_secret}@"))
    params = demo_params(
        source=url, results_uri=f"{s3_bucket}/results", work_dir=str(tmp_path / "work"), architectures=["unet"],
        epochs=1, steps_per_epoch=2, batch_size=2, checkpoint_every_steps=1,
    )  # fmt: skip

    # Prefect's console handler keeps the stream it was built with, which is pytest's global capture when an
    # earlier test set logging up, so capfd alone can miss the run's log lines: take them from the logger too.
    console = io.StringIO()
    console_handler = logging.StreamHandler(console)
    console_handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
    prefect_logger = logging.getLogger("prefect")
    prefect_logger.addHandler(console_handler)
    with prefect_test_harness(server_startup_timeout=180):
        database = get_current_settings().server.database.connection_url.get_secret_value()
        from segflow_prefect.flows.pipeline import cityscapes_pipeline

        try:
            state = cityscapes_pipeline(params, return_state=True)
        finally:
            prefect_logger.removeHandler(console_handler)
        assert state.is_completed(), state.message
        summary = state.result()
        assert summary["miou"]["unet"] is not None  # the data really came through the authenticated folder
        database_dir = os.path.dirname(database.split("///", 1)[1])
        database_bytes = b"".join(
            open(os.path.join(database_dir, name), "rb").read() for name in os.listdir(database_dir)
            if os.path.isfile(os.path.join(database_dir, name))
        )  # fmt: skip

    captured = capfd.readouterr()
    terminal = (captured.out + captured.err + console.getvalue()).encode()
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = s3_bucket.removeprefix("s3://")
    published = b"".join(
        client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in client.list_objects_v2(Bucket=bucket)["Contents"]
    )
    work_files = b"".join(path.read_bytes() for path in (tmp_path / "work").rglob("*") if path.is_file())
    assert len(published) > 0 and len(work_files) > 0 and len(database_bytes) > 0
    shown = b"http://***@127.0.0.1"  # the run name and parameters are there, in their shown form
    assert shown in database_bytes and shown in published and shown in terminal
    for secret in (SECRET, endpoint_secret):
        for place, blob in [("terminal", terminal), ("results", published),
                            ("work folder", work_files), ("Prefect database", database_bytes)]:  # fmt: skip
            assert secret.encode() not in blob, f"{secret} found in the {place}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("https:/host/x", r"'https:/host/x' is malformed; expected https://\.\.\."),
        ("https://", r"'https://' has no host; expected https://host/path"),
        ("file://otherhost/data", r"'file://otherhost/data' names no folder"),  # another machine's folder
        ("file://", r"'file://' names no folder"),
    ],
)
def test_a_malformed_location_is_named_with_the_form_expected(text, message):
    with pytest.raises(SegflowError, match=rf"^data: {message}"):
        uris.check(text, "data", kinds=("local", "http"))


@pytest.mark.parametrize(
    "text, kinds, message",
    [
        (
            "s3://bucket",
            ("local", "http"),
            "is an S3 URI, expected a local folder (or file:///folder) or http(s)://host/path",
        ),
        ("/data", ("s3", "http"), "is a local folder, expected s3://bucket/prefix or http(s)://host/path"),
    ],
)
def test_a_location_of_the_wrong_kind_is_named_with_the_kinds_accepted(text, kinds, message):
    with pytest.raises(SegflowError) as raised:
        uris.check(text, "data", kinds=kinds)
    assert str(raised.value) == f"data: {text!r} {message}"


def test_a_source_is_a_name_a_cityscapes_login_url_or_a_location_with_its_credentials_hidden(tmp_path):
    assert uris.check_source(" synthetic ") == "synthetic"
    login = f"cityscapes+https://alice:{SECRET}@www.cityscapes-dataset.com"
    assert uris.check_source(login) == "cityscapes+https://***@www.cityscapes-dataset.com"
    assert uris.reveal("cityscapes+https://***@www.cityscapes-dataset.com") == login
    assert uris.check_source(str(tmp_path)) == str(tmp_path)
    with pytest.raises(SegflowError) as raised:
        uris.check_source("cityscapes+s3://bucket")  # the login form takes a web URL only
    assert str(raised.value) == "source: 's3://bucket' is an S3 URI, expected http(s)://host/path"


def test_a_file_url_on_this_machine_is_a_local_folder():
    for text in ("file:///data", "file://localhost/data"):
        assert uris.check(text, "data", kinds=("local",)) == text
