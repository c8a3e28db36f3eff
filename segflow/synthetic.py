"""Synthetic Cityscapes: street scenes in the exact layout and file formats of the real packages.

Why: the real dataset needs a registration and an 11 GB download, so tests, the demo and the
benchmarks run on data made here instead. Every file is what the real package holds: RGB
`leftImg8bit` PNGs, `gtFine` polygons JSON, 8-bit labelIds, 16-bit instanceIds and RGBA colour
PNGs, the label images rasterised from the JSON polygons exactly as cityscapesScripts'
`json2labelImg` / `json2instanceImg` do (same drawing order, same instance numbering). The image
colours and textures follow the classes, so a small network learns them in a few dozen steps.
Everything is a pure function of (seed, split, index): byte-identical for a seed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

from segflow import atomic
from segflow.cityscapes import (
    COLOR_SUFFIX,
    IMAGE_DIR,
    IMAGE_SUFFIX,
    INSTANCE_IDS_SUFFIX,
    LABEL_BY_NAME,
    LABEL_DIR,
    LABEL_ID_TO_COLOR,
    LABEL_IDS_SUFFIX,
    LABELS,
    PACKAGES,
    POLYGONS_SUFFIX,
    SPLITS,
)
from segflow.errors import SegflowError

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
# The public test annotations carry only these void labels (everything else is 0, unlabeled).
TEST_SPLIT_LABELS = frozenset({"ego vehicle", "rectification border", "out of roi"})
MIN_SIZE = 16
_NO_OWNER = 0xFFFF  # larger than any instanceId (33999), so it never matches a pixel
_MAX_THREADS = 8
# zlib level 1: 4x faster than the default 6 on the noisy photo (and no larger), 30% faster on labels.
_COMPRESS_LEVEL = 1


class SyntheticExample(NamedTuple):
    """One synthetic frame in memory: what the four gtFine files and the leftImg8bit PNG hold."""

    annotation: dict  # the polygons JSON: {"imgHeight", "imgWidth", "objects": [{"label", "polygon"}]}
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_ids: np.ndarray  # (H, W) uint8
    instance_ids: np.ndarray  # (H, W) uint16


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


def render_example(split: str, index: int, *, height: int = 64, width: int = 128, seed: int = 0) -> SyntheticExample:
    """Make frame `index` of `split` in memory; `write_dataset` writes exactly these arrays.

    The test split gets a full street image but, as in the real package, labels with only the
    void regions (ego vehicle, out of roi, rectification border).
    """
    if split not in SPLITS:
        raise SegflowError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    objects, details = _street_scene(rng, height, width)
    scene, kept = _annotation(objects, height, width)
    details = [(kept[owner], points, color) for owner, points, color in details if kept[owner] is not None]
    label_ids, instance_ids = rasterize(scene)
    image = _render_image(rng, scene, label_ids, instance_ids, details)
    if split == "test":
        scene = {**scene, "objects": [obj for obj in scene["objects"] if obj["label"] in TEST_SPLIT_LABELS]}
        label_ids, instance_ids = rasterize(scene)
    return SyntheticExample(scene, image, label_ids, instance_ids)


def rasterize(annotation: dict) -> tuple[np.ndarray, np.ndarray]:
    """Draw a polygons annotation into (labelIds uint8, instanceIds uint16) images.

    Same rules as cityscapesScripts' `json2labelImg` and `json2instanceImg`: background
    `unlabeled`, objects drawn in order (later on top), `...group` labels count as their class
    without an instance, negative ids (license plate) are not drawn, and the k-th instance of a
    class with instances gets `labelId * 1000 + k`.
    """
    size = (annotation["imgWidth"], annotation["imgHeight"])
    label_image = Image.new("L", size, LABEL_BY_NAME["unlabeled"].id)
    instance_image = Image.new("I;16", size, LABEL_BY_NAME["unlabeled"].id)
    label_draw, instance_draw = ImageDraw.Draw(label_image), ImageDraw.Draw(instance_image)
    for obj, (label_id, instance_id) in zip(annotation["objects"], _fill_values(annotation["objects"])):
        if label_id < 0:
            continue
        polygon = [tuple(point) for point in obj["polygon"]]
        label_draw.polygon(polygon, fill=label_id)
        instance_draw.polygon(polygon, fill=instance_id)
    return np.asarray(label_image), np.asarray(instance_image)


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


# === Scene: the polygons, in drawing order ===


class _Scene:
    """Polygons in drawing order, plus image-only details each owned by one polygon."""

    def __init__(self):
        self.objects: list[tuple[str, list[tuple[float, float]]]] = []
        self.details: list[tuple[int, list[tuple[float, float]], tuple[int, int, int]]] = []

    def add(self, label: str, points) -> int:
        self.objects.append((label, [(float(x), float(y)) for x, y in points]))
        return len(self.objects) - 1

    def detail(self, owner: int, points, color) -> None:
        self.details.append((owner, [(float(x), float(y)) for x, y in points], tuple(int(c) for c in color)))


def _street_scene(rng: np.random.Generator, height: int, width: int) -> tuple[list, list]:
    """A street seen from a car: sky, facades, road to a vanishing point, sidewalks, trees,
    poles with signs and lights, cars and persons sized by their distance, void borders."""
    H, W = float(height), float(width)
    horizon = H * rng.uniform(0.36, 0.48)
    vanish_x = W * rng.uniform(0.4, 0.6)
    top_left, top_right = vanish_x - W * rng.uniform(0.01, 0.03), vanish_x + W * rng.uniform(0.01, 0.03)
    bottom_left, bottom_right = W * rng.uniform(-0.4, 0.12), W * rng.uniform(0.88, 1.4)

    def depth(y):  # 0 at the horizon, 1 at the bottom edge: the perspective scale of a thing at y
        return (y - horizon) / (H - horizon)

    def road_left(y):
        return top_left + depth(y) * (bottom_left - top_left)

    def road_right(y):
        return top_right + depth(y) * (bottom_right - top_right)

    def ground_y(fraction):  # y at `fraction` of the way from the horizon to the bottom
        return horizon + fraction * (H - horizon)

    scene = _Scene()
    scene.add("sky", _rect(0, 0, W, horizon + 1))
    scene.add("sidewalk", _rect(0, horizon, W, H))
    if rng.random() < 0.6:  # a grass verge along one side of the road
        side = rng.choice([-1, 1])
        edge = road_left if side < 0 else road_right
        far, near = W * 0.01, W * rng.uniform(0.08, 0.2)
        scene.add("terrain", [(edge(horizon), horizon), (edge(H), H), (edge(H) + side * near, H),
                              (edge(horizon) + side * far, horizon)])  # fmt: skip
    road = scene.add("road", [(top_left, horizon), (top_right, horizon), (bottom_right, H), (bottom_left, H)])
    if rng.random() < 0.3:  # parking bays along the kerb (a void class in the evaluation)
        side = rng.choice([-1, 1])
        edge = road_left if side < 0 else road_right
        y0, y1 = ground_y(rng.uniform(0.1, 0.3)), ground_y(rng.uniform(0.5, 0.9))
        scene.add("parking", [(edge(y0), y0), (edge(y1), y1), (edge(y1) + side * W * 0.12 * depth(y1), y1),
                              (edge(y0) + side * W * 0.12 * depth(y0), y0)])  # fmt: skip
    for start in np.arange(rng.uniform(0.02, 0.08), 1.0, 0.14):  # dashed centre line, image only
        near = min(start + 0.06, 1.0)
        y0, y1 = ground_y(start), ground_y(near)
        cx0, cx1 = (road_left(y0) + road_right(y0)) / 2, (road_left(y1) + road_right(y1)) / 2
        w0, w1 = W * 0.004 * start + 0.3, W * 0.004 * near + 0.3
        scene.detail(road, [(cx0 - w0, y0), (cx0 + w0, y0), (cx1 + w1, y1), (cx1 - w1, y1)], (225, 225, 215))
    if rng.random() < 0.3:  # a void patch on the ground: a manhole lid, a drain
        y = ground_y(rng.uniform(0.2, 0.7))
        x, r = rng.uniform(road_left(y), road_right(y)), W * 0.02 * depth(y) + 1
        scene.add("ground", _ellipse(x, y, r, r * 0.4))

    _add_buildings(scene, rng, W, H, horizon, vanish_x)

    # Street furniture and trees along the sidewalks, far to near.
    furniture = []
    for _ in range(rng.integers(2, 5)):
        furniture.append(("pole", ground_y(rng.uniform(0.05, 0.55))))
    for _ in range(rng.integers(2, 6)):
        furniture.append(("tree", ground_y(rng.uniform(0.02, 0.35))))
    for _ in range(rng.integers(0, 3)):
        furniture.append(("static", ground_y(rng.uniform(0.1, 0.6))))
    for kind, y in sorted(furniture, key=lambda item: item[1]):
        s = depth(y)
        side = rng.choice([-1, 1])
        offset = W * s * rng.uniform(0.04, 0.14) + 2
        x = road_left(y) - offset if side < 0 else road_right(y) + offset
        x = float(np.clip(x, W * 0.02, W * 0.98))
        if kind == "pole":
            _add_pole(scene, rng, x, y, s, W, H)
        elif kind == "tree":
            _add_tree(scene, rng, x, y, s, W, H)
        else:
            size = W * s * rng.uniform(0.02, 0.05) + 2
            scene.add("static", _rect(x - size / 2, y - size * 1.4, x + size / 2, y))

    # Road users, drawn far to near so that near ones occlude: cars and persons in every frame,
    # sometimes a bus or truck, cyclists or motorcyclists, a distant group of cars.
    movers = [("car", ground_y(rng.uniform(0.1, 0.85))) for _ in range(rng.integers(3, 7))]
    movers += [("person", ground_y(rng.uniform(0.12, 0.85))) for _ in range(rng.integers(3, 7))]
    if rng.random() < 0.4:
        movers.append((rng.choice(["bus", "truck"]), ground_y(rng.uniform(0.05, 0.5))))
    for _ in range(rng.binomial(2, 0.3)):
        movers.append((rng.choice(["bicycle", "bicycle", "motorcycle"]), ground_y(rng.uniform(0.1, 0.7))))
    if rng.random() < 0.35:
        movers.append(("cargroup", ground_y(rng.uniform(0.02, 0.08))))
    for kind, y in sorted(movers, key=lambda item: item[1]):
        s = depth(y)
        if kind == "person":
            person_height = H * max(s, 0.2) * rng.uniform(0.45, 0.6)
            if rng.random() < 0.2:  # crossing the street
                x = rng.uniform(road_left(y), road_right(y))
            elif rng.random() < 0.5:
                x = road_left(y) - W * s * rng.uniform(0.02, 0.12) - person_height * 0.25
            else:
                x = road_right(y) + W * s * rng.uniform(0.02, 0.12) + person_height * 0.25
            x = float(np.clip(x, W * 0.03, W * 0.97))
            _add_person(scene, rng, x, y, person_height)
        elif kind in ("bicycle", "motorcycle"):  # ridden along the kerb
            x = road_left(y) + W * s * 0.03 if rng.random() < 0.5 else road_right(y) - W * s * 0.03
            _add_two_wheeler(scene, float(np.clip(x, W * 0.03, W * 0.97)), y, H * max(s, 0.2) * 0.55, kind)
        else:
            scale = {"car": 1.0, "cargroup": 3.0, "bus": 1.4, "truck": 1.35}[kind]
            vehicle_width = W * max(s, 0.12) * rng.uniform(0.2, 0.28) * scale
            left, right = road_left(y) + vehicle_width / 2, road_right(y) - vehicle_width / 2
            x = rng.uniform(left, right) if left < right else (left + right) / 2
            if kind in ("bus", "truck"):
                _add_large_vehicle(scene, rng, x, y, vehicle_width, kind)
            else:
                _add_car(scene, rng, x, y, vehicle_width, kind)

    # Void regions on top of everything, as in the real annotations.
    hood = H * rng.uniform(0.07, 0.13)
    xs = np.linspace(0, W, 9)
    hood_top = H - hood * (1 - 0.45 * ((xs - W / 2) / (W / 2)) ** 2)
    scene.add("ego vehicle", [(0, H)] + list(zip(xs, hood_top)) + [(W, H)])
    corner = W * rng.uniform(0.01, 0.03) + 1
    scene.add("rectification border", [(0, 0), (corner, 0), (0, corner * 0.6)])
    scene.add("rectification border", [(W, 0), (W - corner, 0), (W, corner * 0.6)])
    border = max(1.0, W * 0.003)
    for strip in (_rect(0, 0, W, border), _rect(0, H - border, W, H), _rect(0, 0, border, H), _rect(W - border, 0, W, H)):
        scene.add("out of roi", strip)
    return scene.objects, scene.details


def _add_buildings(scene: _Scene, rng, W, H, horizon, vanish_x) -> None:
    """Facades on both sides of the street; their feet slope down towards the camera."""
    for side in (-1, 1):
        far_x = vanish_x + side * W * rng.uniform(0.04, 0.1)
        near_x = 0.0 if side < 0 else W
        foot_drop = (H - horizon) * rng.uniform(0.12, 0.3)

        def foot(x):
            return horizon + foot_drop * abs(x - far_x) / abs(near_x - far_x)

        x = far_x
        while (x - near_x) * side < 0:
            block = W * rng.uniform(0.05, 0.16)
            x_next = x + side * block
            if rng.random() < 0.08:  # a gap: sky shows through
                x = x_next
                continue
            nearness = abs((x + x_next) / 2 - far_x) / abs(near_x - far_x)
            top = horizon - horizon * rng.uniform(0.45, 0.95) * (0.45 + 0.55 * nearness)
            outline = [(x, foot(x)), (x, top), (x_next, top), (x_next, foot(x_next))]
            if rng.random() < 0.3:  # gabled roof
                outline.insert(2, ((x + x_next) / 2, top - block * rng.uniform(0.2, 0.5)))
            label = "building" if rng.random() < 0.9 else "wall"
            scene.add(label, outline)
            x = x_next
        if rng.random() < 0.5:  # a fence or wall along the facades' feet
            fence_height = (H - horizon) * rng.uniform(0.04, 0.1)
            end = far_x + (near_x - far_x) * rng.uniform(0.3, 0.8)
            scene.add(
                rng.choice(["fence", "wall"]),
                [(far_x, foot(far_x)), (end, foot(end)), (end, foot(end) - fence_height * abs(end - far_x) / W * 3),
                 (far_x, foot(far_x) - 1)],
            )  # fmt: skip


def _add_pole(scene: _Scene, rng, x, y, s, W, H) -> None:
    pole_height = H * max(s, 0.08) * rng.uniform(1.1, 1.7)
    half = max(0.5, W * s * 0.004)
    scene.add("pole", _rect(x - half, y - pole_height, x + half, y))
    top = y - pole_height
    size = W * max(s, 0.08) * rng.uniform(0.025, 0.04) + 1
    kind = rng.random()
    if kind < 0.45:
        shape = rng.integers(3)
        if shape == 0:
            outline = _ellipse(x, top + size / 2, size / 2, size / 2)
        elif shape == 1:
            outline = [(x - size / 2, top + size), (x + size / 2, top + size), (x, top)]
        else:
            outline = _rect(x - size / 2, top, x + size / 2, top + size)
        sign = scene.add("traffic sign", outline)
        scene.detail(sign, _scaled(outline, x, top + size / 2, 0.65), (240, 240, 235))
    elif kind < 0.8:
        box = _rect(x - size * 0.25, top, x + size * 0.25, top + size * 0.9)
        light = scene.add("traffic light", box)
        lit = rng.integers(3)
        for lamp in range(3):
            color = ((230, 40, 30), (240, 180, 20), (40, 220, 90))[lamp] if lamp == lit else (55, 55, 50)
            scene.detail(light, _ellipse(x, top + size * (0.15 + 0.3 * lamp), size * 0.1, size * 0.1), color)


def _add_tree(scene: _Scene, rng, x, y, s, W, H) -> None:
    trunk_height = H * max(s, 0.06) * rng.uniform(0.6, 1.1)
    half = max(0.5, W * s * 0.006)
    scene.add("vegetation", _rect(x - half, y - trunk_height, x + half, y))
    radius = H * max(s, 0.06) * rng.uniform(0.35, 0.6)
    jitter = rng.uniform(0.75, 1.15, 16)
    scene.add("vegetation", _ellipse(x, y - trunk_height - radius * 0.6, radius * 1.2, radius, jitter))


def _add_car(scene: _Scene, rng, x, y, car_width, kind) -> None:
    """A car seen from behind (body, roof), with windows, wheels, lights and a license plate."""
    w, h = car_width, car_width * rng.uniform(0.6, 0.8)
    left, right = x - w / 2, x + w / 2
    roof_in = w * rng.uniform(0.12, 0.2)
    body = [(left, y), (left, y - h * 0.55), (left + roof_in, y - h), (right - roof_in, y - h), (right, y - h * 0.55), (right, y)]
    car = scene.add(kind, body)
    if kind == "cargroup":
        return
    scene.detail(car, [(left + roof_in * 1.2, y - h * 0.92), (right - roof_in * 1.2, y - h * 0.92),
                       (right - w * 0.06, y - h * 0.6), (left + w * 0.06, y - h * 0.6)], (35, 45, 60))  # fmt: skip
    for wheel_x in (left, right - w * 0.16):
        scene.detail(car, _rect(wheel_x, y - h * 0.14, wheel_x + w * 0.16, y), (20, 20, 22))
    for lamp_x in (left + w * 0.02, right - w * 0.14):
        scene.detail(car, _rect(lamp_x, y - h * 0.5, lamp_x + w * 0.12, y - h * 0.4), (200, 30, 30))
    plate = _rect(x - w * 0.12, y - h * 0.3, x + w * 0.12, y - h * 0.2)
    scene.add("license plate", plate)  # id -1: in the JSON, never in the label images
    scene.detail(car, plate, (230, 230, 225))


def _add_large_vehicle(scene: _Scene, rng, x, y, vehicle_width, kind) -> None:
    """A bus (rear window, high roof) or truck (plain cargo box) seen from behind."""
    w = vehicle_width
    h = w * rng.uniform(1.0, 1.2)
    left, right = x - w / 2, x + w / 2
    vehicle = scene.add(kind, _rect(left, y - h, right, y))
    if kind == "bus":
        scene.detail(vehicle, _rect(left + w * 0.08, y - h * 0.9, right - w * 0.08, y - h * 0.55), (35, 45, 60))
    else:
        scene.detail(vehicle, _rect(left, y - h * 0.22, right, y - h * 0.16), (60, 60, 60))  # bumper
    for wheel_x in (left + w * 0.02, right - w * 0.16):
        scene.detail(vehicle, _rect(wheel_x, y - h * 0.1, wheel_x + w * 0.14, y), (20, 20, 22))
    for lamp_x in (left + w * 0.03, right - w * 0.11):
        scene.detail(vehicle, _rect(lamp_x, y - h * 0.3, lamp_x + w * 0.08, y - h * 0.24), (200, 30, 30))


def _add_two_wheeler(scene: _Scene, x, y, rider_height, kind) -> None:
    """A bicycle or motorcycle seen from behind (wheel, handlebar) with its rider on top."""
    h = rider_height
    wheel = h * (0.06 if kind == "bicycle" else 0.12)
    frame = [(x - wheel, y), (x - wheel, y - h * 0.45), (x - h * 0.22, y - h * 0.5), (x - h * 0.22, y - h * 0.55),
             (x + h * 0.22, y - h * 0.55), (x + h * 0.22, y - h * 0.5), (x + wheel, y - h * 0.45), (x + wheel, y)]
    scene.add(kind, frame)  # fmt: skip
    w = h * 0.4
    upper_body = _PERSON_OUTLINE[:9] + _PERSON_OUTLINE[-9:]  # head to hips: the legs are hidden
    rider = scene.add("rider", [(x + dx * w, y - h * 1.05 + dy * h * 0.9) for dx, dy in upper_body])
    scene.detail(rider, _ellipse(x, y - h * 1.05 + 0.08 * h, 0.13 * w, 0.07 * h), (225, 180, 150))


def _add_person(scene: _Scene, rng, x, y, person_height) -> None:
    """A standing pedestrian silhouette with a skin-coloured head and dark trousers."""
    h, w = person_height, person_height * rng.uniform(0.35, 0.45)
    outline = [(x + dx * w, y - h + dy * h) for dx, dy in _PERSON_OUTLINE]
    person = scene.add("person", outline)
    scene.detail(person, _ellipse(x, y - h + 0.085 * h, 0.13 * w, 0.075 * h), (225, 180, 150))
    scene.detail(person, [(x + dx * w, y - h + dy * h) for dx, dy in _PERSON_LEGS], (40, 40, 55))


_PERSON_OUTLINE = [
    (0, 0), (0.12, 0.02), (0.15, 0.08), (0.1, 0.15), (0.42, 0.2), (0.5, 0.55), (0.38, 0.56), (0.34, 0.35),
    (0.3, 0.58), (0.3, 1.0), (0.06, 1.0), (0, 0.64), (-0.06, 1.0), (-0.3, 1.0), (-0.3, 0.58), (-0.34, 0.35),
    (-0.38, 0.56), (-0.5, 0.55), (-0.42, 0.2), (-0.1, 0.15), (-0.15, 0.08), (-0.12, 0.02),
]  # fmt: skip
_PERSON_LEGS = [(0.3, 0.58), (0.3, 1.0), (0.06, 1.0), (0, 0.64), (-0.06, 1.0), (-0.3, 1.0), (-0.3, 0.58)]


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _ellipse(cx, cy, rx, ry, jitter=None):
    count = 12 if jitter is None else len(jitter)
    radii = np.ones(count) if jitter is None else np.asarray(jitter)
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return list(zip(cx + rx * radii * np.cos(angles), cy + ry * radii * np.sin(angles)))


def _scaled(points, cx, cy, factor):
    return [(cx + (x - cx) * factor, cy + (y - cy) * factor) for x, y in points]


def _annotation(objects, height: int, width: int) -> tuple[dict, list[int | None]]:
    """The polygons JSON, each polygon clipped to the image and rounded to integer pixels, and
    where each scene object went in it (None: it fell outside the image or shrank to a line)."""
    annotated, kept = [], []
    for label, points in objects:
        polygon = _clip_to_image(points, width - 1, height - 1)
        visible = len({tuple(point) for point in polygon}) >= 3
        kept.append(len(annotated) if visible else None)
        if visible:
            annotated.append({"label": label, "polygon": polygon})
    return {"imgHeight": height, "imgWidth": width, "objects": annotated}, kept


def _clip_to_image(points, x_max: float, y_max: float) -> list[list[int]]:
    """Sutherland-Hodgman clipping to [0, x_max] x [0, y_max], then integer vertices."""
    edges = ((0, 0.0, 1), (0, x_max, -1), (1, 0.0, 1), (1, y_max, -1))  # (axis, bound, inside sign)
    for axis, bound, sign in edges:
        clipped = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            current_in = (current[axis] - bound) * sign >= 0
            previous_in = (previous[axis] - bound) * sign >= 0
            if current_in != previous_in:
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                clipped.append(tuple(p + t * (c - p) for p, c in zip(previous, current)))
            if current_in:
                clipped.append(current)
        points = clipped
        if not points:
            return []
    rounded = []
    for x, y in points:
        point = [int(round(x)), int(round(y))]
        if not rounded or point != rounded[-1]:
            rounded.append(point)
    if len(rounded) > 1 and rounded[0] == rounded[-1]:
        rounded.pop()
    return rounded


def _fill_values(objects) -> list[tuple[int, int]]:
    """(labelId, instanceId) of each object, numbered as json2instanceImg numbers them."""
    counts: dict[str, int] = {}
    values = []
    for obj in objects:
        name = obj["label"]
        is_group = name not in LABEL_BY_NAME and name.endswith("group")
        label = LABEL_BY_NAME[name[: -len("group")] if is_group else name]
        instance_id = label.id
        if label.has_instances and not is_group:
            instance_id = label.id * 1000 + counts.get(label.name, 0)
            counts[label.name] = counts.get(label.name, 0) + 1
        values.append((label.id, instance_id))
    return values


# === Image: class colours, textures and lighting ===

# Per class: base RGB, fine grain and blotch (low-frequency) noise amplitudes in grey levels.
_LOOK = {
    "unlabeled": ((60, 60, 60), 4, 4),
    "ego vehicle": ((28, 30, 36), 3, 6),
    "rectification border": ((0, 0, 0), 0, 0),
    "out of roi": ((12, 12, 12), 2, 0),
    "static": ((115, 100, 80), 8, 6),
    "ground": ((75, 70, 65), 6, 4),
    "road": ((85, 85, 95), 7, 6),
    "sidewalk": ((185, 150, 160), 6, 5),
    "building": ((150, 115, 85), 6, 10),
    "wall": ((200, 190, 140), 5, 8),
    "fence": ((165, 120, 60), 8, 6),
    "pole": ((110, 130, 140), 3, 2),
    "traffic light": ((30, 30, 20), 3, 2),
    "traffic sign": ((220, 40, 40), 4, 2),
    "vegetation": ((55, 120, 35), 16, 24),
    "terrain": ((150, 170, 80), 12, 14),
    "sky": ((140, 188, 232), 2, 8),
    "person": ((170, 40, 70), 6, 4),
    "car": ((40, 55, 130), 5, 4),
    "rider": ((40, 150, 160), 6, 4),
    "truck": ((200, 200, 210), 5, 6),
    "bus": ((220, 170, 40), 5, 6),
    "bicycle": ((120, 30, 45), 4, 2),
    "motorcycle": ((30, 30, 90), 5, 3),
    "parking": ((120, 105, 110), 7, 6),
}
_INSTANCE_JITTER = 25  # cars and persons vary in colour around their class colour


def _render_image(rng, annotation, label_ids, instance_ids, details) -> np.ndarray:
    """Paint each pixel from its class (and instance) colour, add textures, details, lighting."""
    height, width = label_ids.shape
    colors = np.zeros((34 * 1000, 3), np.float32)  # indexed by instanceId
    grain, blotch = np.zeros(256, np.float32), np.zeros(256, np.float32)
    for label in LABELS:
        if label.id < 0:
            continue
        base, grain_amplitude, blotch_amplitude = _LOOK.get(label.name, _LOOK["unlabeled"])
        colors[label.id] = np.clip(np.asarray(base) + rng.normal(0, 8, 3), 0, 255)
        grain[label.id], blotch[label.id] = grain_amplitude, blotch_amplitude
    for label_id, instance_id in _fill_values(annotation["objects"]):
        if instance_id >= 1000:
            colors[instance_id] = np.clip(colors[label_id] + rng.normal(0, _INSTANCE_JITTER, 3), 0, 255)

    canvas = np.take(colors, instance_ids, axis=0)
    _paint_details(canvas, annotation, instance_ids, details)
    shade = _shade(rng, label_ids)
    noise = grain[label_ids] * _uniform_noise(rng, height, width)
    noise += blotch[label_ids] * _smooth_noise(rng, height, width)
    canvas *= shade[..., None]
    canvas += noise[..., None]
    return np.clip(canvas, 0, 255, out=canvas).astype(np.uint8)


def _shade(rng, label_ids: np.ndarray) -> np.ndarray:
    """Brightness per pixel: facade windows, paving joints, fence bars, sky gradient, shadows
    and the scene's exposure and side light."""
    height, width = label_ids.shape
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    shade = np.ones((height, width), np.float32)
    window_w, window_h = max(2, width // rng.integers(40, 90)), max(2, height // rng.integers(20, 45))
    windows = ((cols % (2 * window_w)) < window_w) & ((rows % (2 * window_h)) < window_h)
    shade[(label_ids == LABEL_BY_NAME["building"].id) & windows] = 0.55
    tile = max(3, width // 64)
    joints = ((cols % tile) < 1) | ((rows % tile) < 1)
    shade[(label_ids == LABEL_BY_NAME["sidewalk"].id) & joints] = 0.8
    bar = max(2, width // 200)
    shade[(label_ids == LABEL_BY_NAME["fence"].id) & ((cols % (3 * bar)) < bar)] = 0.6
    sky = label_ids == LABEL_BY_NAME["sky"].id
    np.copyto(shade, 0.85 + 0.25 * rows / height, where=sky)  # brighter towards the horizon
    shadows = _shadows(rng, height, width)
    if shadows is not None:
        shade *= np.where(sky, np.float32(1), shadows)
    shade *= np.float32(rng.uniform(0.85, 1.1)) * (1 + np.float32(rng.uniform(-0.15, 0.15)) * (cols / width - 0.5))
    return shade


def _paint_details(canvas, annotation, instance_ids, details) -> None:
    """Draw windows, wheels, heads, lamps... but only where their owner object is visible."""
    if not details:
        return
    height, width = instance_ids.shape
    fill_values = _fill_values(annotation["objects"])
    owner_of = np.full(len(details) + 1, _NO_OWNER, np.uint16)  # detail number -> instanceId
    color_of = np.zeros((len(details) + 1, 3), np.float32)
    numbers = Image.new("I;16", (width, height), 0)  # 0: no detail; k: details[k - 1]
    draw = ImageDraw.Draw(numbers)
    for number, (owner, points, color) in enumerate(details, start=1):
        polygon = [tuple(point) for point in _clip_to_image(points, width - 1, height - 1)]
        if len(polygon) >= 2:
            draw.polygon(polygon, fill=number)
            owner_of[number], color_of[number] = fill_values[owner][1], color
    detail_numbers = np.asarray(numbers)
    visible = owner_of[detail_numbers] == instance_ids
    canvas[visible] = color_of[detail_numbers[visible]]


def _uniform_noise(rng, height: int, width: int) -> np.ndarray:
    """Unit-variance film grain; uniform, because it is 3x cheaper to draw than Gaussian."""
    noise = rng.random((height, width), dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(12**0.5)
    return noise


def _smooth_noise(rng, height: int, width: int) -> np.ndarray:
    """Unit-variance noise with blobs ~1/32 of the width: foliage, stains, clouds."""
    step = max(2, width // 32)
    coarse = rng.standard_normal((height // step + 2, width // step + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def _shadows(rng, height: int, width: int) -> np.ndarray | None:
    """Zero to two diagonal shadows across the lower part (cast by buildings), or None."""
    count = rng.integers(0, 3)
    if not count:
        return None
    mask = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(mask)
    for _ in range(count):
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * width)
        lean = rng.uniform(-0.3, 0.3) * width
        draw.polygon([(x0, height * 0.4), (x1, height * 0.4), (x1 + lean, height), (x0 + lean, height)],
                     fill=int(255 * rng.uniform(0.65, 0.85)))  # fmt: skip
    return np.asarray(mask, dtype=np.float32) / np.float32(255)
