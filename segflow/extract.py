"""Unpack the Cityscapes packages into the dataset layout, all or nothing.

The zips are extracted into a staging folder beside the dataset root (`atomic.staging_dir`), the
result is checked with `segflow.layout.validate`, the root's other entries (a `gtCoarse/`, notes)
are added to it as hard links (no data is copied), and then the staging folder and the root are
exchanged in one atomic step. So at every moment, a kill included, the root is either the old
one or the new one, whole; a bad zip or an incomplete layout raises before anything the user has
is touched. The next run removes the staging folder a killed run left, and says so.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from segflow import atomic, layout
from segflow.cityscapes import SPLITS
from segflow.errors import SegflowError

log = logging.getLogger(__name__)


def extract(zips: Iterable[str | os.PathLike], data_root: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> Path:
    """Extract `zips` into `data_root` (the folder that will hold gtFine/ and leftImg8bit/).

    Example:
        extract(fetch_packages("cityscapes", "downloads/"), "data/cityscapes")
    """
    zips, given = [Path(path) for path in zips], Path(data_root)
    if not zips:
        raise SegflowError("no zip files to extract")
    for zip_path in zips:
        if not zip_path.is_file():
            raise SegflowError(f"no such file: {zip_path}")
    data_root = given.resolve() if given.is_symlink() else given  # stage beside the real folder
    if data_root.exists() and not data_root.is_dir():
        raise SegflowError(f"dataset root {data_root} exists and is not a folder")
    name = glob.escape(data_root.name)
    atomic.remove_leftovers(data_root, log, f".{name}.*.extracting", f".{name}.*.replaced")  # and older versions' names
    with atomic.staging_dir(data_root, what="the extracted dataset") as staging:
        for zip_path in zips:
            _extract_zip(zip_path, staging)
        layout.validate(staging, splits)
        _link_other_entries(data_root, staging)
    log.info("extracted %d package(s) into %s", len(zips), data_root)
    return given


def _extract_zip(zip_path: Path, staging: Path) -> None:
    log.info("extracting %s", zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging)  # names with `..` or a leading `/` are made safe by zipfile
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise SegflowError(f"{zip_path} is not a valid zip file ({error}); delete it and download it again") from None


def _link_other_entries(data_root: Path, staging: Path) -> None:
    """Add the entries of `data_root` that the packages do not replace to `staging`, as hard links
    (folders recreated, symlinks kept as symlinks), so the exchange keeps them."""
    if not data_root.is_dir():
        return
    for entry in sorted(data_root.iterdir()):
        target = staging / entry.name
        if target.exists() or target.is_symlink():
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True, copy_function=os.link)
            elif entry.is_symlink():
                os.symlink(os.readlink(entry), target)
            else:
                os.link(entry, target)
        except (OSError, shutil.Error) as error:
            raise SegflowError(
                f"cannot keep {entry} in the new {data_root} ({error}); move it out of the dataset folder and run again"
            ) from None
