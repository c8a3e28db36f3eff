"""Unpack the Cityscapes packages into the dataset layout, all or nothing.

The zips are extracted into a temporary folder beside the dataset, the result is checked with
`segflow.layout.validate`, and only then are its top-level folders (`gtFine/`, `leftImg8bit/`,
plus the packages' README and license.txt) renamed into place. A bad zip or an incomplete layout
raises before anything the user has is touched; other folders in the dataset root stay as they are.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from segflow import layout
from segflow.cityscapes import SPLITS
from segflow.errors import SegflowError

log = logging.getLogger(__name__)


def extract(zips: Iterable[str | os.PathLike], data_root: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> Path:
    """Extract `zips` into `data_root` (the folder that will hold gtFine/ and leftImg8bit/).

    Example:
        extract(fetch_packages("cityscapes", "downloads/"), "data/cityscapes")
    """
    zips, data_root = [Path(path) for path in zips], Path(data_root)
    if not zips:
        raise SegflowError("no zip files to extract")
    data_root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=data_root.parent, prefix=f".{data_root.name}.", suffix=".extracting"))
    try:
        for zip_path in zips:
            _extract_zip(zip_path, staging)
        layout.validate(staging, splits)
        _move_entries_into_place(staging, data_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("extracted %d package(s) into %s", len(zips), data_root)
    return data_root


def _extract_zip(zip_path: Path, staging: Path) -> None:
    if not zip_path.is_file():
        raise SegflowError(f"no such file: {zip_path}")
    log.info("extracting %s", zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging)  # names with `..` or a leading `/` are made safe by zipfile
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise SegflowError(f"{zip_path} is not a valid zip file ({error}); delete it and download it again") from None


def _move_entries_into_place(staging: Path, data_root: Path) -> None:
    """Rename each top-level entry of `staging` into `data_root`; undo all of it if one fails."""
    data_root.mkdir(exist_ok=True)
    retired = Path(tempfile.mkdtemp(dir=data_root.parent, prefix=f".{data_root.name}.", suffix=".replaced"))
    moved: list[str] = []
    try:
        for entry in sorted(staging.iterdir()):
            target = data_root / entry.name
            if target.exists() or target.is_symlink():
                os.replace(target, retired / entry.name)
            os.replace(entry, target)
            moved.append(entry.name)
    except OSError as error:
        for name in moved:
            os.replace(data_root / name, staging / name)
        for old in retired.iterdir():
            os.replace(old, data_root / old.name)
        shutil.rmtree(retired, ignore_errors=True)
        raise SegflowError(f"cannot move the extracted dataset into {data_root}: {error}") from None
    shutil.rmtree(retired, ignore_errors=True)
