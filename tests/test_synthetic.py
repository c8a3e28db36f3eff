"""`segflow.synthetic` and `segflow synth`: layout, file formats, labels that agree with their
polygons (checked with cityscapesScripts' own rasterisers), determinism, packages, errors."""

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image

from segflow import synthetic
from segflow.cityscapes import (
    COLOR_SUFFIX,
    IMAGE_SUFFIX,
    INSTANCE_IDS_SUFFIX,
    LABEL_BY_ID,
    LABEL_BY_NAME,
    LABEL_ID_TO_COLOR,
    LABEL_ID_TO_TRAIN_ID,
    LABEL_IDS_SUFFIX,
    POLYGONS_SUFFIX,
    VALID_LABEL_IDS,
)
from segflow.cli import cli
from segflow.errors import SegflowError

COUNTS = {"train": 4, "val": 2, "test": 2}
HEIGHT, WIDTH = 64, 128
CAR, PERSON = LABEL_BY_NAME["car"].id, LABEL_BY_NAME["person"].id


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("synth") / "cityscapes"
    returned = synthetic.write_dataset(out_dir, **COUNTS, height=HEIGHT, width=WIDTH, seed=3, zips=True)
    assert returned == out_dir
    return out_dir


def stems(root: Path, split: str) -> list[tuple[str, str]]:
    """(city, stem) of every image in a split, from the leftImg8bit tree."""
    return sorted(
        (path.parent.name, path.name[: -len(IMAGE_SUFFIX)])
        for path in (root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}")
    )


def gt_path(root: Path, split: str, city: str, stem: str, suffix: str) -> Path:
    return root / "gtFine" / split / city / f"{stem}{suffix}"


def all_frames(root: Path):
    for split in COUNTS:
        for city, stem in stems(root, split):
            yield split, city, stem


def file_digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# === Layout and formats ===


def test_layout_has_every_file_with_real_city_names(dataset):
    expected_cities = {"train": ["aachen", "bochum", "bremen", "cologne"], "val": ["frankfurt", "lindau"],
                       "test": ["berlin", "bielefeld"]}  # fmt: skip
    for split, count in COUNTS.items():
        frames = stems(dataset, split)
        assert [city for city, _ in frames] == expected_cities[split]
        for city, stem in frames:
            assert re.fullmatch(rf"{city}_\d{{6}}_000019", stem)
            assert city in synthetic.CITIES[split]
            for suffix in (LABEL_IDS_SUFFIX, INSTANCE_IDS_SUFFIX, COLOR_SUFFIX, POLYGONS_SUFFIX):
                assert gt_path(dataset, split, city, stem, suffix).is_file()
    files = [path for path in dataset.rglob("*") if path.is_file()]
    assert len(files) == 5 * sum(COUNTS.values()) + 2  # + the two zips
    assert not list(dataset.parent.glob("*.partial"))


def test_files_have_the_modes_and_sizes_of_the_real_ones(dataset):
    for split, city, stem in all_frames(dataset):
        with Image.open(dataset / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}") as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (WIDTH, HEIGHT))
        with Image.open(gt_path(dataset, split, city, stem, LABEL_IDS_SUFFIX)) as label_ids:
            assert (label_ids.format, label_ids.mode, label_ids.size) == ("PNG", "L", (WIDTH, HEIGHT))
        with Image.open(gt_path(dataset, split, city, stem, INSTANCE_IDS_SUFFIX)) as instance_ids:
            assert (instance_ids.mode, instance_ids.size) == ("I;16", (WIDTH, HEIGHT))
            assert np.asarray(instance_ids).dtype == np.uint16
        with Image.open(gt_path(dataset, split, city, stem, COLOR_SUFFIX)) as color:
            assert (color.mode, color.size) == ("RGBA", (WIDTH, HEIGHT))
        annotation = json.loads(gt_path(dataset, split, city, stem, POLYGONS_SUFFIX).read_text())
        assert (annotation["imgHeight"], annotation["imgWidth"]) == (HEIGHT, WIDTH)
        for obj in annotation["objects"]:
            assert set(obj) == {"label", "polygon"}
            assert obj["label"] in LABEL_BY_NAME or obj["label"].removesuffix("group") in LABEL_BY_NAME
            points = np.asarray(obj["polygon"])
            assert points.dtype.kind == "i" and points.shape[1] == 2 and len(points) >= 3
            assert points.min() >= 0 and points[:, 0].max() < WIDTH and points[:, 1].max() < HEIGHT


