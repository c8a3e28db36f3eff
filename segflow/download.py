"""Fetch the Cityscapes packages (zip files) from wherever they are: the official website, an S3
mirror, an HTTP(S) folder or a local folder.

The website is spoken to as cityscapesScripts' official downloader does
(`cityscapesscripts/download/downloader.py`): POST the login form and keep the session cookie
(success is a 302 redirect; the site answers a wrong password with the form again), read the
package list and each package's MD5 from the site, download by package id. Downloads stream in
8 MiB chunks into `NAME.part`, resume with an HTTP Range request after a dropped connection
(or start over if the server ignores Range), retry transient failures with exponential backoff,
time out instead of hanging, and become `NAME` only once the MD5 matches.

Credentials come from CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD or are passed in as a
`Credentials`, whose password never appears in its repr, in logs or in error messages.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import requests
import urllib3
from tqdm import tqdm

from segflow import __version__, atomic, storage
from segflow.cityscapes import PACKAGES
from segflow.errors import SegflowError

log = logging.getLogger(__name__)
T = TypeVar("T")

SITE_URL = "https://www.cityscapes-dataset.com"
SITE_SOURCE = "cityscapes"
CHUNK_BYTES = 8 * 1024 * 1024
USERNAME_ENV, PASSWORD_ENV = "CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    """A Cityscapes account. `password` is left out of repr and str, so logging this is safe."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def from_env(cls) -> Credentials:
        username, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
        if not username or not password:
            raise SegflowError(
                f"the Cityscapes website needs an account: set {USERNAME_ENV} and {PASSWORD_ENV}"
                " (register at https://www.cityscapes-dataset.com/register/)"
            )
        return cls(username, password)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait for a server and how often to try again: waits double from `first_wait_s`."""

    attempts: int = 6
    first_wait_s: float = 2.0
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)


@dataclass(frozen=True)
class Package:
    """One entry of the site's package list: `size` is the site's text, such as `241MB`."""

    name: str
    package_id: str
    size: str = ""


class _Transient(Exception):
    """A failure worth another attempt: a 5xx answer or a body that ended early."""


# === Sources ===


def fetch_packages(
    source: str,
    dest_dir: str | os.PathLike,
    packages: Iterable[str] = PACKAGES,
    credentials: Credentials | None = None,
    *,
    retry: RetryPolicy = RetryPolicy(),
) -> list[Path]:
    """Make the packages available as local zip files; returns their paths in `packages` order.

    `source` is one of:
      - `cityscapes`: the official website, logged in with `credentials` or the environment;
      - `cityscapes+http://host:port`: a server that answers like the website (tests, a proxy);
      - `s3://bucket/prefix/`: a mirror holding the zips (endpoint as in `segflow.storage`);
      - `https://host/folder/`: a plain web folder holding the zips;
      - a local folder or `file://` URL: its zips are used in place, not copied.
    A source ending in `.zip` names one package, fetched instead of `packages`.

    Example:
        zips = fetch_packages("cityscapes", "downloads/")
    """
    kind, location, names = _resolve(source, packages)
    if kind == "local":
        return _local_packages(Path(location), names)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if kind == "site":
        site = CityscapesSite(credentials or Credentials.from_env(), url=location, retry=retry)
        site.login()
        return site.download_all(names, dest_dir)
    if kind == "s3":
        return [storage.download_file(storage.join(location, name), dest_dir / name) for name in names]
    session, folder_url = _http_session(location)
    return [
        download_resumable(session, f"{folder_url}/{urllib.parse.quote(name)}", dest_dir / name, retry=retry)
        for name in names
    ]


def package_fingerprints(
    source: str,
    packages: Iterable[str] = PACKAGES,
    credentials: Credentials | None = None,
    *,
    retry: RetryPolicy = RetryPolicy(),
) -> dict[str, str]:
    """`{package: text that changes when the package changes}`, without downloading anything.

    For a cache key: the site's MD5; on S3 the stored MD5 (or ETag); on the web the ETag (or
    size and date); locally the size and modification time.
    """
    kind, location, names = _resolve(source, packages)
    if kind == "site":
        site = CityscapesSite(credentials or Credentials.from_env(), url=location, retry=retry)
        site.login()
        return {name: f"md5:{site.md5(name)}" for name in names}
    if kind in ("local", "s3"):
        if kind == "local":
            _local_packages(Path(location), names)  # one error naming every missing package
        return {name: storage.fingerprint(storage.join(location, name)) for name in names}
    session, folder_url = _http_session(location)
    return {name: _web_fingerprint(session, f"{folder_url}/{urllib.parse.quote(name)}", retry) for name in names}


def _web_fingerprint(session: requests.Session, url: str, retry: RetryPolicy) -> str:
    def head() -> requests.Response:
        return _check_status(session.head(url, allow_redirects=True, timeout=retry.timeout), url)

    headers = _with_retries(head, f"HEAD {url}", retry).headers
    if "ETag" in headers:
        return f"etag:{headers['ETag']}"
    return f"size:{headers.get('Content-Length')}:modified:{headers.get('Last-Modified')}"


def _resolve(source: str, packages: Iterable[str]) -> tuple[str, str, list[str]]:
    """`(kind, location, package names)`; a source ending in `.zip` names the one package."""
    kind, location = parse_source(source)
    if location.endswith(".zip"):
        location, name = location.rsplit("/", 1)
        return kind, location or "/", [name]
    names = list(packages)
    if not names:
        raise SegflowError("no packages to fetch")
    return kind, location or "/", names


def parse_source(source: str) -> tuple[str, str]:
    """`(kind, location)` with kind `site`, `s3`, `http` or `local`; trailing slashes removed."""
    text = str(source).strip()
    if text == SITE_SOURCE:
        return "site", SITE_URL
    if text.startswith(SITE_SOURCE + "+"):
        url = text[len(SITE_SOURCE) + 1 :]
        if not url.startswith(("http://", "https://")):
            raise SegflowError(f"data source {text!r}: expected cityscapes+http://HOST or cityscapes+https://HOST")
        return "site", url.rstrip("/")
    if text.startswith("s3://"):
        return "s3", text.rstrip("/")
    if text.startswith(("http://", "https://")):
        if urllib.parse.urlsplit(text).hostname == urllib.parse.urlsplit(SITE_URL).hostname:
            return "site", SITE_URL
        return "http", text.rstrip("/")
    if "://" in text and not text.startswith("file://"):
        raise SegflowError(
            f"unsupported data source {text!r}: use 'cityscapes', s3://bucket/prefix/, https://host/folder/,"
            " file:///folder or a local folder"
        )
    return "local", str(storage.local_path(text)).rstrip("/")


def _local_packages(folder: Path, names: list[str]) -> list[Path]:
    paths = [folder / name for name in names]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise SegflowError(f"missing in {folder}: {', '.join(missing)}")
    return paths


def _http_session(url: str) -> tuple[requests.Session, str]:
    """A session for a web folder; a `user:password@` in the URL becomes basic auth, out of messages."""
    parts = urllib.parse.urlsplit(url)
    session = _new_session()
    if parts.username or parts.password:
        session.auth = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return session, urllib.parse.urlunsplit(parts)


def _new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"segflow/{__version__}"
    return session


# === The Cityscapes website ===


class CityscapesSite:
    """A session on the Cityscapes website, or on a server that answers like it."""

    def __init__(self, credentials: Credentials, *, url: str = SITE_URL, retry: RetryPolicy = RetryPolicy()):
        self.credentials = credentials
        self.url = url.rstrip("/")
        self.retry = retry
        self.session = _new_session()
        self._packages: dict[str, Package] | None = None

    def login(self) -> None:
        """POST the login form; the site redirects (302) on success and shows the form again otherwise."""
        form = {"username": self.credentials.username, "password": self.credentials.password, "submit": "Login"}

        def attempt() -> requests.Response:
            _check_status(self._request("GET", "/login"), f"{self.url}/login")
            return _check_status(self._request("POST", "/login", data=form), f"{self.url}/login")

        response = _with_retries(attempt, f"logging in to {self.url}", self.retry)
        if response.status_code != 302:
            raise SegflowError(
                f"Cityscapes login as {self.credentials.username!r} at {self.url} failed: wrong username or"
                f" password (the site answered {response.status_code} instead of redirecting)"
            )
        log.info("logged in to %s as %s", self.url, self.credentials.username)

    def packages(self) -> dict[str, Package]:
        """`{name: Package}` of everything the account may download (read once per session)."""
        if self._packages is None:
            response = self._get_logged_in("/downloads/?list")
            try:
                self._packages = {
                    item["name"]: Package(item["name"], str(item["packageID"]), str(item.get("size", "")))
                    for item in response.json()
                }
            except (ValueError, KeyError, TypeError):
                raise SegflowError(f"{self.url}/downloads/?list did not answer with a package list") from None
        return self._packages

    def package(self, name: str) -> Package:
        packages = self.packages()
        if name not in packages:
            raise SegflowError(
                f"package {name!r} is not offered to this account at {self.url}; available: {', '.join(sorted(packages))}"
            )
        return packages[name]

    def md5(self, name: str) -> str:
        """The MD5 the site publishes for package `name`."""
        text = self._get_logged_in(f"/md5-sum/?packageID={self.package(name).package_id}").text
        md5 = (text.split() or [""])[0].lower()
        if not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise SegflowError(f"{self.url} gave no MD5 for {name} (answer began {text[:40]!r})")
        return md5

    def download(self, name: str, dest_dir: str | os.PathLike) -> Path:
        """Download one package to `dest_dir/name`, verified; a file that already matches is kept."""
        package, md5 = self.package(name), self.md5(name)
        destination = Path(dest_dir) / name
        if destination.is_file() and storage.file_md5(destination) == md5:
            log.info("%s is already downloaded (MD5 matches the site's)", destination)
            return destination
        url = f"{self.url}/file-handling/?packageID={package.package_id}"
        return download_resumable(self.session, url, destination, md5=md5, retry=self.retry)

    def download_all(self, names: Iterable[str], dest_dir: str | os.PathLike) -> list[Path]:
        names = list(names)
        for name in names:  # every name is checked before the first byte is downloaded
            self.package(name)
        return [self.download(name, dest_dir) for name in names]

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(
            method, self.url + path, allow_redirects=False, timeout=self.retry.timeout, **kwargs
        )

    def _get_logged_in(self, path: str) -> requests.Response:
        response = _with_retries(
            lambda: _check_status(self._request("GET", path), self.url + path), f"GET {self.url}{path}", self.retry
        )
        if response.is_redirect:
            raise SegflowError(f"{self.url}{path} redirected to the login page: the session is not logged in")
        return response


# === Resumable, verified downloads ===


def download_resumable(
    session: requests.Session,
    url: str,
    destination: str | os.PathLike,
    *,
    md5: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
) -> Path:
    """Download `url` to `destination` through `destination.part`, resuming and retrying.

    A server that ignores Range (answers 200) gets the file restarted from byte 0. With `md5`,
    a mismatch deletes the partial file and raises; `destination` is only ever a whole,
    verified file (an existing one is replaced only by a verified download).
    """
    destination = Path(destination)
    part = destination.with_name(destination.name + ".part")
    _with_retries(lambda: _download_once(session, url, part, retry), f"downloading {destination.name}", retry)
    if md5 is not None:
        actual = storage.file_md5(part)
        if actual != md5.lower():
            part.unlink()
            raise SegflowError(
                f"{destination.name} from {url} is corrupt: its MD5 is {actual}, the site says {md5};"
                " the download was deleted, run again to download it afresh"
            )
    atomic.commit(part, destination)
    log.info("downloaded %s (%d bytes)", destination, destination.stat().st_size)
    return destination


def _download_once(session: requests.Session, url: str, part: Path, retry: RetryPolicy) -> None:
    """One attempt: ask for the bytes `part` lacks and append them; raises on anything short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    headers["Accept-Encoding"] = "identity"  # the bytes on the wire are the file's, as its MD5 expects
    with session.get(url, headers=headers, stream=True, allow_redirects=False, timeout=retry.timeout) as response:
        if response.status_code == 416 and offset:
            if _content_range_total(response) == offset:
                return  # a previous attempt got every byte but stopped before checking them
            part.unlink()
            raise _Transient(f"{part.name} is longer than the file on the server; starting over")
        _check_status(response, url)
        if response.is_redirect:
            raise SegflowError(f"{url} redirected to {response.headers.get('Location')!r} instead of sending the file")
        if response.status_code == 206:
            if _content_range_start(response) != offset:
                part.unlink()
                raise _Transient(f"the server sent another range than bytes={offset}-; starting over")
            log.info("resuming %s at byte %d", part.name, offset)
        elif offset:
            log.info("the server ignored the Range request; downloading %s from the start", part.name)
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        # disable=None: a progress bar only when stderr is a terminal, not in logs.
        progress = tqdm(total=expected, initial=offset, desc=part.name, unit="B", unit_scale=True, disable=None)
        with progress, open(part, "ab" if offset else "wb") as stream:
            # Raw reads, not iter_content: a read cut short by a dropped connection still
            # returns what arrived, so the next attempt resumes after it.
            for chunk in response.raw.stream(CHUNK_BYTES, decode_content=False):
                stream.write(chunk)
                progress.update(len(chunk))
    received = part.stat().st_size
    if expected is not None and received != expected:
        raise _Transient(f"the connection closed after {received} of {expected} bytes")


