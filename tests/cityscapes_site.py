"""A local HTTP server that answers like www.cityscapes-dataset.com, serving zips from a folder.

Why: the real site needs an account and serves 11 GB; the download tests and benchmark need
the same protocol on 127.0.0.1. The protocol is the one cityscapesScripts' official
downloader speaks (`cityscapesscripts/download/downloader.py`):

    GET  /login                              the login form
    POST /login  username, password, submit  302 and a session cookie, or 200 and the form again
    GET  /downloads/?list                    JSON [{"packageID", "name", "size", "thirdparty"}]
    GET  /md5-sum/?packageID=N               "<md5>  <name>"
    GET  /file-handling/?packageID=N         the zip; honours `Range: bytes=N-`

The last three need the session cookie (without it they redirect to /login, as the site does).
Switches on the server object make it misbehave the ways a real download can: ignore Range,
drop the connection partway through a file, serve corrupt bytes, stall, or answer 503. Every request is
recorded with the number of body bytes sent, so tests can check what really went over the wire.

Example:
    with CityscapesSiteServer("zips/", username="alice", password="s3cret") as site:
        fetch_packages(f"cityscapes+{site.url}", "downloads/", credentials=...)
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import secrets
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

# The site's package ids, as linked from its downloads page; other zips get ids from 1000 on.
PACKAGE_IDS = {
    "gtFine_trainvaltest.zip": 1,
    "gtCoarse.zip": 2,
    "leftImg8bit_trainvaltest.zip": 3,
    "leftImg8bit_trainextra.zip": 4,
    "rightImg8bit_trainvaltest.zip": 5,
    "rightImg8bit_trainextra.zip": 6,
    "disparity_trainvaltest.zip": 7,
    "camera_trainvaltest.zip": 8,
    "camera_trainextra.zip": 9,
    "vehicle_trainvaltest.zip": 10,
    "vehicle_trainextra.zip": 11,
    "leftImg8bit_demoVideo.zip": 12,
    "gtBbox_cityPersons_trainval.zip": 28,
}
SESSION_COOKIE = "PHPSESSID"
_SEND_CHUNK = 64 * 1024
_LOGIN_FORM = """<!DOCTYPE html><html><body><h1>Login</h1>{error}
<form method="post" action="/login/"><input name="username"><input name="password" type="password">
<input type="submit" name="submit" value="Login"></form></body></html>"""


@dataclass
class Request:
    """One request the server answered: `range` is the Range header, `body_bytes` what was sent."""

    method: str
    path: str
    query: dict[str, str]
    range: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class CityscapesSiteServer:
    """The fake site; start and stop it with `with`. Flip the switches at any time.

    Args:
        packages_dir: folder whose `*.zip` files are the packages offered.
        username, password: the one account that can log in.
        honour_range: False makes file downloads ignore `Range` and answer 200 with the whole file.
        drop_after_bytes: close the connection after this many body bytes of the next file
            response, once (then it resets to None).
        corrupt: package names served with one byte flipped (their md5 endpoint stays right).
        stall_seconds: wait this long before answering a file request (to test timeouts).
        unavailable_times: answer the next N file requests with 503 Service Unavailable.
    """

    packages_dir: Path
    username: str = "segflow"
    password: str = field(default="cityscapes-password", repr=False)
    honour_range: bool = True
    drop_after_bytes: int | None = None
    corrupt: set[str] = field(default_factory=set)
    stall_seconds: float = 0.0
    unavailable_times: int = 0
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self.packages_dir = Path(self.packages_dir)
        self._sessions: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the site is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> CityscapesSiteServer:
        handler = type("Handler", (_Handler,), {"site": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="cityscapes-site", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> CityscapesSiteServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- what the site offers ---

    def packages(self) -> dict[str, int]:
        """`{name: packageID}` of the zips in `packages_dir`."""
        names = sorted(path.name for path in self.packages_dir.glob("*.zip"))
        extra_ids = iter(range(1000, 1000 + len(names)))
        return {name: PACKAGE_IDS.get(name) or next(extra_ids) for name in names}

    def file_requests(self, name: str | None = None) -> list[Request]:
        """The recorded file downloads, of one package or of all."""
        ids = {str(package_id) for package, package_id in self.packages().items() if name in (None, package)}
        return [r for r in self.requests if r.path.startswith("/file-handling") and r.query.get("packageID") in ids]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _new_session(self) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._sessions.add(token)
        return token

    def _is_logged_in(self, cookie_header: str | None) -> bool:
        cookies = dict(
            part.strip().split("=", 1) for part in (cookie_header or "").split(";") if "=" in part
        )
        with self._lock:
            return cookies.get(SESSION_COOKIE) in self._sessions


class _Handler(BaseHTTPRequestHandler):
    site: CityscapesSiteServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("cityscapes site: " + format, *args)

    # --- routing ---

    def do_GET(self):
        request = self._begin()
        route = request.path.rstrip("/")
        if route == "/login":
            return self._send(request, 200, _LOGIN_FORM.format(error="").encode(), "text/html")
        if route in ("/downloads", "/md5-sum", "/file-handling") and not self.site._is_logged_in(
            self.headers.get("Cookie")
        ):
            return self._send(request, 302, b"", "text/html", {"Location": "/login/"})
        if route == "/downloads" and "list" in request.query:
            listing = [
                {"packageID": str(package_id), "name": name, "size": _size_text(self._path(name)), "thirdparty": "0"}
                for name, package_id in self.site.packages().items()
            ]
            return self._send(request, 200, json.dumps(listing).encode(), "application/json")
        name = self._package_name(request.query.get("packageID"))
        if route in ("/md5-sum", "/file-handling") and name is None:
            return self._send(request, 404, b"no such package", "text/plain")
        if route == "/md5-sum":
            return self._send(request, 200, f"{_md5(self._path(name))}  {name}\n".encode(), "text/plain")
        if route == "/file-handling":
            return self._send_package(request, name)
        return self._send(request, 404, b"not found", "text/plain")

    def do_POST(self):
        request = self._begin()
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        fields = {key: values[0] for key, values in form.items()}
        if request.path.rstrip("/") != "/login":
            return self._send(request, 404, b"not found", "text/plain")
        if (
            fields.get("submit") == "Login"
            and fields.get("username") == self.site.username
            and secrets.compare_digest(fields.get("password", ""), self.site.password)
        ):
            cookie = f"{SESSION_COOKIE}={self.site._new_session()}; Path=/; HttpOnly"
            return self._send(request, 302, b"", "text/html", {"Location": "/", "Set-Cookie": cookie})
        # The site shows the form again with a message, status 200, no redirect.
        error = f"<p class='error'>Login failed for {html.escape(fields.get('username', ''))}.</p>"
        return self._send(request, 200, _LOGIN_FORM.format(error=error).encode(), "text/html")

    # --- helpers ---

    def _begin(self) -> Request:
        url = urllib.parse.urlsplit(self.path)
        query = {key: values[0] for key, values in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        request = Request(self.command, url.path, query, self.headers.get("Range"))
        self.site._record(request)
        return request

    def _path(self, name: str) -> Path:
        return self.site.packages_dir / name

    def _package_name(self, package_id: str | None) -> str | None:
        return next((name for name, pid in self.site.packages().items() if str(pid) == package_id), None)

    def _send(self, request: Request, status: int, body: bytes, content_type: str, headers=None) -> None:
        request.status = status
        self.send_response(status)
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        request.body_bytes = len(body)

    def _send_package(self, request: Request, name: str) -> None:
        site, path = self.site, self._path(name)
        with site._lock:
            unavailable, site.unavailable_times = site.unavailable_times > 0, max(0, site.unavailable_times - 1)
        if unavailable:
            return self._send(request, 503, b"busy, try again later", "text/plain")
        if site.stall_seconds and site._stopping.wait(site.stall_seconds):
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.range or "")
        if site.honour_range and match:
            start, end, status = int(match[1]), int(match[2] or size - 1), 206
            if start >= size:
                return self._send(request, 416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
        headers = {
            "Content-Disposition": f'attachment; filename="{name}"',
            "Accept-Ranges": "bytes" if site.honour_range else "none",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        request.status = status
        self.send_response(status)
        for key, value in {"Content-Type": "application/zip", "Content-Length": str(end - start + 1), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        limit, site.drop_after_bytes = site.drop_after_bytes, None
        flip_at = size // 2 if name in site.corrupt else -1
        try:
            with open(path, "rb") as stream:
                stream.seek(start)
                position = start
                while position <= end and (limit is None or request.body_bytes < limit):
                    want = min(_SEND_CHUNK, end - position + 1)
                    if limit is not None:
                        want = min(want, limit - request.body_bytes)
                    chunk = bytearray(stream.read(want))
                    if position <= flip_at < position + len(chunk):
                        chunk[flip_at - position] ^= 0xFF
                    self.wfile.write(chunk)
                    request.body_bytes += len(chunk)
                    position += len(chunk)
            if limit is not None and position <= end:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _size_text(path: Path) -> str:
    """Sizes as the site lists them: `241MB`, `11GB`, `12KB`."""
    size = path.stat().st_size
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + unit
    return f"{max(1, round(size / 1024))}KB"
