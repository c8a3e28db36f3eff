"""Dataset discovery and the header checks of `segflow.layout` on small synthetic datasets."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from segflow import layout
from segflow.cityscapes import IMAGE_SUFFIX, INSTANCE_IDS_SUFFIX, LABEL_IDS_SUFFIX
from segflow.errors import SegflowError
from segflow.synthetic import write_dataset


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "cityscapes", train=6, val=1, test=1)


def _files(root, suffix):
    return sorted(root.rglob(f"*{suffix}"))


def _save(path, array):
    Image.fromarray(array).save(path)


def test_discover_pairs_every_image_with_its_labels(dataset):
    samples = layout.discover(dataset)

    assert {split: len(found) for split, found in samples.items()} == {"train": 6, "val": 1, "test": 1}
    for split, found in samples.items():
        assert [sample.key for sample in found] == sorted(sample.key for sample in found)
        for sample in found:
            assert sample.split == split
            assert sample.key.startswith(sample.city + "_") and re.fullmatch(r"[a-z0-9]+_\d{6}_\d{6}", sample.key)
            assert sample.image == dataset / "leftImg8bit" / split / sample.city / f"{sample.key}{IMAGE_SUFFIX}"
            assert sample.label_ids == dataset / "gtFine" / split / sample.city / f"{sample.key}{LABEL_IDS_SUFFIX}"
            assert sample.instance_ids.name == f"{sample.key}{INSTANCE_IDS_SUFFIX}"


def test_discover_only_the_splits_asked_for(dataset):
    assert list(layout.discover(dataset, ("val",))) == ["val"]
    with pytest.raises(SegflowError, match="unknown split trainval"):
        layout.discover(dataset, ("trainval",))
    with pytest.raises(SegflowError, match=r"^unknown split trainval, all: choose from train, val, test$"):
        layout.discover(dataset, ("trainval", "all"))


def test_validate_accepts_a_test_split_with_only_void_labels(dataset):
    (test_label,) = _files(dataset / "gtFine" / "test", LABEL_IDS_SUFFIX)
    assert set(np.unique(np.asarray(Image.open(test_label)))) <= {0, 1, 2, 3}

    samples = layout.validate(dataset)

    assert samples == layout.discover(dataset)


def test_validate_reports_every_problem_at_once_each_naming_its_file(dataset):
    images, labels = _files(dataset / "leftImg8bit" / "train", IMAGE_SUFFIX), _files(dataset / "gtFine" / "train", LABEL_IDS_SUFFIX)
    labels[0].unlink()  # image without label
    images[1].unlink()  # label without image
    _save(labels[2], np.zeros((32, 128), np.uint8))  # size mismatch
    _save(labels[3], np.zeros((64, 128, 3), np.uint8))  # RGB label
    _save(labels[4], np.zeros((64, 128), np.uint16))  # 16-bit label
    images[5].write_bytes(b"GIF89a not a png at all, but long enough to hold a header")
    for split_dir in (dataset / "leftImg8bit" / "test", dataset / "gtFine" / "test"):
        for path in split_dir.rglob("*.*"):
            path.unlink()  # empty split
    for path in (dataset / "gtFine" / "val").rglob("*.*"):
        path.unlink()
    (dataset / "gtFine" / "val" / "frankfurt").rmdir()
    (dataset / "gtFine" / "val").rmdir()  # missing split folder

    with pytest.raises(SegflowError) as raised:
        layout.validate(dataset)

    message = str(raised.value)
    relative = lambda path: str(path.relative_to(dataset))  # noqa: E731
    assert message.startswith(f"8 problems in the dataset at {dataset}:")
    expected = [
        f"{relative(images[0])}: image without label (expected {relative(labels[0])})",
        f"{relative(labels[1])}: label without image (expected {relative(images[1])})",
        f"{relative(labels[2])}: size 128x32 differs from its image's 128x64",
        f"{relative(labels[3])}: wrong mode 8-bit RGB, expected 8-bit grayscale labelIds",
        f"{relative(labels[4])}: wrong mode 16-bit grayscale, expected 8-bit grayscale labelIds",
        f"{relative(images[5])}: not a PNG file",
        "leftImg8bit/test: split 'test' has no images",
        "gtFine/val: missing folder for split 'val'",
    ]
    for line in expected:
        assert line in message
    assert len(message.splitlines()) == 1 + len(expected)


def test_validate_names_an_unreadable_file(dataset):
    image = _files(dataset / "leftImg8bit" / "val", IMAGE_SUFFIX)[0]
    image.unlink()
    image.mkdir()  # a folder where the PNG should be: open() fails

    with pytest.raises(SegflowError, match=re.escape(f"{image.relative_to(dataset)}: unreadable: Is a directory")):
        layout.validate(dataset)


def test_validate_on_a_missing_folder(tmp_path):
    with pytest.raises(SegflowError, match=re.escape(f"{tmp_path / 'nowhere'}: no such folder")):
        layout.validate(tmp_path / "nowhere")


def test_long_problem_lists_are_capped(tmp_path):
    problems = [layout.Problem(tmp_path / f"{index:03d}.png", "bad") for index in range(70)]

    with pytest.raises(SegflowError) as raised:
        layout.raise_if_problems(tmp_path, problems)

    lines = str(raised.value).splitlines()
    assert lines[0] == f"70 problems in the dataset at {tmp_path}:"
    assert len(lines) == 1 + layout.MAX_LISTED_PROBLEMS + 1 and lines[-1].strip() == "... and 20 more"


@pytest.mark.parametrize(
    ("array", "mode", "channels"),
    [
        (np.zeros((5, 300, 3), np.uint8), "8-bit RGB", 3),
        (np.zeros((5, 300), np.uint8), "8-bit grayscale", 1),
        (np.zeros((5, 300), np.uint16), "16-bit grayscale", 1),
    ],
)
def test_read_png_header_gives_size_and_mode_without_decoding(array, mode, channels):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")

    header = layout.read_png_header(buffer.getvalue()[: layout.PNG_HEADER_SIZE])

    assert (header.width, header.height, header.mode, header.channels) == (300, 5, mode, channels)


def test_check_png_chunks_finds_truncated_and_damaged_files():
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 128, dtype=np.uint32).reshape(64, 128).astype(np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    damaged = bytearray(png)
    damaged[60] ^= 0xFF  # inside the IDAT data

    assert layout.check_png_chunks(png) is None
    assert layout.check_png_chunks(png[:-20]).startswith("truncated PNG")
    assert layout.check_png_chunks(png[:-12]) == "truncated PNG: no IEND chunk"
    assert layout.check_png_chunks(bytes(damaged)) == "corrupt PNG: chunk IDAT at byte 33 fails its CRC"
    assert layout.check_png_chunks(b"GIF89a") == "not a PNG file"
    assert layout.check_png_chunks(png[:33] + png[-12:]) == "corrupt PNG: no image data"  # IHDR, IEND only
    damaged_header = bytearray(png)
    damaged_header[20] ^= 0xFF  # the width, inside IHDR
    with pytest.raises(ValueError, match="^corrupt PNG header$"):
        layout.read_png_header(bytes(damaged_header[: layout.PNG_HEADER_SIZE]))


def test_discover_names_the_dataset_and_each_unpaired_file(dataset):
    label = _files(dataset / "gtFine" / "val", LABEL_IDS_SUFFIX)[0]
    label.unlink()
    image = label.relative_to(dataset / "gtFine").parent / label.name.replace(LABEL_IDS_SUFFIX, IMAGE_SUFFIX)

    with pytest.raises(SegflowError) as raised:
        layout.discover(dataset)

    assert str(raised.value).startswith(
        f"1 problem in the dataset at {dataset}:\n  leftImg8bit/{image}: image without label"
    )


def test_validate_names_an_image_that_is_not_8_bit_rgb(dataset):
    image = _files(dataset / "leftImg8bit" / "val", IMAGE_SUFFIX)[0]
    height, width = np.asarray(Image.open(image)).shape[:2]
    _save(image, np.zeros((height, width, 4), np.uint8))

    with pytest.raises(SegflowError) as raised:
        layout.validate(dataset)

    assert (
        f"{image.relative_to(dataset)}: wrong mode 8-bit RGBA, expected 8-bit RGB (as `segflow predict`); convert it"
        " first, e.g. with Pillow: Image.open(path).convert('RGB').save(path)"
    ) in str(raised.value)


def test_validate_checks_only_the_splits_asked_for(dataset):
    _save(_files(dataset / "gtFine" / "train", LABEL_IDS_SUFFIX)[0], np.zeros((64, 128, 3), np.uint8))  # RGB label

    assert list(layout.validate(dataset, ("val",))) == ["val"]


def test_read_png_header_refuses_a_short_header_and_a_first_chunk_other_than_ihdr():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((5, 300), np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()

    for data in (png[:20], png[:12] + b"IDAT" + png[16 : layout.PNG_HEADER_SIZE]):
        with pytest.raises(ValueError, match="^not a PNG file$"):
            layout.read_png_header(data)
