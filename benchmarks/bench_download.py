"""Download speed: segflow's downloader next to the official cityscapesScripts loop, same server.

Both fetch one package of random bytes from the local Cityscapes-like site
(`tests/cityscapes_site.py`) over 127.0.0.1, logged in, and check its MD5:
- segflow: `download_resumable` (8 MiB raw reads into `NAME.part`, MD5 pass, rename);
- official: what `cityscapesscripts/download/downloader.py` does, `iter_content(chunk_size=1024)`
  with a tqdm update per KiB, then its MD5 pass in 4 KiB reads.
The ratio shows what the chunk size is worth; on a real link the network is the limit, so this
is the client's own CPU cost per byte (which on a slow 2-core box can become the limit).

    .venv/bin/python benchmarks/bench_download.py --quick     # 64 MiB
    .venv/bin/python benchmarks/bench_download.py --mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from tqdm import tqdm

from segflow.download import CityscapesSite, Credentials, download_resumable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test site, not installed
from cityscapes_site import CityscapesSiteServer  # noqa: E402

NAME = "leftImg8bit_trainvaltest.zip"


def official_download(site: CityscapesSite, url: str, destination: Path, md5: str) -> None:
    """The official downloader's loop, unchanged in substance."""
    with open(destination, "wb") as stream:
        with site.session.get(url, allow_redirects=False, stream=True) as response:
            response.raise_for_status()
            with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, miniters=1, disable=True) as bar:
                for chunk in response.iter_content(chunk_size=1024):
                    stream.write(chunk)
                    bar.update(len(chunk))
    digest = hashlib.md5()
    with open(destination, "rb") as stream:
        for chunk in iter(lambda: stream.read(4096), b""):
            digest.update(chunk)
    assert digest.hexdigest() == md5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="package size in MiB")
    parser.add_argument("--quick", action="store_true", help="64 MiB")
    args = parser.parse_args()
    size_mib = 64 if args.quick else args.mib
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "site").mkdir()
        with zipfile.ZipFile(work / "site" / NAME, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("random.bin", os.urandom(size_mib * 1024 * 1024))
        with CityscapesSiteServer(work / "site", username="bench", password="bench-password") as server:
            site = CityscapesSite(Credentials("bench", "bench-password"), url=server.url)
            site.login()
            md5, package_id = site.md5(NAME), site.package(NAME).package_id
            url = f"{server.url}/file-handling/?packageID={package_id}"
            timings = {}
            for label, run in (
                ("segflow (8 MiB raw reads)", lambda dest: download_resumable(site.session, url, dest, md5=md5)),
                ("official (1 KiB iter_content)", lambda dest: official_download(site, url, dest, md5)),
            ):
                destination = work / label.split()[0] / NAME
                destination.parent.mkdir()
                started = time.perf_counter()
                run(destination)
                timings[label] = time.perf_counter() - started
                destination.unlink()
    print(f"package: {size_mib} MiB over 127.0.0.1, MD5 checked (server and client share the CPU)")
    for label, seconds in timings.items():
        print(f"  {label:32s} {seconds:6.2f} s  {size_mib / seconds:7.1f} MiB/s")
    segflow_s, official_s = timings.values()
    print(f"  speed-up: {official_s / segflow_s:.1f}x")


if __name__ == "__main__":
    main()
