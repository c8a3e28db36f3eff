"""Inputs that would make a result silently wrong or destroy a file are refused, before any work:
records that no longer match their manifest, outputs that would replace inputs, trainIds scored
as labelIds, a split without ground truth, photos that are not RGB."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segflow.cityscapes import IMAGE_DIR, LABEL_DIR, LABEL_ID_TO_TRAIN_ID, LABEL_IDS_SUFFIX, to_label_ids
from segflow.cli import cli
from segflow.convert import convert, verify_records
from segflow.errors import SegflowError
from segflow.scoring import score_folder
from segflow.synthetic import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    return write_dataset(root / "cityscapes", train=2, val=2, test=1, height=32, width=64)


@pytest.fixture
def records(dataset, tmp_path):
    """Records of `dataset` with two val shards (one image each)."""
    convert(dataset, tmp_path / "records", num_shards=2, workers=1, progress=False)
    return tmp_path / "records"


def _val_shards(records):
    return sorted(records.glob("val-*.tfrecord"))


# === Records against their manifest ===


def test_intact_records_verify_and_list_every_shard(records):
    from segflow.input_pipeline import list_shards

    manifest = verify_records(records)
    assert set(manifest["splits"]) == {"train", "val", "test"}
    assert [p.rsplit("/", 1)[1] for p in list_shards(records, "val")] == [p.name for p in _val_shards(records)]


def test_a_deleted_shard_is_named_by_every_reader(records, tmp_path):
    from segflow.input_pipeline import list_shards

    gone = _val_shards(records)[1]
    gone.unlink()
    message = f"the records in {records} no longer match manifest.json: {gone.name} is missing"
    with pytest.raises(SegflowError, match=message):
        verify_records(records, ("val",))
    with pytest.raises(SegflowError, match=message):
        list_shards(records, "val")  # what training, evaluation and the report's samples read through
    verify_records(records, ("train",))  # the other splits are still whole

    model = tmp_path / "model.keras"
    model.write_bytes(b"not read: the records are checked first")
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(model), "--records", str(records), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and f"{gone.name} is missing" in result.output
    assert not (tmp_path / "e").exists()


def test_a_changed_or_cut_or_extra_shard_is_named(records):
    first, second = _val_shards(records)
    data = bytearray(first.read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes
    first.write_bytes(bytes(data))
    second.write_bytes(second.read_bytes()[:-10])
    shutil.copy(second, records / "val-00002-of-00003.tfrecord")
    with pytest.raises(SegflowError) as raised:
        verify_records(records, ("val",))
    message = str(raised.value)
    assert f"{first.name} has changed (its sha256 differs from the manifest's)" in message
    size = second.stat().st_size
    assert f"{second.name} has {size} bytes, the manifest says {size + 10}" in message
    assert "val-00002-of-00003.tfrecord is not in the manifest" in message


def test_train_refuses_broken_records_before_tensorflow_loads_and_before_writing(records, tmp_path):
    _val_shards(records)[0].unlink()
    out = tmp_path / "run"
    script = (
        "import sys; from segflow.cli import cli\n"
        "try: cli(sys.argv[1:], standalone_mode=False)\n"
        "except Exception as error: print('ERROR', error)\n"
        "print('tensorflow loaded:', 'tensorflow' in sys.modules)\n"
    )
    arguments = ["train", "--arch", "unet", "--records", str(records), "--out", str(out), "--image-size", "32x64"]
    result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True, timeout=120)
    assert "is missing" in result.stdout and "tensorflow loaded: False" in result.stdout, result.stdout + result.stderr
    assert not out.exists()

    missing = CliRunner().invoke(cli, [*arguments[:4], str(tmp_path / "nope"), *arguments[5:]])
    assert missing.exit_code == 1 and f"records folder {tmp_path / 'nope'} does not exist" in missing.output
    assert not out.exists()


# === Scoring ===


def _predictions_from_ground_truth(dataset, out, split="val", *, as_train_ids=False, name="{key}_pred.png"):
    """Perfect predictions: the ground truth itself, as labelIds or as trainIds (void -> 0)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((dataset / LABEL_DIR / split).rglob(f"*{LABEL_IDS_SUFFIX}")):
        label_ids = np.asarray(Image.open(path))
        values = label_ids
        if as_train_ids:
            values = LABEL_ID_TO_TRAIN_ID[label_ids]
            values[values == 255] = 0
        key = path.name[: -len(LABEL_IDS_SUFFIX)]
        Image.fromarray(values.astype(np.uint8)).save(out / name.format(key=key))
    return out


def test_trainids_predictions_are_refused_unless_forced(dataset, tmp_path):
    labels = _predictions_from_ground_truth(dataset, tmp_path / "labelIds")
    train_ids = _predictions_from_ground_truth(dataset, tmp_path / "trainIds", as_train_ids=True)

    assert score_folder(labels, dataset)["miou"] == pytest.approx(1.0)
    with pytest.raises(SegflowError, match="look like trainIds, not labelIds"):
        score_folder(train_ids, dataset)
    forced = score_folder(train_ids, dataset, force=True)
    assert forced["miou"] < 0.2  # what scoring them as labelIds means: nothing
    relabelled = tmp_path / "relabelled"
    relabelled.mkdir()
    for path in train_ids.iterdir():
        Image.fromarray(to_label_ids(np.asarray(Image.open(path)))).save(relabelled / path.name)
    assert score_folder(relabelled, dataset)["miou"] == pytest.approx(1.0)

    result = CliRunner().invoke(cli, ["evaluate", "--predictions", str(train_ids), "--ground-truth", str(dataset),
                                      "--out", str(tmp_path / "m.json")])  # fmt: skip
    assert result.exit_code == 1 and "look like trainIds" in result.output and not (tmp_path / "m.json").exists()
    result = CliRunner().invoke(cli, ["evaluate", "--predictions", str(train_ids), "--ground-truth", str(dataset),
                                      "--out", str(tmp_path / "m.json"), "--force"])  # fmt: skip
    assert result.exit_code == 0 and json.loads((tmp_path / "m.json").read_text())["miou"] < 0.2