def test_label_images_equal_cityscapesscripts_rasterisation_of_the_json(dataset):
    for split, city, stem in all_frames(dataset):
        annotation = Annotation()
        annotation.fromJsonFile(str(gt_path(dataset, split, city, stem, POLYGONS_SUFFIX)))
        label_ids = np.asarray(Image.open(gt_path(dataset, split, city, stem, LABEL_IDS_SUFFIX)))
        instance_ids = np.asarray(Image.open(gt_path(dataset, split, city, stem, INSTANCE_IDS_SUFFIX)))
        color = np.asarray(Image.open(gt_path(dataset, split, city, stem, COLOR_SUFFIX)))
        np.testing.assert_array_equal(label_ids, np.asarray(createLabelImage(annotation, "ids")))
        np.testing.assert_array_equal(instance_ids, np.asarray(createInstanceImage(annotation, "ids")))
        np.testing.assert_array_equal(color, np.asarray(createLabelImage(annotation, "color")))


def test_label_values_are_in_the_table_and_instances_agree_with_labels(dataset):
    for split, city, stem in all_frames(dataset):
        label_ids = np.asarray(Image.open(gt_path(dataset, split, city, stem, LABEL_IDS_SUFFIX)))
        instance_ids = np.asarray(Image.open(gt_path(dataset, split, city, stem, INSTANCE_IDS_SUFFIX)))
        color = np.asarray(Image.open(gt_path(dataset, split, city, stem, COLOR_SUFFIX)))
        assert set(np.unique(label_ids).tolist()) <= VALID_LABEL_IDS
        instance_ids = instance_ids.astype(np.int64)
        is_instance = instance_ids >= 1000
        np.testing.assert_array_equal(np.where(is_instance, instance_ids // 1000, instance_ids), label_ids)
        assert all(LABEL_BY_ID[int(label_id)].has_instances for label_id in np.unique(label_ids[is_instance]))
        np.testing.assert_array_equal(color[..., :3], LABEL_ID_TO_COLOR[label_ids])
        assert (color[..., 3] == 255).all()


def test_train_and_val_frames_are_street_scenes(dataset):
    for split in ("train", "val"):
        for city, stem in stems(dataset, split):
            instance_ids = np.asarray(Image.open(gt_path(dataset, split, city, stem, INSTANCE_IDS_SUFFIX)))
            values = np.unique(instance_ids).astype(np.int64)
            assert ((values // 1000) == CAR).sum() >= 2, f"{stem}: fewer than 2 cars"
            assert ((values // 1000) == PERSON).sum() >= 2, f"{stem}: fewer than 2 persons"
            label_ids = np.asarray(Image.open(gt_path(dataset, split, city, stem, LABEL_IDS_SUFFIX)))
            present = {LABEL_BY_ID[int(label_id)].name for label_id in np.unique(label_ids)}
            assert {"sky", "building", "road", "sidewalk", "pole", "car", "person", "ego vehicle", "out of roi"} <= present
            assert label_ids[0, WIDTH // 2] == LABEL_BY_NAME["out of roi"].id
            assert label_ids[HEIGHT // 8, WIDTH // 2] == LABEL_BY_NAME["sky"].id
            assert label_ids[-3, WIDTH // 2] == LABEL_BY_NAME["ego vehicle"].id


def test_test_split_has_only_void_labels_but_real_images(dataset):
    void_ids = {LABEL_BY_NAME[name].id for name in ("unlabeled", *synthetic.TEST_SPLIT_LABELS)}
    for city, stem in stems(dataset, "test"):
        label_ids = np.asarray(Image.open(gt_path(dataset, "test", city, stem, LABEL_IDS_SUFFIX)))
        instance_ids = np.asarray(Image.open(gt_path(dataset, "test", city, stem, INSTANCE_IDS_SUFFIX)))
        assert set(np.unique(label_ids).tolist()) <= void_ids
        assert (LABEL_ID_TO_TRAIN_ID[label_ids] == 255).all()
        np.testing.assert_array_equal(instance_ids, label_ids)
        annotation = json.loads(gt_path(dataset, "test", city, stem, POLYGONS_SUFFIX).read_text())
        assert {obj["label"] for obj in annotation["objects"]} <= synthetic.TEST_SPLIT_LABELS
        image = np.asarray(Image.open(dataset / "leftImg8bit" / "test" / city / f"{stem}{IMAGE_SUFFIX}"))
        assert image.std() > 20  # a street scene, not a blank frame


def test_image_colours_follow_the_classes(dataset):
    """Class mean colours learnt on the train images classify most val pixels (chance: ~1/13)."""

    def pixels(split):
        for city, stem in stems(dataset, split):
            image = np.asarray(Image.open(dataset / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}"))
            train_ids = LABEL_ID_TO_TRAIN_ID[np.asarray(Image.open(gt_path(dataset, split, city, stem, LABEL_IDS_SUFFIX)))]
            yield image[train_ids != 255].astype(np.float32), train_ids[train_ids != 255]

    train_pixels, train_classes = map(np.concatenate, zip(*pixels("train")))
    classes = np.unique(train_classes)
    means = np.stack([train_pixels[train_classes == c].mean(axis=0) for c in classes])
    val_pixels, val_classes = map(np.concatenate, zip(*pixels("val")))
    predicted = classes[np.argmin(((val_pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    assert (predicted == val_classes).mean() > 0.45


def test_files_hold_exactly_the_rendered_example(dataset):
    city, stem = stems(dataset, "train")[1]
    example = synthetic.render_example("train", 1, height=HEIGHT, width=WIDTH, seed=3)
    image = np.asarray(Image.open(dataset / "leftImg8bit" / "train" / city / f"{stem}{IMAGE_SUFFIX}"))
    np.testing.assert_array_equal(image, example.image)
    np.testing.assert_array_equal(np.asarray(Image.open(gt_path(dataset, "train", city, stem, LABEL_IDS_SUFFIX))), example.label_ids)
    assert json.loads(gt_path(dataset, "train", city, stem, POLYGONS_SUFFIX).read_text()) == example.annotation


# === Packages ===


def test_zips_are_laid_out_like_the_real_packages(dataset):
    for package, top in (("gtFine_trainvaltest.zip", "gtFine"), ("leftImg8bit_trainvaltest.zip", "leftImg8bit")):
        with zipfile.ZipFile(dataset / package) as archive:
            assert archive.testzip() is None
            names = archive.namelist()
            assert names[:2] == ["README", "license.txt"]
            tree = sorted(path.relative_to(dataset).as_posix() for path in (dataset / top).rglob("*") if path.is_file())
            assert sorted(names[2:]) == tree
            for name in tree:
                assert archive.read(name) == (dataset / name).read_bytes()


# === Determinism ===


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path):
    small = dict(train=2, val=1, test=1, height=32, width=64, zips=True)
    first = file_digests(synthetic.write_dataset(tmp_path / "a", seed=7, **small))
    second = file_digests(synthetic.write_dataset(tmp_path / "b", seed=7, **small))
    other = file_digests(synthetic.write_dataset(tmp_path / "c", seed=8, **small))
    assert first == second
    assert len(first) == 5 * 4 + 2
    image = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert first[image] != other[image]


def test_cities_can_be_overridden_per_split(tmp_path):
    out_dir = synthetic.write_dataset(tmp_path / "d", train=3, val=1, test=0, height=32, width=64, cities={"train": ["foo"]})
    assert stems(out_dir, "train") == [("foo", f"foo_{sequence:06d}_000019") for sequence in range(3)]
    assert stems(out_dir, "val") == [("frankfurt", "frankfurt_000000_000019")]
    assert not (out_dir / "leftImg8bit" / "test").exists()


# === Errors and atomic output ===


def test_refuses_a_non_empty_output_and_keeps_it(tmp_path):
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "precious.txt").write_text("keep me")
    with pytest.raises(SegflowError, match=re.escape(str(out_dir))):
        synthetic.write_dataset(out_dir)
    assert [path.name for path in out_dir.iterdir()] == ["precious.txt"]
    assert (out_dir / "precious.txt").read_text() == "keep me"


def test_fills_an_existing_empty_output(tmp_path):
    out_dir = tmp_path / "empty"
    out_dir.mkdir()
    synthetic.write_dataset(out_dir, train=1, val=0, test=0, height=32, width=64)
    assert stems(out_dir, "train") == [("aachen", "aachen_000000_000019")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"train": -1}, "train must be a non-negative integer, got -1"),
        ({"train": 0, "val": 0, "test": 0}, "nothing to write"),
        ({"height": 8}, "8x128 is too small"),
        ({"seed": -2}, "seed must be a non-negative integer, got -2"),
        ({"cities": {"tarin": ["x"]}}, "unknown split 'tarin'"),
        ({"cities": {"train": ["bad_name"]}}, "bad_name"),
    ],
)
def test_bad_arguments_raise_one_clear_error_and_write_nothing(tmp_path, arguments, message):
    with pytest.raises(SegflowError, match=re.escape(message)):
        synthetic.write_dataset(tmp_path / "out", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_failure_half_way_leaves_no_output(tmp_path, monkeypatch):
    render = synthetic.render_example

    def fail_on_third(split, index, **kwargs):
        if split == "val":
            raise OSError("disk full")
        return render(split, index, **kwargs)

    monkeypatch.setattr(synthetic, "render_example", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_dataset(tmp_path / "out", train=2, val=1, test=1, height=32, width=64)
    assert list(tmp_path.iterdir()) == []


# === CLI ===


def test_cli_writes_the_dataset_and_zips(tmp_path):
    out_dir = tmp_path / "cli"
    result = CliRunner().invoke(
        cli, ["synth", str(out_dir), "--train", "1", "--val", "1", "--test", "1", "--height", "32", "--width", "64",
              "--seed", "5", "--zips"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(out_dir) in result.output
    assert stems(out_dir, "val") == [("frankfurt", "frankfurt_000000_000019")]
    assert (out_dir / "gtFine_trainvaltest.zip").is_file() and (out_dir / "leftImg8bit_trainvaltest.zip").is_file()
    with Image.open(out_dir / "leftImg8bit" / "train" / "aachen" / f"aachen_000000_000019{IMAGE_SUFFIX}") as image:
        assert image.size == (64, 32)
        np.testing.assert_array_equal(np.asarray(image), synthetic.render_example("train", 0, height=32, width=64, seed=5).image)


def test_cli_shows_one_error_line_for_a_non_empty_output(tmp_path):
    (tmp_path / "note.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["synth", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: output directory {tmp_path} already exists and is not empty; remove it or pick another"
    ]


def test_a_killed_generation_leaves_no_dataset_and_the_next_run_removes_its_staging(tmp_path, caplog):
    from crash import killed_after_renames

    out_dir = tmp_path / "synthetic"
    assert killed_after_renames(0, lambda: synthetic.write_dataset(out_dir, train=1, val=1, test=1))  # before its one rename
    assert not out_dir.exists() and len(os.listdir(tmp_path)) == 1  # only the staging folder

    synthetic.write_dataset(out_dir, train=1, val=1, test=1)

    assert os.listdir(tmp_path) == ["synthetic"]
    assert "removed 1 leftover staging folders of a killed run" in caplog.text
