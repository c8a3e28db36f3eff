"""The opt-in image tests (SEGFLOW_DOCKER_TESTS=1): a Docker engine, the local bases the image is
built on where registries are out of reach, and the image build from docker/Dockerfile.

Needs root, `apt-get install docker.io debootstrap`, PyPI and a Debian mirror. The first build
takes ~10 min and ~6 GB of disk; with SEGFLOW_DOCKER_ROOT=DIR the engine keeps its images in DIR,
and a later run reuses an image whose build context and arguments are unchanged (its tag is their
hash). With DOCKER_HOST set, that running engine is used instead of a private one.

The private engine stores layers with overlay2; where its data root cannot hold overlay mounts
(e.g. inside another container) set SEGFLOW_DOCKER_STORAGE_DRIVER=vfs (much slower: every build
step and every container copies the whole image).

Registries are out of reach here, so a Debian 12 root file system (with Debian's Python 3.11)
stands in for the CUDA base and uv's PyPI wheel for uv's image. The image is built with the CPU
build of TensorFlow (TENSORFLOW_EXTRA=cpu); the Dockerfile is the one the GPU build uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from servers import stop

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
# What docker/Dockerfile.dockerignore lets through (the legacy builder ignores that file).
BUILD_CONTEXT = ("pyproject.toml", "constraints.txt", "README.md", "docker/Dockerfile", "docker/constraints-image.txt", "segflow", "segflow_prefect")
BASE_IMAGE = "segflow-test/base:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

docker_tests = pytest.mark.skipif(
    os.environ.get("SEGFLOW_DOCKER_TESTS") != "1", reason="builds images on a Docker engine: set SEGFLOW_DOCKER_TESTS=1"
)


def run(arguments: list[str], env: dict | None = None, **options) -> str:
    result = subprocess.run(arguments, env=env, capture_output=True, text=True, **options)
    assert result.returncode == 0, f"{' '.join(arguments)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def image_exists(tag: str, env: dict) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], env=env, capture_output=True).returncode == 0


@contextlib.contextmanager
def engine():
    """Yields the environment for `docker` commands: DOCKER_HOST's engine if set, else a private
    dockerd (root; no bridge, no iptables) on its own socket, stopped and its mounts undone
    afterwards. Its data root is SEGFLOW_DOCKER_ROOT (kept) or a temporary folder (removed)."""
    if os.environ.get("DOCKER_HOST"):
        yield {**os.environ, "DOCKER_BUILDKIT": "0"}
        return
    for command in ("dockerd", "docker", "debootstrap"):
        assert shutil.which(command), f"SEGFLOW_DOCKER_TESTS=1 needs `{command}`: apt-get install docker.io debootstrap"
    assert os.geteuid() == 0, "dockerd and debootstrap need root (or set DOCKER_HOST to a running engine)"
    root = Path(tempfile.mkdtemp(prefix="segflow-dockerd-", dir="/tmp"))  # short: the socket path has a length limit
    data_root = Path(os.environ.get("SEGFLOW_DOCKER_ROOT") or root / "data")
    log = open(root / "dockerd.log", "w")
    daemon = subprocess.Popen(
        ["dockerd", f"--storage-driver={os.environ.get('SEGFLOW_DOCKER_STORAGE_DRIVER', 'overlay2')}", "--iptables=false", "--ip6tables=false", "--bridge=none",
         f"--data-root={data_root}", f"--exec-root={root}/exec", f"--pidfile={root}/dockerd.pid",
         "-H", f"unix://{root}/docker.sock"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    env = {**os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock", "DOCKER_BUILDKIT": "0", "DOCKER_CONFIG": str(root / "config")}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "version"], env=env, capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, (root / "dockerd.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        stop(daemon)
        log.close()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if str(root) in line or str(data_root) in line]  # fmt: skip
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def docker_import(directory: Path, tag: str, env: dict, *changes: str) -> None:
    archive = subprocess.Popen(["tar", "-C", str(directory), "-c", "."], stdout=subprocess.PIPE)
    arguments = ["docker", "import"] + [f"--change={change}" for change in changes] + ["-", tag]
    result = subprocess.run(arguments, stdin=archive.stdout, env=env, capture_output=True, text=True)
    archive.wait()
    assert result.returncode == 0 and archive.returncode == 0, result.stderr


def local_bases(env: dict, work: Path) -> dict:
    """Build arguments naming the locally made stand-ins for the CUDA base and uv's image (made
    unless the engine has them)."""
    if not image_exists(BASE_IMAGE, env):
        rootfs = work / "rootfs"
        run(["debootstrap", "--variant=minbase", "--include=python3.11,ca-certificates", "bookworm", str(rootfs), "http://deb.debian.org/debian"])
        # This machine reaches PyPI through a TLS-inspecting proxy: the base trusts the host's CAs.
        shutil.copy(CA_BUNDLE, rootfs / CA_BUNDLE.lstrip("/"))
        docker_import(rootfs, BASE_IMAGE, env, f"ENV SSL_CERT_FILE={CA_BUNDLE}")
        shutil.rmtree(rootfs, ignore_errors=True)

    [uv_version] = re.findall(r"^ARG UV_IMAGE=\S+:(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    uv_image = f"segflow-test/uv:{uv_version}"
    if not image_exists(uv_image, env):
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", f"uv=={uv_version}", "-d", str(work)])
        [wheel] = work.glob("uv-*.whl")
        uv_root = work / "uv"
        uv_root.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            [member] = [name for name in archive.namelist() if name.endswith("/scripts/uv")]
            (uv_root / "uv").write_bytes(archive.read(member))
        (uv_root / "uv").chmod(0o755)
        docker_import(uv_root, uv_image, env)
    return {
        "BASE_IMAGE": BASE_IMAGE,
        "UV_IMAGE": uv_image,
        "PYTHON_VERSION": "3.11",  # Debian's, found by uv instead of a download from GitHub
        "TENSORFLOW_EXTRA": "cpu",
    }


def _context_files() -> list[Path]:
    files = []
    for name in BUILD_CONTEXT:
        path = REPO / name
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [file for file in candidates if file.is_file() and not _ignored(file)]
    return files


def _ignored(path: Path) -> bool:
    return any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts) or path.suffix == ".pyc"


def build_image(target: str, build_arguments: dict, env: dict, work: Path) -> str:
    """Build `target` of docker/Dockerfile from the BUILD_CONTEXT files; returns its tag, a hash
    of those files and the arguments, so an unchanged image is not built again."""
    digest = hashlib.sha256(repr(sorted(build_arguments.items())).encode())
    files = _context_files()
    for file in files:
        digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes())
    tag = f"segflow-test/{target}:{digest.hexdigest()[:12]}"
    if image_exists(tag, env):
        return tag
    context = work / f"context-{target}"
    for file in files:
        target_path = context / file.relative_to(REPO)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, target_path)
    arguments = ["docker", "build", "--network=host", "--file", str(context / "docker/Dockerfile"), "--target", target, "--tag", tag]
    arguments += [f"--build-arg={name}={value}" for name, value in build_arguments.items()]
    run(arguments + [str(context)], env=env, timeout=3600)
    shutil.rmtree(context, ignore_errors=True)
    return tag
