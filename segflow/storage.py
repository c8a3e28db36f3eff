"""One interface over local folders and `s3://bucket/key` URIs, so every step can read and
write results without caring where they live.

S3 goes through boto3; the endpoint can point at any S3-compatible store (MinIO, moto) with the
`endpoint_url` argument or the `SEGFLOW_S3_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` environment variables. Every upload stores the file's MD5 in the object's
metadata (botocore also sends a CRC32 the server verifies) and its size is checked once it lands;
every download is checked against that size and MD5 before it replaces anything. Local writes go
through `segflow.atomic` (a temporary file beside the target, renamed into place).

`publish` writes a run under `{results_uri}/runs/{run_id}/`, its `manifest.json` last, and only
then updates `{results_uri}/latest.json`, so the pointer never names a half-written run, whatever
moment a crash picks (see `publish`). Pointers hold absolute URIs: `s3://...` or an absolute
local path, valid from any working folder.

`read_json_tagged` / `write_json_if` are a compare-and-swap on one JSON object: S3 conditional
writes (`If-None-Match: *`, `If-Match: <ETag>`), or for local files an exclusive lock (flock)
held while the content is re-read and replaced.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from segflow import atomic, uris
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
logger = logging.getLogger(__name__)


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
    with atomic.temporary_file(destination) as temporary:
        shutil.copyfile(source, temporary)


def _readable_files(local_dir: Path, exclude_dirs: tuple[str, ...] = ()) -> list[Path]:
    """Every file under `local_dir`, sorted, leaving out folders named in `exclude_dirs` at any depth."""
    if not local_dir.is_dir():
        raise SegflowError(f"not a folder: {local_dir}")
    return sorted(
        path for path in local_dir.rglob("*")
        if not path.is_dir() and not set(path.relative_to(local_dir).parts[:-1]) & set(exclude_dirs)
    )  # fmt: skip


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
    with atomic.temporary_file(local) as temporary:
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
    return local


def upload_dir(
    local_dir: str | os.PathLike, uri: str, *, endpoint_url: str | None = None, exclude_dirs: tuple[str, ...] = ()
) -> list[str]:
    """Copy every file under `local_dir` (but folders named in `exclude_dirs`) to the same relative
    path under `uri`; returns their URIs."""
    local_dir = Path(local_dir)
    client = s3_client(endpoint_url) if is_s3(uri) else None
    return [
        upload_file(path, join(uri, path.relative_to(local_dir).as_posix()), client=client)
        for path in _readable_files(local_dir, exclude_dirs)
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


def is_plain_relative(name: str) -> bool:
    """True for a relative file path of `list_files` that stays inside its folder: no empty, `.`
    or `..` part, not absolute, not a folder marker ending in "/" (S3 keys can be any of these)."""
    return all(part not in ("", ".", "..") for part in name.split("/"))


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
        atomic.write_bytes(local_path(uri), data)
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
    return _parse_json(uri, read_text(uri, endpoint_url=endpoint_url))


# === Compare-and-swap on one JSON object ===


def read_json_tagged(uri: str, *, endpoint_url: str | None = None) -> tuple[Any, str | None]:
    """`(value, tag)` of the JSON object at `uri`, or `(None, None)` when there is none; pass the
    tag to `write_json_if` to replace exactly this version. The tag is the S3 ETag, or locally
    the SHA-256 of the file's bytes."""
    if not is_s3(uri):
        try:
            data = local_path(uri).read_bytes()
        except FileNotFoundError:
            return None, None
        return _parse_json(uri, data.decode("utf-8")), hashlib.sha256(data).hexdigest()
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        try:
            response = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in _NOT_FOUND_ERRORS:
                return None, None
            raise
        return _parse_json(uri, response["Body"].read().decode("utf-8")), response["ETag"]


