"""One interface over local folders and `s3://bucket/key` URIs, so every step can read and
write results without caring where they live.

S3 goes through boto3; the endpoint can point at any S3-compatible store (MinIO, moto) with the
`endpoint_url` argument or the `SEGFLOW_S3_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` environment variables. Every upload stores the file's MD5 in the object's
metadata (botocore also sends a CRC32 the server verifies) and its size is checked once it lands;
every download is checked against that size and MD5 before it replaces anything. Local writes go
to a temporary file in the same folder and are renamed into place.

`publish` writes a run under `{results_uri}/runs/{run_id}/` and updates `{results_uri}/latest.json`
last, so a reader that follows the pointer never sees a half-written run.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from segflow import uris
from segflow.errors import SegflowError

MiB = 1024 * 1024
# Files above this size go up and down in parts, several at a time.
MULTIPART_THRESHOLD = 64 * MiB
MULTIPART_CHUNKSIZE = 64 * MiB
ENDPOINT_ENV_VARS = uris.ENDPOINT_ENV_VARS
_CREDENTIAL_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
LATEST = "latest.json"
CHECKPOINTS_SEGMENT = "/checkpoints/"
CHECKPOINT_TAG = "segflow-artifact=checkpoint"
MANIFEST = "manifest.json"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CREDENTIAL_ERRORS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "403",
}
_NOT_FOUND_ERRORS = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


# === URIs ===


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str | os.PathLike, *parts: str) -> str:
    """`join("s3://b/results", "runs", "r1")` -> `"s3://b/results/runs/r1"`; paths join as paths."""
    if is_s3(uri):
        return "/".join([str(uri).rstrip("/"), *(part.strip("/") for part in parts)])
    return str(Path(local_path(uri), *parts))


def local_path(uri: str | os.PathLike) -> Path:
    """A local path or `file://` URI as a Path."""
    text = str(uri)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> `("bucket", "a/b")`."""
    bucket, _, key = str(uri)[len("s3://") :].partition("/")
    if not bucket:
        raise SegflowError(f"S3 URI has no bucket: {uri!r} (expected s3://bucket/key)")
    return bucket, key


# === S3 client and errors ===


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client for `endpoint_url`, or the endpoint named by the environment, or AWS.

    Clients are reused (making one takes ~0.1 s) but a change of the AWS_* credential variables
    gives a new one: boto3's own default session would keep the first credentials it saw.
    """
    endpoint_url = endpoint_url or uris.endpoint_from_env()  # checked, without any user:password@
    credential_env = tuple(os.environ.get(name) for name in _CREDENTIAL_ENV_VARS)
    return _new_s3_client(endpoint_url, credential_env)


@functools.lru_cache(maxsize=8)
def _new_s3_client(endpoint_url: str | None, credential_env: tuple):
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 5, "mode": "standard"},
        # S3-compatible stores (MinIO, moto) are addressed as endpoint/bucket/key.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn boto3's errors into one SegflowError naming the URI; never quotes key material."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise SegflowError(
            f"no S3 credentials found for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        ) from None
    except botocore.exceptions.ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "unknown"))
        if code in _CREDENTIAL_ERRORS:
            raise SegflowError(
                f"S3 rejected the credentials for {uri} ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                " and the endpoint"
            ) from None
        if code == "NoSuchBucket":
            raise SegflowError(f"S3 bucket does not exist: {split_s3(uri)[0]} (in {uri})") from None
        if code in _NOT_FOUND_ERRORS:
            raise SegflowError(f"not found: {uri}") from None
        raise SegflowError(f"S3 request for {uri} failed ({code})") from error
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as error:
        raise SegflowError(f"cannot reach the S3 endpoint for {uri}: {uris.redact(error)}") from None
    except boto3.exceptions.S3UploadFailedError as error:
        # upload_file wraps ClientError in this; its message holds only the code and reason.
        if any(code in str(error) for code in _CREDENTIAL_ERRORS):
            raise SegflowError(
                f"S3 rejected the credentials for {uri}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from None
        raise SegflowError(f"upload to {uri} failed: {uris.redact(error)}") from None


def _transfer_config() -> TransferConfig:
    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE, max_concurrency=4
    )


# === Files ===


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(destination) as temporary:
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)


@contextlib.contextmanager
def _temporary_beside(destination: Path) -> Iterator[Path]:
    """A temporary file name in `destination`'s folder, removed if it was not renamed away."""
    descriptor, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    os.close(descriptor)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _readable_files(local_dir: Path) -> list[Path]:
    if not local_dir.is_dir():
        raise SegflowError(f"not a folder: {local_dir}")
    return sorted(path for path in local_dir.rglob("*") if not path.is_dir())


