"""`segflow predict`: Cityscapes submission PNGs that score what `segflow evaluate --model` scores."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segflow.cityscapes import IMAGE_DIR, IMAGE_SUFFIX, TRAIN_LABELS, colorize, to_label_ids
from segflow.cli import cli

pytestmark = pytest.mark.slow
EVALUATED_LABEL_IDS = {label.id for label in TRAIN_LABELS}


def _predict(model, images, out, *options):
    result = CliRunner().invoke(cli, ["predict", "--model", str(model), "--images", str(images), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return result


def test_predictions_scored_as_a_folder_match_evaluate_model(trained, synthetic_dataset, tmp_path):
    from segflow.evaluate import evaluate_model
    from segflow.scoring import score_folder

    root, records = synthetic_dataset
    _predict(trained.model_path, root / IMAGE_DIR / "val", tmp_path / "predictions", "--batch-size", "1")
    folder = score_folder(tmp_path / "predictions", root, split="val")
    model = evaluate_model(trained.model_path, records, tmp_path / "evaluation")
    assert folder["miou"] == pytest.approx(model["miou"], abs=1e-6)
    for name, value in model["class_iou"].items():
        assert folder["class_iou"][name] == (None if value is None else pytest.approx(value, abs=1e-6))
    assert folder["pixel_accuracy"] == pytest.approx(model["pixel_accuracy"], abs=1e-6)


def test_label_ids_pngs_are_named_like_their_images_and_hold_evaluated_label_ids(trained, synthetic_dataset, tmp_path):
    images = sorted((synthetic_dataset[0] / IMAGE_DIR / "val").rglob(f"*{IMAGE_SUFFIX}"))
    result = _predict(trained.model_path, synthetic_dataset[0] / IMAGE_DIR / "val", tmp_path)
    assert f"{len(images)} labelIds PNGs" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in images)
    for path in images:
        with Image.open(tmp_path / path.name) as prediction:
            assert prediction.mode == "L" and prediction.size == (128, 64)
            assert set(np.unique(np.asarray(prediction))) <= EVALUATED_LABEL_IDS


def test_train_ids_color_and_overlay_formats_agree(trained, synthetic_dataset, tmp_path):
    pattern = str(synthetic_dataset[0] / IMAGE_DIR / "val" / "*" / f"*{IMAGE_SUFFIX}")
    for output_format in ("labelIds", "trainIds", "color", "overlay"):
        _predict(trained.model_path, pattern, tmp_path / output_format, "--format", output_format, "--batch-size", "3")
    for path in sorted((tmp_path / "labelIds").iterdir()):
        label_ids = np.asarray(Image.open(path))
        train_ids = np.asarray(Image.open(tmp_path / "trainIds" / f"{path.stem}_trainIds.png"))
        assert train_ids.max() < 19
        np.testing.assert_array_equal(to_label_ids(train_ids), label_ids)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "color" / path.name)), colorize(train_ids))
        image = np.asarray(Image.open(next((synthetic_dataset[0] / IMAGE_DIR / "val").rglob(path.name))), dtype=np.uint16)
        expected_overlay = ((image + colorize(train_ids)) // 2).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "overlay" / path.name)), expected_overlay)


def test_images_larger_than_the_model_are_predicted_at_their_own_size(trained, tmp_path):
    for index, size in enumerate([(256, 128), (256, 128), (200, 100)]):
        pixels = np.random.default_rng(index).integers(0, 256, size=(*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"bonn_000000_{index:06d}_leftImg8bit.png")
    _predict(trained.model_path, tmp_path, tmp_path / "out", "--batch-size", "2")
    sizes = {path.name: Image.open(path).size for path in (tmp_path / "out").iterdir()}
    assert sizes == {
        "bonn_000000_000000_leftImg8bit.png": (256, 128),
        "bonn_000000_000001_leftImg8bit.png": (256, 128),
        "bonn_000000_000002_leftImg8bit.png": (200, 100),
    }


def test_no_matching_images_is_one_clear_error(trained, tmp_path):
    result = CliRunner().invoke(cli, ["predict", "--model", str(trained.model_path), "--images", str(tmp_path / "*.png"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: no images found at {tmp_path / '*.png'} (a folder of .png/.jpg files or a glob pattern)"
