"""Get a Cityscapes root folder from a data source: generate it, or fetch the packages and extract.

`prepare(source, work_dir)` is what the pipeline's first step calls. Its result is a folder in
the Cityscapes layout; `fingerprint(source)` says cheaply whether the source changed since (the
packages' MD5s or stat), so orchestrators can skip the step when it did not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from segflow import atomic, download, synthetic
from segflow.cityscapes import PACKAGES

SYNTHETIC = "synthetic"
SOURCE_FILE = ".segflow-source.json"


def prepare(
    source: str,
    work_dir: str | os.PathLike,
    *,
    synthetic_images: tuple[int, int] = (16, 6),
    synthetic_size: tuple[int, int] = (128, 256),
    seed: int = 0,
    credentials: download.Credentials | None = None,
) -> Path:
    """A Cityscapes root for `source` under `work_dir/data/`, reused when already complete.

    Sources: 'synthetic' (generated, deterministic for `seed`), and everything
    `segflow.download.fetch_packages` accepts ('cityscapes', s3://, https://, file://, a folder).
    """
    work_dir = Path(work_dir)
    if source != SYNTHETIC and download.parse_source(source)[0] == "site":
        return _prepare_from_site(source, work_dir, credentials)
    key = fingerprint(source, synthetic_images=synthetic_images, synthetic_size=synthetic_size, seed=seed,
                      credentials=credentials)  # fmt: skip
    data_root = data_root_for(source, work_dir, key)
    if is_prepared(data_root, key):
        return data_root
    if source == SYNTHETIC:
        (train, val), (height, width) = synthetic_images, synthetic_size
        if data_root.exists():  # an interrupted or older generation: generate it again
            import shutil

            shutil.rmtree(data_root)
        synthetic.write_dataset(data_root, train=train, val=val, test=min(2, val), height=height, width=width, seed=seed)
    else:
        from segflow.extract import extract

        zips = download.fetch_packages(source, work_dir / "downloads", PACKAGES, credentials)
        extract(zips, data_root)
    atomic.write_json(data_root / SOURCE_FILE, {"source": _redacted(source), "fingerprint": key})
    return data_root


def _prepare_from_site(source: str, work_dir: Path, credentials: download.Credentials | None) -> Path:
    """The website's packages are fixed releases: data extracted from this source once is reused
    without logging in again; otherwise one login serves the MD5s, the download and the fingerprint."""
    data_root = data_root_for(source, work_dir, "")
    marker = data_root / SOURCE_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("source") == _redacted(source):
        return data_root
    kind, location = download.parse_source(source)
    site = download.CityscapesSite(credentials or download.Credentials.from_env(), url=location)
    site.login()
    (work_dir / "downloads").mkdir(parents=True, exist_ok=True)
    zips = site.download_all(PACKAGES, work_dir / "downloads")
    packages = {name: f"md5:{site.md5(name)}" for name in PACKAGES}
    key = hashlib.sha256(json.dumps({"kind": kind, "location": _redacted(location), "packages": packages},
                                    sort_keys=True).encode()).hexdigest()  # fmt: skip
    from segflow.extract import extract

    extract(zips, data_root)
    atomic.write_json(data_root / SOURCE_FILE, {"source": _redacted(source), "fingerprint": key})
    return data_root


def data_root_for(source: str, work_dir: str | os.PathLike, key: str) -> Path:
    """Where `prepare` puts the data of `source` with fingerprint `key`."""
    return Path(work_dir) / "data" / ("synthetic-" + key[:12] if source == SYNTHETIC else "cityscapes")


def is_prepared(data_root: Path, key: str) -> bool:
    """Whether `data_root` holds complete data with fingerprint `key` (its marker is written last)."""
    marker = Path(data_root) / SOURCE_FILE
    return marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == key


def fingerprint(
    source: str,
    *,
    synthetic_images: tuple[int, int] = (16, 6),
    synthetic_size: tuple[int, int] = (128, 256),
    seed: int = 0,
    credentials: download.Credentials | None = None,
) -> str:
    """A hash that changes when the data behind `source` changes.

    Synthetic: its settings. The website: the MD5s it publishes. S3: the stored MD5s (or ETags).
    HTTP: ETag and length. A local folder: each zip's size and modification time.
    """
    if source == SYNTHETIC:
        # The generator's own source is part of it: a changed generator makes different data.
        generator = synthetic.generator_digest()
        facts = {"synthetic": [list(synthetic_images), list(synthetic_size), seed, generator]}
    else:
        kind, location = download.parse_source(source)
        packages = download.package_fingerprints(source, PACKAGES, credentials)
        facts = {"kind": kind, "location": _redacted(location), "packages": packages}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _redacted(text: str) -> str:
    """A URL without any `user:password@` part, safe to store and log."""
    import urllib.parse

    parts = urllib.parse.urlsplit(text)
    if parts.password or parts.username:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    return text