def upload_file(local: str | os.PathLike, uri: str, *, endpoint_url: str | None = None, client=None) -> str:
    """Copy a local file to `uri` (S3 or local) and check what landed; returns `uri`."""
    local = Path(local)
    if not local.is_file():
        raise SegflowError(f"no such file: {local}")
    if not is_s3(uri):
        _atomic_copy(local, local_path(uri))
        return uri
    client = client or s3_client(endpoint_url)
    try:
        size, md5 = local.stat().st_size, file_md5(local)
    except OSError as error:
        raise SegflowError(f"cannot read {local}: {error.strerror}") from None
    bucket, key = split_s3(uri)
    extra_args = {"Metadata": {"md5": md5}}
    if CHECKPOINTS_SEGMENT in f"/{key}":
        # The bucket's lifecycle rule (infra/aws/results-bucket.yaml) expires objects with this tag.
        extra_args["Tagging"] = CHECKPOINT_TAG
    with _s3_errors(uri):
        client.upload_file(str(local), bucket, key, ExtraArgs=extra_args, Config=_transfer_config())
        head = client.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != size or head["Metadata"].get("md5") != md5:
        raise SegflowError(f"upload check failed for {uri}: stored object does not match {local}")
    return uri


def download_file(uri: str, local: str | os.PathLike, *, endpoint_url: str | None = None, client=None) -> Path:
    """Copy `uri` (S3 or local) to a local file, checked before it replaces anything; returns the path."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        source = local_path(uri)
        if not source.is_file():
            raise SegflowError(f"no such file: {source}")
        _atomic_copy(source, local)
        return local
    client = client or s3_client(endpoint_url)
    bucket, key = split_s3(uri)
    with _temporary_beside(local) as temporary:
        with _s3_errors(uri):
            head = client.head_object(Bucket=bucket, Key=key)
            client.download_file(bucket, key, str(temporary), Config=_transfer_config())
        # Objects segflow did not upload have no MD5 metadata; their ETag is not always an MD5
        # (multipart, SSE-KMS), so only their size is checked.
        expected_md5 = head["Metadata"].get("md5")
        if temporary.stat().st_size != head["ContentLength"] or (
            expected_md5 is not None and file_md5(temporary) != expected_md5
        ):
            raise SegflowError(f"download check failed for {uri}: size or MD5 differs from the stored object")
        os.replace(temporary, local)
    return local


def upload_dir(local_dir: str | os.PathLike, uri: str, *, endpoint_url: str | None = None) -> list[str]:
    """Copy every file under `local_dir` to the same relative path under `uri`; returns their URIs."""
    local_dir = Path(local_dir)
    client = s3_client(endpoint_url) if is_s3(uri) else None
    return [
        upload_file(path, join(uri, path.relative_to(local_dir).as_posix()), client=client)
        for path in _readable_files(local_dir)
    ]


def download_dir(uri: str, local_dir: str | os.PathLike, *, endpoint_url: str | None = None) -> Path:
    """Copy every file under `uri` to the same relative path under `local_dir`."""
    local_dir = Path(local_dir)
    client = s3_client(endpoint_url) if is_s3(uri) else None
    names = list_files(uri, endpoint_url=endpoint_url)
    if not names:
        raise SegflowError(f"nothing to download under {uri}")
    for name in names:
        download_file(join(uri, name), local_dir / name, client=client)
    return local_dir


def fingerprint(uri: str, *, endpoint_url: str | None = None) -> str:
    """Text that changes when the file at `uri` changes: its stored MD5 (or ETag) on S3, size and
    modification time locally. Cheap: nothing is read."""
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_file():
            raise SegflowError(f"no such file: {path}")
        return f"size:{path.stat().st_size}:mtime_ns:{path.stat().st_mtime_ns}"
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        head = s3_client(endpoint_url).head_object(Bucket=bucket, Key=key)
    md5 = head["Metadata"].get("md5")
    return f"md5:{md5}" if md5 else f"etag:{head['ETag'].strip(chr(34))}:size:{head['ContentLength']}"


def list_files(uri: str, *, endpoint_url: str | None = None) -> list[str]:
    """Relative paths of every file under `uri`, sorted (an empty list if there are none)."""
    if not is_s3(uri):
        root = local_path(uri)
        return [path.relative_to(root).as_posix() for path in _readable_files(root)] if root.is_dir() else []
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    names = []
    with _s3_errors(uri):
        for page in s3_client(endpoint_url).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
    return sorted(names)


def exists(uri: str, *, endpoint_url: str | None = None) -> bool:
    """True for an existing file, or a folder / prefix holding at least one file."""
    if not is_s3(uri):
        return local_path(uri).exists()
    bucket, key = split_s3(uri)
    client = s3_client(endpoint_url)
    with _s3_errors(uri):
        try:
            client.head_object(Bucket=bucket, Key=key)
            return True
        except botocore.exceptions.ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) not in _NOT_FOUND_ERRORS:
                raise
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        return client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0) > 0


# === Text and JSON ===


def write_text(uri: str, text: str, *, endpoint_url: str | None = None) -> str:
    """Write `text` to `uri` in one step: a reader sees the old content or the new, never a mix."""
    data = text.encode("utf-8")
    if not is_s3(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _temporary_beside(path) as temporary:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        return uri
    bucket, key = split_s3(uri)
    md5 = hashlib.md5(data).hexdigest()
    with _s3_errors(uri):
        s3_client(endpoint_url).put_object(Bucket=bucket, Key=key, Body=data, Metadata={"md5": md5})
    return uri


def read_text(uri: str, *, endpoint_url: str | None = None) -> str:
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_file():
            raise SegflowError(f"not found: {path}")
        return path.read_text(encoding="utf-8")
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        return s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")


def write_json(uri: str, value: Any, *, endpoint_url: str | None = None) -> str:
    """Write `value` as indented JSON, keys in their given order, atomically (see `write_text`)."""
    return write_text(uri, json.dumps(value, indent=2) + "\n", endpoint_url=endpoint_url)


def read_json(uri: str, *, endpoint_url: str | None = None) -> Any:
    text = read_text(uri, endpoint_url=endpoint_url)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SegflowError(f"not valid JSON: {uri} ({error})") from None


# === Publishing runs ===


def publish(local_dir: str | os.PathLike, results_uri: str, run_id: str, *, endpoint_url: str | None = None) -> str:
    """Publish a finished run: copy `local_dir` to `{results_uri}/runs/{run_id}/`, write its
    `manifest.json`, and only then point `{results_uri}/latest.json` at it. Returns the run URI.

    If anything fails on the way, `latest.json` still points at the previous complete run.
    Publishing the same run id again (a retry) overwrites that run's files.
    """
    local_dir = Path(local_dir)
    if not _RUN_ID.match(run_id):
        raise SegflowError(f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-'")
    files = _readable_files(local_dir)
    run_uri = join(results_uri, "runs", run_id)
    if is_s3(results_uri):
        upload_dir(local_dir, run_uri, endpoint_url=endpoint_url)
    else:
        _copy_tree_atomically(local_dir, local_path(run_uri))
    names = [path.relative_to(local_dir).as_posix() for path in files]
    write_json(join(run_uri, MANIFEST), {"run_id": run_id, "files": names}, endpoint_url=endpoint_url)
    published_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    pointer = {"run_id": run_id, "uri": run_uri, "published_at": published_at}
    write_json(join(results_uri, LATEST), pointer, endpoint_url=endpoint_url)
    return run_uri


def latest_run(results_uri: str, *, endpoint_url: str | None = None) -> dict | None:
    """The `latest.json` pointer of `results_uri` (`run_id`, `uri`, `published_at`), or None."""
    uri = join(results_uri, LATEST)
    if not exists(uri, endpoint_url=endpoint_url):
        return None
    return read_json(uri, endpoint_url=endpoint_url)


def _copy_tree_atomically(source: Path, destination: Path) -> None:
    """Copy a folder beside `destination`, then swap it in; the old copy goes only after the swap."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    # The copy goes inside a private temporary folder, so it keeps the source's permissions.
    workspace = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".staging"))
    staging, retired = workspace / "new", workspace / "old"
    try:
        try:
            shutil.copytree(source, staging)
        except (OSError, shutil.Error) as error:
            raise SegflowError(f"cannot copy {source} to {destination}: {error}") from None
        if destination.exists():
            os.replace(destination, retired)
        try:
            os.replace(staging, destination)
        except OSError:
            if retired.exists():
                os.replace(retired, destination)
            raise
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