def _content_range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


def _content_range_total(response: requests.Response) -> int | None:
    match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


def _check_status(response: requests.Response, url: str) -> requests.Response:
    """5xx and 429 are worth retrying; other 4xx are the user's to fix; 2xx and 3xx pass."""
    if response.status_code >= 500 or response.status_code == 429:
        raise _Transient(f"HTTP {response.status_code} {response.reason} from {url}")
    if response.status_code >= 400:
        raise SegflowError(f"HTTP {response.status_code} {response.reason} from {url}")
    return response


_RETRYABLE = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,  # raised by raw reads: connection reset or closed early
    urllib3.exceptions.ReadTimeoutError,
    _Transient,
)


def _with_retries(action: Callable[[], T], what: str, retry: RetryPolicy) -> T:
    """Run `action`, again after transient network failures, waiting twice as long each time."""
    for attempt in range(1, retry.attempts + 1):
        try:
            return action()
        except _RETRYABLE as error:
            reason = _describe(error)
            if attempt == retry.attempts:
                raise SegflowError(f"{what} failed after {attempt} attempts: {reason}") from None
            wait = retry.first_wait_s * 2 ** (attempt - 1)
            log.warning("%s: %s; attempt %d of %d in %.1f s", what, reason, attempt + 1, retry.attempts, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _describe(error: Exception) -> str:
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return f"timed out ({error.__class__.__name__})"
    if isinstance(error, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)):
        return f"the connection broke in the middle of the response ({error})"
    return str(error)
