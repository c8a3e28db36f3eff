"""Synthetic Cityscapes: street scenes in the exact layout and file formats of the real packages.

Why: the real dataset needs a registration and an 11 GB download, so tests, the demo and the
benchmarks run on data made here instead. Every file is what the real package holds: RGB
`leftImg8bit` PNGs, `gtFine` polygons JSON, 8-bit labelIds, 16-bit instanceIds and RGBA colour
PNGs, the label images rasterised from the JSON polygons exactly as cityscapesScripts'
`json2labelImg` / `json2instanceImg` do (same drawing order, same instance numbering). The image
colours and textures follow the classes, so a small network learns them in a few dozen steps.
Everything is a pure function of (seed, split, index): byte-identical for a seed.

This module writes the files; `segflow.synthetic_scene` draws the scenes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from segflow import atomic
from segflow.cityscapes import (
    COLOR_SUFFIX,
    IMAGE_DIR,
    IMAGE_SUFFIX,
    INSTANCE_IDS_SUFFIX,
    LABEL_DIR,
    LABEL_ID_TO_COLOR,
    LABEL_IDS_SUFFIX,
    PACKAGES,
    POLYGONS_SUFFIX,
    SPLITS,
)
from segflow.errors import SegflowError
from segflow.synthetic_scene import TEST_SPLIT_LABELS, SyntheticExample, rasterize, render_example

__all__ = ["CITIES", "TEST_SPLIT_LABELS", "SyntheticExample", "rasterize", "render_example", "write_dataset", "write_packages"]

logger = logging.getLogger(__name__)

# The real cities of each split of the Cityscapes fine annotations.
CITIES: Mapping[str, tuple[str, ...]] = {
    "train": (
        "aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg", "hanover",
        "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich",
    ),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}  # fmt: skip
# gtFine annotates the 20th frame of each 30-frame snippet: `aachen_000000_000019`.
FRAME = 19
MIN_SIZE = 16
_MAX_THREADS = 8
# zlib level 1: 4x faster than the default 6 on the noisy photo (and no larger), 30% faster on labels.
_COMPRESS_LEVEL = 1

def write_dataset(
    out_dir,
    *,
    train: int = 2,
    val: int = 1,
    test: int = 1,
    height: int = 64,
    width: int = 128,
    seed: int = 0,
    zips: bool = False,
    cities: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write a synthetic dataset in the Cityscapes layout under `out_dir` and return `out_dir`.

    Images go round-robin over the split's cities (`CITIES`, or `cities` to override some
    splits). The tree is built in a staging folder beside it (`atomic.staging_dir`) and renamed into place, so
    `out_dir` either holds the complete dataset or does not exist; an existing non-empty
    `out_dir` is an error. `zips=True` also writes `gtFine_trainvaltest.zip` and
    `leftImg8bit_trainvaltest.zip` laid out like the real downloads.

    Example:
        write_dataset("data/synthetic", train=8, val=4, test=2, height=256, width=512)
    """
    counts = {"train": train, "val": val, "test": test}
    split_cities = _check_arguments(counts, height, width, seed, cities)
    out_dir = Path(out_dir)
    target = Path(os.path.abspath(out_dir))
    _check_output(target)
    atomic.remove_leftovers(target, logger, f".{glob.escape(target.name)}.*.partial")

    def write_one(job: tuple[str, int]) -> None:
        split, index = job
        city, sequence = _city_and_sequence(split_cities[split], index)
        example = render_example(split, index, height=height, width=width, seed=seed)
        _write_example(staging, split, city, f"{city}_{sequence:06d}_{FRAME:06d}", example)

    with atomic.staging_dir(target, what="the synthetic dataset") as staging:
        jobs = [(split, index) for split in SPLITS for index in range(counts[split])]
        # Frames are independent (each has its own seed) and numpy, ImageDraw and the PNG
        # encoder release the GIL, so threads use every core and the output stays the same.
        pool = ThreadPoolExecutor(max_workers=min(_MAX_THREADS, os.cpu_count() or 1))
        try:
            for _ in _progress(pool.map(write_one, jobs), total=len(jobs)):
                pass
        finally:
            pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, start no further frames
        if zips:
            write_packages(staging, staging)
    return out_dir


