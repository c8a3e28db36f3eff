"""Conversion to TFRecords: round trip through plain TensorFlow, manifest, re-runs, bad inputs."""

import hashlib
import os
import json
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segflow import records
from segflow.cityscapes import CLASS_NAMES, IMAGE_SUFFIX, LABEL_IDS_SUFFIX, to_train_ids
from segflow.cli import cli
from segflow.convert import MANIFEST_NAME, convert, read_manifest
from segflow.errors import SegflowError
from segflow.records import FEATURE_KEYS
from segflow.synthetic import write_dataset

SCHEMA = {
    FEATURE_KEYS.image: "string",
    FEATURE_KEYS.filename: "string",
    FEATURE_KEYS.image_format: "string",
    FEATURE_KEYS.height: "int64",
    FEATURE_KEYS.width: "int64",
    FEATURE_KEYS.channels: "int64",
    FEATURE_KEYS.label: "string",
    FEATURE_KEYS.label_format: "string",
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A dataset converted once by two worker processes, two shards for train: (data_dir, out_dir, manifest)."""
    root = tmp_path_factory.mktemp("converted")
    data_dir = write_dataset(root / "cityscapes", train=4, val=2, test=1)
    manifest = convert(data_dir, root / "records", num_shards=2, workers=2, progress=False)
    return data_dir, root / "records", manifest


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "cityscapes", train=2, val=1, test=1)


def _read_records(paths):
    """Every record as a dict of numpy values, through plain tf.data and tf.io.parse_single_example."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature((), getattr(tf, dtype)) for key, dtype in SCHEMA.items()}
    dataset = tf.data.TFRecordDataset([str(path) for path in paths]).map(lambda data: tf.io.parse_single_example(data, spec))
    return [{key: value.numpy() for key, value in example.items()} for example in dataset]


def _source_files(data_dir, split):
    """{key: (image path, labelIds path)} of a split."""
    images = {path.name[: -len(IMAGE_SUFFIX)]: path for path in (data_dir / "leftImg8bit" / split).rglob(f"*{IMAGE_SUFFIX}")}
    return {key: (path, data_dir / "gtFine" / split / path.parent.name / f"{key}{LABEL_IDS_SUFFIX}") for key, path in images.items()}


def _snapshot(folder):
    return {path.name: (path.stat().st_mtime_ns, path.stat().st_ino, path.read_bytes()) for path in folder.iterdir()}


def _leftovers(parent):
    return [path.name for path in parent.iterdir() if path.name.startswith(".")]


# === Round trip ===


def test_records_hold_original_image_bytes_and_train_id_labels(converted):
    import tensorflow as tf

    data_dir, out_dir, _ = converted
    for split in ("train", "val", "test"):
        sources = _source_files(data_dir, split)
        examples = _read_records(sorted(out_dir.glob(records.shard_pattern(split))))

        assert sorted(example[FEATURE_KEYS.filename].decode() for example in examples) == sorted(sources)
        for example in examples:
            image_path, label_path = sources[example[FEATURE_KEYS.filename].decode()]
            label_ids = np.asarray(Image.open(label_path))
            assert example[FEATURE_KEYS.image] == image_path.read_bytes()
            np.testing.assert_array_equal(tf.io.decode_png(example[FEATURE_KEYS.label])[..., 0].numpy(), to_train_ids(label_ids))
            assert (example[FEATURE_KEYS.height], example[FEATURE_KEYS.width], example[FEATURE_KEYS.channels]) == (64, 128, 3)
            assert example[FEATURE_KEYS.image_format] == example[FEATURE_KEYS.label_format] == b"png"


def test_records_read_with_decode_example(converted):
    import tensorflow as tf

    _, out_dir, _ = converted
    shard = sorted(out_dir.glob(records.shard_pattern("val")))[0]
    example = next(iter(tf.data.TFRecordDataset(str(shard)).map(records.decode_example)))

    assert tf.io.decode_png(example[FEATURE_KEYS.image]).shape == (64, 128, 3)
    assert int(example[FEATURE_KEYS.width]) == 128


def test_encode_example_is_a_tf_train_example():
    import tensorflow as tf

    image_png = bytes(range(256)) * 3  # lengths above 127 need multi-byte varints
    serialized = records.encode_example(
        image_png=image_png, filename="ulm_000001_000019", height=1024, width=2048, channels=3, label_png=b"label"
    )
    feature = tf.train.Example.FromString(serialized).features.feature

    assert set(feature) == set(SCHEMA)
    assert feature[FEATURE_KEYS.image].bytes_list.value == [image_png]
    assert feature[FEATURE_KEYS.filename].bytes_list.value == [b"ulm_000001_000019"]
    assert [feature[key].int64_list.value[0] for key in (FEATURE_KEYS.height, FEATURE_KEYS.width, FEATURE_KEYS.channels)] == [1024, 2048, 3]
    assert feature[FEATURE_KEYS.label].bytes_list.value == [b"label"]


def test_conversion_workers_do_not_import_tensorflow():
    """Each worker process imports segflow.convert; TensorFlow would add seconds to each start."""
    code = "import sys, segflow.convert; print('tensorflow' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# === Manifest ===


def test_manifest_counts_images_and_class_pixels_of_each_split(converted):
    data_dir, out_dir, manifest = converted

    assert json.loads((out_dir / MANIFEST_NAME).read_text()) == {key: value for key, value in manifest.items() if key != "up_to_date"}
    for split, expected_count in (("train", 4), ("val", 2), ("test", 1)):
        info = manifest["splits"][split]
        pixels = np.zeros(256, np.int64)
        for _, label_path in _source_files(data_dir, split).values():
            pixels += np.bincount(to_train_ids(np.asarray(Image.open(label_path))).ravel(), minlength=256)
        assert info["num_examples"] == expected_count
        assert list(info["class_pixels"]) == [*CLASS_NAMES, "ignore"]
        assert list(info["class_pixels"].values()) == [*pixels[:19].tolist(), int(pixels[255])]
    assert manifest["splits"]["train"]["class_pixels"]["road"] > 0
    assert set(manifest["splits"]["test"]["class_pixels"].values()) == {0, 64 * 128}  # all void


def test_manifest_lists_every_shard_with_its_sha256(converted):
    _, out_dir, manifest = converted

    assert sorted(path.name for path in out_dir.iterdir()) == sorted(
        [MANIFEST_NAME] + [shard["name"] for info in manifest["splits"].values() for shard in info["shards"]]
    )
    train_shards = manifest["splits"]["train"]["shards"]
    assert [shard["name"] for shard in train_shards] == [records.shard_name("train", index, 2) for index in range(2)]
    assert [shard["num_examples"] for shard in train_shards] == [2, 2]
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            data = (out_dir / shard["name"]).read_bytes()
            assert (shard["bytes"], shard["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
            assert len(_read_records([out_dir / shard["name"]])) == shard["num_examples"]


# === Re-runs ===


def test_rerun_on_unchanged_inputs_does_nothing(dataset, tmp_path):
    out_dir = tmp_path / "records"
    first = convert(dataset, out_dir, workers=1, progress=False)
    before = _snapshot(out_dir)

    second = convert(dataset, out_dir, workers=1, progress=False)

    assert (first["up_to_date"], second["up_to_date"]) == (False, True)
    assert _snapshot(out_dir) == before
    assert second["fingerprint"] == first["fingerprint"]


def test_changed_input_rebuilds(dataset, tmp_path):
    out_dir = tmp_path / "records"
    convert(dataset, out_dir, workers=1, progress=False)
    label_path = sorted((dataset / "gtFine" / "val").rglob(f"*{LABEL_IDS_SUFFIX}"))[0]
    label_ids = np.asarray(Image.open(label_path)).copy()
    label_ids[:] = 26  # all car
    Image.fromarray(label_ids).save(label_path)

    manifest = convert(dataset, out_dir, workers=1, progress=False)

    assert manifest["up_to_date"] is False
    assert manifest["splits"]["val"]["class_pixels"]["car"] == 64 * 128
    (example,) = _read_records(out_dir.glob(records.shard_pattern("val")))
    assert example[FEATURE_KEYS.label] != b"" and manifest["splits"]["train"]["num_examples"] == 2


def test_other_shard_count_rebuilds(dataset, tmp_path):
    out_dir = tmp_path / "records"
    convert(dataset, out_dir, workers=1, progress=False)

    manifest = convert(dataset, out_dir, num_shards=2, workers=1, progress=False)

    assert manifest["up_to_date"] is False
    assert sorted(path.name for path in out_dir.glob(records.shard_pattern("train"))) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert not list(out_dir.glob("train-*-of-00001.tfrecord"))  # no stale shards from the first run


def test_failed_run_keeps_the_previous_output(dataset, tmp_path):
    out_dir = tmp_path / "records"
    convert(dataset, out_dir, workers=1, progress=False)
    before = _snapshot(out_dir)
    label_path = sorted((dataset / "gtFine" / "train").rglob(f"*{LABEL_IDS_SUFFIX}"))[0]
    Image.fromarray(np.full((64, 128), 99, np.uint8)).save(label_path)

    with pytest.raises(SegflowError, match="label values not in the Cityscapes table: 99"):
        convert(dataset, out_dir, workers=2, progress=False)

    assert _snapshot(out_dir) == before
    assert _leftovers(tmp_path) == []


def test_refuses_an_output_folder_holding_other_files(dataset, tmp_path):
    out_dir = tmp_path / "records"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")

    with pytest.raises(SegflowError, match=r"holds files that conversion did not write \(notes.txt\)"):
        convert(dataset, out_dir, workers=1, progress=False)

    assert [path.name for path in out_dir.iterdir()] == ["notes.txt"]


# === Bad inputs: one clear error naming the file, nothing written ===


def _first(dataset, folder, split, suffix):
    return sorted((dataset / folder / split).rglob(f"*{suffix}"))[0]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _flip_a_byte_in_the_pixels(path):
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 20] ^= 0xFF
    path.write_bytes(bytes(data))


BAD_INPUTS = {
    "image without label": (lambda d: _first(d, "gtFine", "train", LABEL_IDS_SUFFIX).unlink(), "leftImg8bit", "image without label"),
    "label without image": (lambda d: _first(d, "leftImg8bit", "train", IMAGE_SUFFIX).unlink(), "gtFine", "label without image"),
    "size mismatch": (
        lambda d: Image.fromarray(np.zeros((32, 64), np.uint8)).save(_first(d, "gtFine", "train", LABEL_IDS_SUFFIX)),
        "gtFine",
        "size 64x32 differs from its image's 128x64",
    ),
    "truncated image": (lambda d: _truncate(_first(d, "leftImg8bit", "train", IMAGE_SUFFIX)), "leftImg8bit", "truncated PNG"),
    "damaged label": (
        lambda d: _flip_a_byte_in_the_pixels(_first(d, "gtFine", "train", LABEL_IDS_SUFFIX)),
        "gtFine",
        "corrupt PNG: chunk IDAT",
    ),
    "not a PNG": (lambda d: _first(d, "leftImg8bit", "train", IMAGE_SUFFIX).write_bytes(b"\xff\xd8\xff" * 20), "leftImg8bit", "not a PNG file"),
    "label values": (
        lambda d: Image.fromarray(np.full((64, 128), 40, np.uint8)).save(_first(d, "gtFine", "train", LABEL_IDS_SUFFIX)),
        "gtFine",
        "label values not in the Cityscapes table: 40",
    ),
    "RGB label": (
        lambda d: Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(_first(d, "gtFine", "train", LABEL_IDS_SUFFIX)),
        "gtFine",
        "wrong mode 8-bit RGB",
    ),
    "16-bit label": (
        lambda d: Image.fromarray(np.zeros((64, 128), np.uint16)).save(_first(d, "gtFine", "train", LABEL_IDS_SUFFIX)),
        "gtFine",
        "wrong mode 16-bit grayscale",
    ),
    "missing split": (lambda d: shutil.rmtree(d / "leftImg8bit" / "val"), "leftImg8bit/val", "missing folder for split 'val'"),
    "empty split": (
        lambda d: [path.unlink() for path in (d / "leftImg8bit" / "test").rglob("*.png")]
        + [path.unlink() for path in (d / "gtFine" / "test").rglob("*.*")],
        "leftImg8bit/test",
        "split 'test' has no images",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_error_naming_the_file_and_writes_nothing(dataset, tmp_path, case):
    break_dataset, folder, reason = BAD_INPUTS[case]
    break_dataset(dataset)

    with pytest.raises(SegflowError) as raised:
        convert(dataset, tmp_path / "records", workers=1, progress=False)

    (line,) = [line.strip() for line in str(raised.value).splitlines()[1:]]
    assert re.match(rf"{re.escape(folder)}(/train/\w+/\w+\.png)?: {re.escape(reason)}", line), line
    assert not (tmp_path / "records").exists()
    assert _leftovers(tmp_path) == []


def test_problems_found_in_headers_and_in_pixels_come_in_one_error(dataset, tmp_path):
    """Header problems do not hide the ones only decoding finds: one run lists them all."""
    _first(dataset, "gtFine", "val", LABEL_IDS_SUFFIX).unlink()
    Image.fromarray(np.full((64, 128), 200, np.uint8)).save(_first(dataset, "gtFine", "train", LABEL_IDS_SUFFIX))

    with pytest.raises(SegflowError) as raised:
        convert(dataset, tmp_path / "records", workers=2, progress=False)

    message = str(raised.value)
    assert message.startswith("2 problems") and "image without label" in message and "not in the Cityscapes table: 200" in message
    assert not (tmp_path / "records").exists()


# === CLI ===


def test_cli_converts_then_reports_up_to_date(dataset, tmp_path):
    out_dir = tmp_path / "records"
    arguments = ["convert", "--data", str(dataset), "--out", str(out_dir), "--workers", "1"]

    first = CliRunner().invoke(cli, arguments)
    second = CliRunner().invoke(cli, arguments)

    assert first.exit_code == 0, first.output
    assert first.output.strip() == f"wrote: {out_dir} (3 shards; images: train 2, val 1, test 1)"
    assert second.exit_code == 0 and second.output.startswith(f"up to date: {out_dir}")


def test_cli_bad_dataset_exits_1_with_the_error(dataset, tmp_path):
    label_path = _first(dataset, "gtFine", "train", LABEL_IDS_SUFFIX)
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(label_path)

    result = CliRunner().invoke(cli, ["convert", "--data", str(dataset), "--out", str(tmp_path / "out"), "--splits", "train"])

    assert result.exit_code == 1
    assert result.output.startswith("Error: 1 problem in the dataset at")
    assert f"{label_path.relative_to(dataset)}: wrong mode 8-bit RGB" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_input_fingerprint_is_what_convert_records_and_changes_with_an_input(tmp_path):
    from segflow.convert import input_fingerprint

    data = write_dataset(tmp_path / "data", train=2, val=1, test=1, height=32, width=64)
    manifest = convert(data, tmp_path / "records", workers=1, progress=False)
    assert input_fingerprint(data) == manifest["fingerprint"]
    label = next((data / "gtFine" / "train").rglob("*_labelIds.png"))
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert input_fingerprint(data) != manifest["fingerprint"]


# === Crashes: a kill at any moment, a full disk ===


def _state(out_dir):
    """The manifest of a complete output (every shard it lists there with its size), else None."""
    from segflow.convert import _is_complete, read_manifest

    manifest = read_manifest(out_dir)
    if manifest is None or not _is_complete(manifest, manifest["fingerprint"], out_dir):
        return None
    return manifest


def test_a_kill_at_every_rename_leaves_the_old_or_the_new_output(dataset, tmp_path):
    from crash import killed_after_renames

    out_dir = tmp_path / "records"
    old = convert(dataset, out_dir, num_shards=1, workers=1, progress=False)["fingerprint"]
    new = convert(dataset, tmp_path / "reference", num_shards=2, workers=1, progress=False)["fingerprint"]
    for renames in range(20):
        if not killed_after_renames(renames, lambda: convert(dataset, out_dir, num_shards=2, workers=1, progress=False)):
            break
        state = _state(out_dir)
        assert state is not None and state["fingerprint"] == old, f"killed before rename {renames + 1}"
    assert renames == 6  # four shards (train 2, val 1, test 1), the manifest, the exchange of the folders
    assert _state(out_dir)["fingerprint"] == new != old
    # A later run after a kill finds the output complete and cleans up what the kill left.
    assert convert(dataset, out_dir, num_shards=2, workers=1, progress=False)["up_to_date"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cityscapes", "records", "reference"]


def test_sigkill_mid_conversion_keeps_the_output_leaves_no_worker_and_the_next_run_cleans_up(tmp_path):
    from crash import children, run_segflow, running, segflow_command, wait_for

    data_dir = write_dataset(tmp_path / "cityscapes", train=6, val=2, test=1)
    out_dir = tmp_path / "records"
    convert(data_dir, out_dir, num_shards=1, workers=1, progress=False)
    old = _snapshot(out_dir)
    staged = lambda: [path for path in tmp_path.iterdir() if path.name.endswith(".segflow-tmp")]  # noqa: E731

    command = segflow_command("convert", "--data", str(data_dir), "--out", str(out_dir), "--shards", "3", "--workers", "2")
    wait_for(lambda: staged() and len(children(command.pid)) >= 2, what="the staging folder and two conversion workers")
    workers = children(command.pid)
    os.kill(command.pid, signal.SIGKILL)  # the command only, not its process group: its workers must follow
    command.wait()

    assert staged(), "the conversion had finished before the kill: the test proves nothing"
    wait_for(lambda: not any(running(pid) for pid in workers), timeout_s=5, what="the workers to die with their parent")
    assert _snapshot(out_dir) == old
    (tmp_path / ".records.partial-1a2b3c4d").mkdir()  # what versions before atomic.py left behind
    again = run_segflow("convert", "--data", str(data_dir), "--out", str(out_dir), "--shards", "3", "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert "removed 2 leftover staging folders of a killed run: " in again.stderr
    assert "wrote: " in again.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cityscapes", "records"]
    assert len(read_manifest(out_dir)["splits"]["train"]["shards"]) == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_converting_into_a_full_disk_is_one_line_exit_1_and_no_staging_left(tmp_path):
    from crash import run_segflow

    data_dir = write_dataset(tmp_path / "cityscapes", train=12, val=2, test=1, height=128, width=256)
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = run_segflow("convert", "--data", str(data_dir), "--out", str(mount / "records"), "--workers", "2")
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(
        rf"Error: disk full while writing TFRecords to {re.escape(str(mount / 'records'))} "
        r"\(\d+\.\d MiB needed, 0\.\d MiB free\); free some space and run again",
        lines[0],
    ), lines[0]