def test_files_named_as_trainids_by_predict_are_refused_by_name(dataset, tmp_path):
    named = _predictions_from_ground_truth(dataset, tmp_path / "p", name="{key}_leftImg8bit_trainIds.png")
    with pytest.raises(SegflowError, match=r"2 of 2 predictions are trainIds files .*--format labelIds"):
        score_folder(named, dataset)


def test_a_split_without_evaluated_ground_truth_is_an_error_that_says_why(dataset, records, tmp_path):
    predictions = _predictions_from_ground_truth(dataset, tmp_path / "test", split="test")
    with pytest.raises(SegflowError, match="the test split .* has no evaluated ground truth: every pixel .* is void"):
        score_folder(predictions, dataset, split="test")

    model = tmp_path / "model.keras"
    model.write_bytes(b"not read")
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(model), "--records", str(records), "--split", "test",
                                      "--out", str(tmp_path / "e")])  # fmt: skip
    assert result.exit_code == 1 and "has no evaluated ground truth" in result.output and "mIoU" not in result.output


# === Predict: outputs never replace inputs; the same image modes as convert ===


def _predict(images, out, *options):
    return CliRunner().invoke(cli, ["predict", "--model", "unused.keras", "--images", str(images), "--out", str(out), *options])


def _photo(path, mode="RGB"):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    (image if mode == "RGB" else image.convert(mode)).save(path)
    return path


def test_two_inputs_with_one_output_name_are_refused(tmp_path):
    (tmp_path / "in").mkdir()
    _photo(tmp_path / "in" / "frame_0001.jpg")
    _photo(tmp_path / "in" / "frame_0001.png")
    result = _predict(tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{tmp_path / 'in' / 'frame_0001.jpg'} and {tmp_path / 'in' / 'frame_0001.png'} would both be written to" in result.output
    assert not (tmp_path / "out").exists()


def test_predictions_never_replace_their_images(tmp_path):
    photo = _photo(tmp_path / "frame_0001.png")
    before = photo.read_bytes()
    result = _predict(str(tmp_path / "*.png"), tmp_path)
    assert result.exit_code == 1 and f"would replace the input images {photo}" in result.output
    (tmp_path / "sub").mkdir()
    shutil.copy(photo, tmp_path / "sub" / "other.png")  # as an earlier run's colour output there would be
    result = _predict(tmp_path, tmp_path / "sub")
    assert result.exit_code == 1 and f"would replace the input images {tmp_path / 'sub' / 'other.png'}" in result.output
    assert photo.read_bytes() == before
    # trainIds outputs have their own names, so they replace nothing either
    assert _predict(str(tmp_path / "*.png"), tmp_path, "--format", "trainIds").output.count("would replace") == 0


@pytest.mark.parametrize("mode", ["P", "L"])
def test_convert_and_predict_refuse_the_same_non_rgb_photo_with_the_fix(mode, tmp_path):
    from segflow import layout

    root = write_dataset(tmp_path / "cityscapes", train=1, val=1, test=1, height=32, width=64)
    image = next((root / IMAGE_DIR / "val").rglob("*.png"))
    _photo(image, mode)
    with pytest.raises(SegflowError, match=r"wrong mode .*expected 8-bit RGB .*convert\('RGB'\)"):
        layout.validate(root)
    result = _predict(image, tmp_path / "out")
    assert result.exit_code == 1 and "segflow reads 8-bit RGB photos" in result.output and "convert('RGB')" in result.output
    assert not (tmp_path / "out").exists()


def test_train_and_evaluate_refuse_an_output_among_what_they_read(records, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"not read")
    before = sorted(path.name for path in records.iterdir())
    for arguments in (["train", "--arch", "unet", "--records", str(records), "--out", str(records / "run")],
                      ["evaluate", "--model", str(model), "--records", str(records), "--out", str(records)]):  # fmt: skip
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 1 and f"and --records {records} overlap" in result.output, result.output
    assert sorted(path.name for path in records.iterdir()) == before


@pytest.mark.slow
def test_the_convert_step_reruns_when_its_records_no_longer_verify(dataset, tmp_path):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from segflow_prefect.tasks.data import convert_records

    @flow
    def records_flow(data_root: str, records_dir: str) -> str:
        return convert_records(data_root, records_dir)

    out = tmp_path / "records"
    with prefect_test_harness(server_startup_timeout=180):
        records_flow(str(dataset), str(out))
        verify_records(out)
        [shard] = _val_shards(out)
        shard.unlink()
        records_flow(str(dataset), str(out))
    assert shard.is_file()
    verify_records(out)  # the step ran again instead of being a cache hit over a broken folder