def write_json_if(uri: str, value: Any, tag: str | None, *, endpoint_url: str | None = None) -> bool:
    """Write `value` to `uri` only if it still holds the version `tag` came with (`tag` None: only
    if there is no object yet). Returns False, writing nothing, when another writer came first:
    read again, decide again, retry."""
    text = json.dumps(value, indent=2) + "\n"
    if not is_s3(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(f".{path.name}.lock")):
            if read_json_tagged(uri)[1] != tag:
                return False
            atomic.write_text(path, text)
        return True
    bucket, key = split_s3(uri)
    data = text.encode("utf-8")
    condition = {"IfMatch": tag} if tag else {"IfNoneMatch": "*"}
    with _s3_errors(uri):
        try:
            s3_client(endpoint_url).put_object(
                Bucket=bucket, Key=key, Body=data, Metadata={"md5": hashlib.md5(data).hexdigest()}, **condition
            )
        except botocore.exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code"))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise
    return True


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive flock on `lock_path` (created with the normal mode); the kernel releases it
    when the holder dies, so a killed process never leaves the lock held."""
    import fcntl

    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _parse_json(uri: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SegflowError(f"not valid JSON: {uri} ({error})") from None


# === Publishing runs ===


def absolute(uri: str | os.PathLike) -> str:
    """`uri` as stored in pointers: S3 URIs as they are, local paths made absolute (resolved)."""
    return str(uri) if is_s3(uri) else str(local_path(uri).resolve())


def publish(
    local_dir: str | os.PathLike,
    results_uri: str,
    run_id: str,
    *,
    endpoint_url: str | None = None,
    exclude_dirs: tuple[str, ...] = (),
) -> str:
    """Publish a finished run: copy `local_dir` to `{results_uri}/runs/{run_id}/`, write its
    `manifest.json`, and only then point `{results_uri}/latest.json` at it. Returns the run URI
    (absolute: what `latest.json` holds). Folders named in `exclude_dirs` (at any depth, e.g.
    `("checkpoints",)`: optimizer state a user rarely needs) are left out.

    If anything fails or the process is killed on the way, `latest.json` still names a complete
    run (the previous one), and a folder it names is never changed in place:
      - locally, the run is staged beside `runs/{run_id}/` with its manifest and exchanged with it
        in one atomic step (`atomic.staging_dir`), so publishing the same run id again (a retry)
        replaces that run's files all at once; the next publish removes a killed one's staging;
      - on S3, where objects cannot be swapped together, a run id that already has a complete
        (manifest-holding) run is published again under a new folder `runs/{run_id}.{UTC time}/`
        and the pointer moved there; an incomplete earlier attempt is overwritten and its extra
        objects deleted.
    """
    local_dir = Path(local_dir)
    if not _RUN_ID.match(run_id):
        raise SegflowError(f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-'")
    files = _readable_files(local_dir, exclude_dirs)
    names = [path.relative_to(local_dir).as_posix() for path in files]
    manifest = {"run_id": run_id, "files": names}
    if is_s3(results_uri):
        run_uri = _s3_run_uri(results_uri, run_id, endpoint_url)
        upload_dir(local_dir, run_uri, endpoint_url=endpoint_url, exclude_dirs=exclude_dirs)
        _delete_others(run_uri, set(names), endpoint_url)
        write_json(join(run_uri, MANIFEST), manifest, endpoint_url=endpoint_url)
    else:
        run_uri = absolute(join(results_uri, "runs", run_id))
        _copy_tree_atomically(local_dir, local_path(run_uri), manifest, exclude_dirs)
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


def _s3_run_uri(results_uri: str, run_id: str, endpoint_url: str | None) -> str:
    """`runs/{run_id}` unless it holds a complete run (which a pointer may name), else a new folder."""
    run_uri = join(results_uri, "runs", run_id)
    if not exists(join(run_uri, MANIFEST), endpoint_url=endpoint_url):
        return run_uri
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return join(results_uri, "runs", f"{run_id}.{stamp}")


def _delete_others(run_uri: str, keep: set[str], endpoint_url: str | None) -> None:
    """Delete the objects under `run_uri` not in `keep`: what an earlier, failed attempt left."""
    extra = [name for name in list_files(run_uri, endpoint_url=endpoint_url) if name not in keep]
    bucket, _ = split_s3(run_uri)
    client = s3_client(endpoint_url)
    with _s3_errors(run_uri):
        for start in range(0, len(extra), 1000):
            keys = [{"Key": split_s3(join(run_uri, name))[1]} for name in extra[start : start + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _ignore_folders(names: tuple[str, ...]):
    """A `shutil.copytree` ignore function that leaves out the folders called `names`."""
    return lambda folder, entries: [entry for entry in entries if entry in names and (Path(folder) / entry).is_dir()]


def _copy_tree_atomically(source: Path, destination: Path, manifest: dict, exclude_dirs: tuple[str, ...] = ()) -> None:
    """Copy a folder and its manifest beside `destination`, then exchange it with `destination` in
    one atomic step; removes what a killed earlier copy left first."""
    atomic.remove_leftovers(destination, logger, f".{glob.escape(destination.name)}.*.staging")
    with atomic.staging_dir(destination, what=f"the run {source}") as staging:
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True, ignore=_ignore_folders(exclude_dirs))
        except (OSError, shutil.Error) as error:
            if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "[Errno 28]" in str(error):
                raise atomic.disk_full_error(f"the run {source}", destination) from None
            raise SegflowError(f"cannot copy {source} to {destination}: {error}") from None
        atomic.write_json(staging / MANIFEST, manifest)
