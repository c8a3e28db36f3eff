"""Every location segflow is given, checked once where it enters and shown without credentials.

A location is a local folder, a `file://` URL, `s3://bucket[/prefix]` or `http(s)://host[/path]`
(a data source may also be `cityscapes`, `cityscapes+http(s)://host` or `synthetic`). `check`
refuses a malformed or unsupported one with one SegflowError naming the setting, before any work
starts: `s3://` and `s3:///prefix` have no bucket (they used to become a local folder `s3:`, or
fail after training).

Credentials inside a URL (`https://user:password@mirror/cs/`) never travel further than the
request that needs them: `hide` gives the form segflow stores, logs and shows
(`https://***@mirror/cs/`) and remembers the real URL in this process only; `reveal` gives the
real URL back where the request is made, from that memory or from the SEGFLOW_SOURCE
environment variable (for a worker process the URL did not enter). `redact` removes any
`user:password@` from a text, as a last guard on error messages.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from segflow.errors import SegflowError

HIDDEN = "***"
SOURCE_ENV = "SEGFLOW_SOURCE"
ENDPOINT_ENV_VARS = ("SEGFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SOURCE_NAMES = ("cityscapes", "synthetic")
# Bucket names as S3 allows them: 3-63 lowercase letters, digits, dots and hyphens
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")
_REAL: dict[str, str] = {}  # hidden form -> real URL, for this process only


def redact(text: object) -> str:
    """`text` with the `user:password@` of every URL in it replaced by `***@`."""
    return _USERINFO.sub(lambda match: match["scheme"] + HIDDEN + "@", str(text))


def hide(url: str) -> str:
    """The form of `url` safe to store and show; the real one stays in this process for `reveal`."""
    shown = redact(url)
    if shown != url:
        _REAL[shown] = url
    return shown


def reveal(url: str) -> str:
    """The real URL behind a `hide`-n one (unchanged if it had no credentials).

    Raises SegflowError when the credentials are not known to this process.
    """
    if f"://{HIDDEN}@" not in url:
        return url
    if url in _REAL:
        return _REAL[url]
    from_env = os.environ.get(SOURCE_ENV, "").strip()
    if from_env and redact(from_env) == url:
        return from_env
    raise SegflowError(
        f"the credentials of {url} are not known to this process: set {SOURCE_ENV} to the URL with its"
        " user:password@ on this worker"
    )


def check(uri: str | os.PathLike, what: str, *, kinds: tuple[str, ...] = ("local", "s3")) -> str:
    """`uri` stripped of surrounding blanks, if it is a well-formed location of one of `kinds`
    (`local` = a folder or `file://` URL, `s3`, `http`); else SegflowError naming `what`."""
    text = str(uri).strip()
    kind = _kind(text, what)
    if kind not in kinds:
        raise SegflowError(f"{what}: {redact(text)!r} is {_KIND_NAMES[kind]}, expected {_expected(kinds)}")
    if kind == "s3":
        bucket = text[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise SegflowError(f"{what}: {redact(text)!r} has no bucket; expected s3://bucket or s3://bucket/prefix")
        if not _BUCKET.fullmatch(bucket):
            raise SegflowError(
                f"{what}: {redact('s3://' + bucket)[5:]!r} in {redact(text)!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)"
            )
        endpoint_from_env()  # the store it will be reached through, checked now rather than at the first upload
    if kind == "http" and not urllib.parse.urlsplit(text).hostname:
        raise SegflowError(f"{what}: {redact(text)!r} has no host; expected {text.split(':')[0]}://host/path")
    if kind == "local" and not _local_part(text):
        raise SegflowError(f"{what}: {text!r} names no folder")
    return text


def check_source(source: str, what: str = "source") -> str:
    """A data source as `segflow.download.fetch_packages` takes it, checked; credentials hidden."""
    text = str(source).strip()
    if text in SOURCE_NAMES:
        return text
    if text.startswith("cityscapes+"):
        check(text[len("cityscapes+") :], what, kinds=("http",))
        return hide(text)
    return hide(check(text, what, kinds=("local", "s3", "http")))


def endpoint_from_env() -> str | None:
    """The S3 endpoint named by the first of ENDPOINT_ENV_VARS that is set, checked (see
    `check_endpoint`), or None for AWS itself."""
    name = next((name for name in ENDPOINT_ENV_VARS if os.environ.get(name)), None)
    return check_endpoint(os.environ[name], name) if name else None


def check_endpoint(url: str, what: str) -> str:
    """An S3 endpoint URL, checked, without its `user:password@`: S3 signs requests with its own
    keys, and botocore would only repeat the userinfo in its messages."""
    text = check(url, what, kinds=("http",))
    parts = urllib.parse.urlsplit(text)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


_KIND_NAMES = {"local": "a local folder", "s3": "an S3 URI", "http": "a web URL"}


def _expected(kinds: tuple[str, ...]) -> str:
    forms = {"local": "a local folder (or file:///folder)", "s3": "s3://bucket/prefix", "http": "http(s)://host/path"}
    return " or ".join(forms[kind] for kind in kinds)


def _kind(text: str, what: str) -> str:
    if not text:
        raise SegflowError(f"{what}: empty; expected a folder or a URI")
    scheme = _SCHEME.match(text)
    if not scheme or (len(scheme[1]) == 1 and os.name == "nt"):  # no scheme, or a drive letter
        return "local"
    name = scheme[1].lower()
    if not text[len(name) + 1 :].startswith("//"):
        if name in ("s3", "http", "https", "file"):
            raise SegflowError(f"{what}: {redact(text)!r} is malformed; expected {name}://...")
        return "local"  # a folder whose name holds a colon
    if name == "s3":
        return "s3"
    if name in ("http", "https"):
        return "http"
    if name == "file":
        return "local"
    raise SegflowError(
        f"{what}: unsupported scheme {name}:// in {redact(text)!r}; use a local folder, file:///folder,"
        " s3://bucket/prefix or https://host/path"
    )


def _local_part(text: str) -> str:
    if text.startswith("file://"):
        parts = urllib.parse.urlsplit(text)
        return parts.path if parts.netloc in ("", "localhost") else ""
    return text
