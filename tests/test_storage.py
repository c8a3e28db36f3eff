"""segflow.storage against a real S3-compatible HTTP server (moto) and local folders."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest

from segflow import storage
from segflow.errors import SegflowError


def make_run(folder, files):
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def test_upload_and_download_file_round_trip(results_uri, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(1000))
    uri = storage.join(results_uri, "model", "weights.bin")

    assert storage.upload_file(source, uri) == uri
    copy = storage.download_file(uri, tmp_path / "copy" / "weights.bin")

    assert copy.read_bytes() == source.read_bytes()
    assert storage.exists(uri) and storage.exists(storage.join(results_uri, "model"))
    assert not storage.exists(storage.join(results_uri, "nothing-here"))


def test_folders_round_trip_and_list(results_uri, tmp_path):
    make_run(tmp_path / "run", {"report.html": "<html/>", "metrics/unet.json": "{}", "logs/a/b.txt": "x"})

    uris = storage.upload_dir(tmp_path / "run", storage.join(results_uri, "copy"))
    listed = storage.list_files(storage.join(results_uri, "copy"))
    storage.download_dir(storage.join(results_uri, "copy"), tmp_path / "back")

    assert len(uris) == 3
    assert listed == ["logs/a/b.txt", "metrics/unet.json", "report.html"]
    assert (tmp_path / "back" / "metrics" / "unet.json").read_text() == "{}"
    assert storage.list_files(storage.join(results_uri, "missing")) == []


def test_json_round_trip_and_missing_file_error(results_uri):
    uri = storage.join(results_uri, "champions", "unet.json")
    storage.write_json(uri, {"run_id": "r1", "val_miou": 0.5})

    assert storage.read_json(uri) == {"run_id": "r1", "val_miou": 0.5}
    with pytest.raises(SegflowError, match="not found"):
        storage.read_text(storage.join(results_uri, "absent.txt"))


def test_publish_writes_run_then_points_latest_at_it(results_uri, tmp_path):
    make_run(tmp_path / "one", {"report.html": "first", "metrics.json": "{}"})
    make_run(tmp_path / "two", {"report.html": "second"})

    first = storage.publish(tmp_path / "one", results_uri, "run-1")
    second = storage.publish(tmp_path / "two", results_uri, "run-2")

    latest = storage.latest_run(results_uri)
    assert latest["run_id"] == "run-2" and latest["uri"] == second
    assert storage.read_text(storage.join(latest["uri"], "report.html")) == "second"
    assert storage.read_text(storage.join(first, "report.html")) == "first"
    assert storage.read_json(storage.join(second, "manifest.json"))["files"] == ["report.html"]


def test_interrupted_publish_keeps_previous_pointer(results_uri, tmp_path):
    make_run(tmp_path / "good", {"report.html": "good"})
    storage.publish(tmp_path / "good", results_uri, "run-1")
    broken = make_run(tmp_path / "broken", {"a_metrics.json": "{}", "report.html": "partial"})
    # A file that vanished after the run listed it: reading it fails midway through the upload.
    (broken / "z_checkpoint.weights.h5").symlink_to(tmp_path / "deleted-meanwhile")

    with pytest.raises(SegflowError):
        storage.publish(broken, results_uri, "run-2")

    latest = storage.latest_run(results_uri)
    assert latest["run_id"] == "run-1"
    assert storage.read_text(storage.join(latest["uri"], "report.html")) == "good"
    assert not storage.exists(storage.join(results_uri, "runs", "run-2", "manifest.json"))


def test_interrupted_s3_publish_had_already_uploaded_files(s3_bucket, tmp_path):
    """The failure above really happens midway on S3: earlier files are up, yet no pointer moved."""
    results_uri = s3_bucket + "/results"
    broken = make_run(tmp_path / "broken", {"a_metrics.json": "{}"})
    (broken / "z_checkpoint.weights.h5").symlink_to(tmp_path / "deleted-meanwhile")

    with pytest.raises(SegflowError, match="z_checkpoint"):
        storage.publish(broken, results_uri, "run-1")

    assert storage.list_files(storage.join(results_uri, "runs", "run-1")) == ["a_metrics.json"]
    assert storage.latest_run(results_uri) is None


def test_publish_same_run_id_again_overwrites_it(tmp_path):
    results_uri = str(tmp_path / "results")
    storage.publish(make_run(tmp_path / "try1", {"old.txt": "1"}), results_uri, "run-1")
    storage.publish(make_run(tmp_path / "try2", {"new.txt": "2"}), results_uri, "run-1")

    assert storage.list_files(storage.join(results_uri, "runs", "run-1")) == ["manifest.json", "new.txt"]
    assert [path.name for path in (tmp_path / "results" / "runs").iterdir()] == ["run-1"]


def test_publish_rejects_run_id_with_path_separators(tmp_path):
    with pytest.raises(SegflowError, match="invalid run id '../x'"):
        storage.publish(make_run(tmp_path / "run", {"a": "1"}), str(tmp_path / "results"), "../x")


def test_large_file_goes_up_in_parts_and_comes_back_identical(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * storage.MiB)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * storage.MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * storage.MiB))
    uri = s3_bucket + "/big.bin"

    storage.upload_file(source, uri)
    bucket, key = storage.split_s3(uri)
    head = storage.s3_client().head_object(Bucket=bucket, Key=key)
    copy = storage.download_file(uri, tmp_path / "copy.bin")

    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert storage.file_md5(copy) == storage.file_md5(source)


def test_download_rejects_object_that_does_not_match_its_md5(s3_bucket, tmp_path):
    source = tmp_path / "labels.zip"
    source.write_bytes(b"original bytes")
    uri = s3_bucket + "/labels.zip"
    storage.upload_file(source, uri)
    bucket, key = storage.split_s3(uri)
    metadata = storage.s3_client().head_object(Bucket=bucket, Key=key)["Metadata"]
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=b"tampered bytes", Metadata=metadata)
    existing = tmp_path / "local.zip"
    existing.write_bytes(b"what the user had")

    with pytest.raises(SegflowError, match="download check failed for s3://.*/labels.zip"):
        storage.download_file(uri, existing)

    assert existing.read_bytes() == b"what the user had"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.zip", "local.zip"]


def test_missing_bucket_is_named(s3_endpoint, monkeypatch):
    monkeypatch.setenv("SEGFLOW_S3_ENDPOINT_URL", s3_endpoint)
    with pytest.raises(SegflowError, match="S3 bucket does not exist: no-such-bucket-xyz"):
        storage.write_text("s3://no-such-bucket-xyz/a.txt", "x")


def set_free_requests(s3_endpoint, count):
    """How many more requests moto serves before it checks signatures ("inf" = never checks)."""
    request = urllib.request.Request(
        f"{s3_endpoint}/moto-api/reset-auth", data=count.encode(), headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request).close()


@pytest.fixture
def iam_enforced(s3_endpoint):
    """Make the moto server check signatures against IAM users, for one test; yields a valid key pair."""
    iam = boto3.client("iam", endpoint_url=s3_endpoint)
    iam.create_user(UserName="segflow-publisher")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="segflow-publisher", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="segflow-publisher")["AccessKey"]
    set_free_requests(s3_endpoint, "0")
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        set_free_requests(s3_endpoint, "inf")
        iam.delete_user_policy(UserName="segflow-publisher", PolicyName="s3")
        iam.delete_access_key(UserName="segflow-publisher", AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName="segflow-publisher")


@pytest.mark.parametrize("which", ["unknown key id", "wrong secret"])
def test_bad_credentials_give_clear_error_without_key_material(s3_bucket, iam_enforced, monkeypatch, which):
    key_id, secret = iam_enforced
    bad_key_id = "AKIAFAKEFAKEFAKE1234" if which == "unknown key id" else key_id
    bad_secret = "not-the-secret-" + secret[:8] if which == "wrong secret" else secret
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", bad_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)

    with pytest.raises(SegflowError, match="S3 rejected the credentials for s3://.*/a.json") as raised:
        storage.write_json(s3_bucket + "/a.json", {"a": 1})

    message = str(raised.value)
    assert bad_key_id not in message and bad_secret not in message and secret not in message
    # The same call with the real key pair succeeds, so it was the credentials that failed.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage.write_json(s3_bucket + "/a.json", {"a": 1})
    assert storage.read_json(s3_bucket + "/a.json") == {"a": 1}


def test_endpoint_argument_overrides_environment(s3_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("SEGFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="segflow-endpoint-arg")

    storage.write_text("s3://segflow-endpoint-arg/x.txt", "hello", endpoint_url=s3_endpoint)

    assert storage.read_text("s3://segflow-endpoint-arg/x.txt", endpoint_url=s3_endpoint) == "hello"


def test_published_checkpoints_are_tagged_for_the_lifecycle_rule(s3_bucket, tmp_path):
    import boto3

    run = tmp_path / "run"
    (run / "unet" / "checkpoints" / "step-000000001").mkdir(parents=True)
    (run / "unet" / "checkpoints" / "step-000000001" / "model.weights.h5").write_bytes(b"weights")
    (run / "unet" / "model.keras").write_bytes(b"model")
    run_uri = storage.publish(run, f"{s3_bucket}/results", "run-1")
    client = boto3.client("s3", endpoint_url=os.environ["SEGFLOW_S3_ENDPOINT_URL"])
    bucket, prefix = storage.split_s3(run_uri)

    def tags(name):
        return client.get_object_tagging(Bucket=bucket, Key=f"{prefix}/{name}")["TagSet"]

    assert tags("unet/checkpoints/step-000000001/model.weights.h5") == [{"Key": "segflow-artifact", "Value": "checkpoint"}]
    assert tags("unet/model.keras") == []


# === Crashes while publishing; pointers ===


def _latest_is_complete(results_uri):
    """The run `latest.json` names, as {file: text}, after checking it is whole: its manifest lists
    exactly its files. None when there is no pointer."""
    latest = storage.latest_run(results_uri)
    if latest is None:
        return None
    manifest = storage.read_json(storage.join(latest["uri"], "manifest.json"))
    assert sorted(storage.list_files(latest["uri"])) == sorted([*manifest["files"], "manifest.json"])
    return {name: storage.read_text(storage.join(latest["uri"], name)) for name in manifest["files"]}


def test_a_kill_at_every_rename_of_a_republish_leaves_latest_on_a_whole_run(tmp_path):
    from crash import killed_after_renames

    results_uri = str(tmp_path / "results")
    old = {"report.html": "old", "unet/model.keras": "old model"}
    new = {"report.html": "new", "unet/metrics.json": "{}"}
    storage.publish(make_run(tmp_path / "try1", old), results_uri, "run-1")
    make_run(tmp_path / "try2", new)
    for renames in range(20):
        if not killed_after_renames(renames, lambda: storage.publish(tmp_path / "try2", results_uri, "run-1")):
            break
        assert _latest_is_complete(results_uri) in (old, new), f"killed before rename {renames + 1}"
    assert renames == 3  # the run's manifest, the exchange of the run folders, latest.json
    assert _latest_is_complete(results_uri) == new
    storage.publish(tmp_path / "try2", results_uri, "run-1")  # the next publish removes what the kills left
    assert os.listdir(tmp_path / "results" / "runs") == ["run-1"]


def test_s3_republish_failing_at_every_write_never_points_latest_at_a_partial_run(s3_bucket, tmp_path, monkeypatch):
    results_uri = s3_bucket + "/results"
    old = {"report.html": "old", "unet/model.keras": "old model"}
    new = {"report.html": "new", "unet/metrics.json": "{}"}
    first = storage.publish(make_run(tmp_path / "try1", old), results_uri, "run-1")
    make_run(tmp_path / "try2", new)
    real_upload, real_write = storage.upload_file, storage.write_text

    for failing_write in range(10):
        count = [0]

        def counted(real):
            def write(*args, **kwargs):
                if count[0] == failing_write:
                    raise SegflowError("connection lost")
                count[0] += 1
                return real(*args, **kwargs)

            return write

        monkeypatch.setattr(storage, "upload_file", counted(real_upload))
        monkeypatch.setattr(storage, "write_text", counted(real_write))
        try:
            second = storage.publish(tmp_path / "try2", results_uri, "run-1")
            break
        except SegflowError:
            assert _latest_is_complete(results_uri) == old
    assert failing_write == 4  # two files, the manifest, latest.json
    assert second != first and second.startswith(f"{results_uri}/runs/run-1.")
    assert _latest_is_complete(results_uri) == new
    assert storage.read_text(storage.join(first, "report.html")) == "old"  # what others may point at is unchanged


def test_s3_retry_after_a_failed_first_publish_reuses_the_folder_and_drops_stale_objects(s3_bucket, tmp_path):
    results_uri = s3_bucket + "/results"
    broken = make_run(tmp_path / "broken", {"a_stale.json": "{}"})
    (broken / "z_checkpoint.weights.h5").symlink_to(tmp_path / "deleted-meanwhile")
    with pytest.raises(SegflowError):
        storage.publish(broken, results_uri, "run-1")

    run_uri = storage.publish(make_run(tmp_path / "good", {"report.html": "good"}), results_uri, "run-1")

    assert run_uri == f"{results_uri}/runs/run-1"
    assert storage.list_files(run_uri) == ["manifest.json", "report.html"]


def test_sigkill_while_publishing_keeps_latest_and_the_next_publish_cleans_up(tmp_path, caplog):
    from crash import wait_for

    results = tmp_path / "results"
    storage.publish(make_run(tmp_path / "try1", {"report.html": "old"}), str(results), "run-1")
    run = make_run(tmp_path / "try2", {f"many/{index}.txt": "x" for index in range(2000)})
    code = f"from segflow import storage; storage.publish({str(run)!r}, {str(results)!r}, 'run-1')"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    staged = lambda: [path for path in (results / "runs").iterdir() if path.name.endswith(".segflow-tmp")]  # noqa: E731
    wait_for(lambda: any((path / "many").is_dir() for path in staged()), what="the copy to begin")
    os.killpg(command.pid, signal.SIGKILL)
    assert command.wait() == -signal.SIGKILL

    assert _latest_is_complete(str(results)) == {"report.html": "old"}
    storage.publish(run, str(results), "run-1")
    assert os.listdir(results / "runs") == ["run-1"]
    assert len(_latest_is_complete(str(results))) == 2000
    assert "removed 1 leftover staging folders of a killed run: " in caplog.text


def test_pointers_hold_absolute_paths_and_files_get_the_normal_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old_umask = os.umask(0o022)
    try:
        run_uri = storage.publish(make_run(tmp_path / "run", {"report.html": "x"}), "results", "run-1")
    finally:
        os.umask(old_umask)
    latest = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert latest["uri"] == run_uri == str((tmp_path / "results" / "runs" / "run-1").resolve())
    monkeypatch.chdir("/")
    assert storage.read_text(storage.join(latest["uri"], "report.html")) == "x"
    for path in ("latest.json", "runs/run-1/manifest.json"):
        assert (tmp_path / "results" / path).stat().st_mode & 0o777 == 0o644, path


@pytest.mark.parametrize("store", ["local", "s3"])
def test_publish_leaves_out_the_checkpoint_folders_it_is_told_to(store, tmp_path, request):
    run = tmp_path / "run"
    for name in ("unet/model.keras", "unet/checkpoints/step-000000004/model.weights.h5", "unet/history.json",
                 "report/report.html"):  # fmt: skip
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    results = str(tmp_path / "results") if store == "local" else request.getfixturevalue("s3_bucket") + "/r"
    run_uri = storage.publish(run, results, "r1", exclude_dirs=("checkpoints",))
    assert storage.list_files(run_uri) == ["manifest.json", "report/report.html", "unet/history.json", "unet/model.keras"]
    assert storage.read_json(storage.join(run_uri, "manifest.json"))["files"] == [
        "report/report.html", "unet/history.json", "unet/model.keras"]  # fmt: skip


@pytest.mark.parametrize(("name", "plain"), [
    ("metrics.json", True), ("samples/prediction-0.png", True), ("unet/samples/samples.json", True),
    ("samples/", False), ("samples/../../escape", False), ("../metrics.json", False), ("/etc/passwd", False),
    ("a//b", False), ("./a", False), ("", False),
])  # fmt: skip
def test_only_plain_relative_names_are_fetched_into_a_folder(name, plain):
    """S3 keys can hold `..`, empty parts or a trailing "/" (a folder marker): downloading such a
    key by its name would write outside the target folder or a file where a folder belongs."""
    assert storage.is_plain_relative(name) is plain