def generator_digest() -> str:
    """SHA-256 of the generator's source (this module and `segflow.synthetic_scene`): a changed
    generator makes different data, so it is part of a synthetic dataset's fingerprint."""
    from segflow import synthetic_scene

    digest = hashlib.sha256()
    for module_file in (__file__, synthetic_scene.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()


def write_packages(dataset_dir, out_dir) -> list[Path]:
    """Zip `dataset_dir`'s gtFine/ and leftImg8bit/ trees as the two real trainvaltest packages.

    Each zip holds its top-level folder plus `README` and `license.txt`, as the downloads do.
    Entries are sorted and time-stamped 1980-01-01, so the zips are byte-identical for a seed.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    written = []
    for package, top_dir in zip(PACKAGES, (LABEL_DIR, IMAGE_DIR)):
        target = out_dir / package
        with atomic.temporary_file(target) as partial, zipfile.ZipFile(partial, "w") as archive:
            _add_to_zip(archive, "README", _README.format(top_dir=top_dir).encode())
            _add_to_zip(archive, "license.txt", _LICENSE.encode())
            for path in sorted((dataset_dir / top_dir).rglob("*")):
                if path.is_file():
                    _add_to_zip(archive, path.relative_to(dataset_dir).as_posix(), path.read_bytes())
        written.append(target)
    return written


# === Arguments and output ===


def _check_arguments(counts, height, width, seed, cities) -> dict[str, tuple[str, ...]]:
    for name, value in {**counts, "height": height, "width": width, "seed": seed}.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise SegflowError(f"{name} must be a non-negative integer, got {value!r}")
    if sum(counts.values()) == 0:
        raise SegflowError("train, val and test are all 0: nothing to write")
    if height < MIN_SIZE or width < MIN_SIZE:
        raise SegflowError(f"image size {height}x{width} is too small; height and width must be >= {MIN_SIZE}")
    split_cities = dict(CITIES)
    for split, names in (cities or {}).items():
        if split not in SPLITS:
            raise SegflowError(f"cities: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        names = tuple([names] if isinstance(names, str) else names)
        bad = [name for name in names if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]+", name)]
        if not names or bad:
            raise SegflowError(f"cities[{split!r}] must be lowercase letters/digits names, got {list(names)!r}")
        split_cities[split] = names
    return split_cities


def _check_output(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SegflowError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise SegflowError(f"output directory {out_dir} already exists and is not empty; remove it or pick another")


def _city_and_sequence(cities: Sequence[str], index: int) -> tuple[str, int]:
    return cities[index % len(cities)], index // len(cities)


def _progress(results, total: int):
    from tqdm import tqdm

    return tqdm(results, total=total, desc="synth", unit="image", disable=None)  # only on a terminal


# === Files ===


def _write_example(root: Path, split: str, city: str, stem: str, example: SyntheticExample) -> None:
    image_dir = root / IMAGE_DIR / split / city
    label_dir = root / LABEL_DIR / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for array, path in (
        (example.image, image_dir / f"{stem}{IMAGE_SUFFIX}"),
        (example.label_ids, label_dir / f"{stem}{LABEL_IDS_SUFFIX}"),
        (example.instance_ids, label_dir / f"{stem}{INSTANCE_IDS_SUFFIX}"),
        (_COLOR_LUT[example.label_ids], label_dir / f"{stem}{COLOR_SUFFIX}"),
    ):
        Image.fromarray(array).save(path, compress_level=_COMPRESS_LEVEL)
    (label_dir / f"{stem}{POLYGONS_SUFFIX}").write_text(json.dumps(example.annotation, indent=4))


def _add_to_zip(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    entry.external_attr = 0o644 << 16
    # PNGs are already deflated; storing them keeps zipping full-size data fast.
    entry.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
    archive.writestr(entry, data)


_COLOR_LUT = np.concatenate([LABEL_ID_TO_COLOR, np.full((256, 1), 255, np.uint8)], axis=1)  # RGBA, opaque

_README = """Synthetic Cityscapes ({top_dir})

Made by `segflow synth`: procedurally drawn street scenes in the layout and file formats of the
Cityscapes dataset (https://www.cityscapes-dataset.com). No Cityscapes image or annotation is
included. Labels use the official label table; labelIds, instanceIds and color images are
rasterised from the *_gtFine_polygons.json files as cityscapesScripts' json2labelImg does.
"""
_LICENSE = """Synthetic data generated by segflow. It contains no part of the Cityscapes dataset
and may be used, copied and redistributed without restriction.
"""
