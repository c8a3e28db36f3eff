"""`segflow evaluate --model`: official IoU from a confusion matrix at full label resolution."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segflow.cityscapes import CLASS_NAMES, CATEGORY_NAMES, LABEL_DIR, LABEL_IDS_SUFFIX, to_train_ids
from segflow.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def metrics(trained, synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(trained.model_path), "--records", str(synthetic_dataset[1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output
    return json.loads((out / "metrics.json").read_text())


def _ground_truth_train_ids(cityscapes_root, split="val"):
    """The split's labels read straight from the gtFine labelIds PNGs, not from the records."""
    paths = sorted((cityscapes_root / LABEL_DIR / split).rglob(f"*{LABEL_IDS_SUFFIX}"))
    return [to_train_ids(np.asarray(Image.open(path))) for path in paths]


def test_the_confusion_matrix_counts_every_labelled_pixel_of_the_split(metrics, synthetic_dataset):
    labels = _ground_truth_train_ids(synthetic_dataset[0])
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (19, 19)
    assert metrics["num_images"] == len(labels) == 4
    expected_rows = np.bincount(np.concatenate([label[label < 19] for label in labels]), minlength=19)
    np.testing.assert_array_equal(confusion.sum(axis=1), expected_rows)


def test_iou_and_accuracy_follow_from_the_confusion_matrix(metrics):
    confusion = np.array(metrics["confusion_matrix"], dtype=np.float64)
    true_positives = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positives
    present = union > 0
    iou = np.where(present, true_positives / np.where(present, union, 1), np.nan)
    assert list(metrics["class_iou"]) == list(CLASS_NAMES)
    for name, value in zip(CLASS_NAMES, iou):
        assert (metrics["class_iou"][name] is None) if np.isnan(value) else metrics["class_iou"][name] == pytest.approx(value)
    assert metrics["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(true_positives.sum() / confusion.sum())
    assert list(metrics["category_iou"]) == list(CATEGORY_NAMES)
    assert 0 < metrics["category_miou"] <= 1


def test_the_exported_model_scores_what_training_reported_for_its_last_epoch(metrics, trained):
    # Same weights, same val images at the same size: only batch composition differs.
    assert metrics["miou"] == pytest.approx(trained.history[-1]["val_miou"], abs=2e-3)


def test_speed_parameters_and_flops_are_reported(metrics, trained):
    from segflow.evaluate import load_model
    from segflow.models.complexity import gflops

    model = load_model(trained.model_path)
    speed = metrics["speed"]
    assert speed["images_per_second"] > 0 and speed["end_to_end_images_per_second"] > 0
    assert 0 < speed["latency_ms_p50"] <= speed["latency_ms_p95"]
    assert speed["input_size"] == speed["evaluated_size"] == [64, 128]
    assert metrics["params"] == model.count_params()
    assert metrics["gflops"] == pytest.approx(gflops(model)) and metrics["gflops"] > 0


def test_a_model_is_scored_at_the_label_resolution_of_larger_images(trained, tmp_path):
    """Records at 128x256 and a model taking 64x128: logits are resized up to the labels."""
    from segflow.convert import convert
    from segflow.evaluate import evaluate_model
    from segflow.synthetic import write_dataset

    root = write_dataset(tmp_path / "cityscapes", train=0, val=2, test=0, height=128, width=256)
    convert(root, tmp_path / "records", splits=("val",), progress=False)
    metrics = evaluate_model(trained.model_path, tmp_path / "records", tmp_path / "out")
    labels = _ground_truth_train_ids(root)
    assert np.array(metrics["confusion_matrix"]).sum() == sum(int((label < 19).sum()) for label in labels)
    assert metrics["speed"]["evaluated_size"] == [128, 256] and metrics["speed"]["input_size"] == [64, 128]
    assert metrics["miou"] > 0.05  # the model still recognises the scenes at twice the size
    # The same scoring done here from the PNGs: each image shrunk to the model's input, its
    # logits enlarged back to the label (bilinear both ways), pixel-aligned with the ground truth.
    # Eager and compiled float rounding may flip a near-tie pixel; a misalignment of the logits
    # by a few pixels moves ~10% of them and scores ~0.06 lower (0.089 instead of 0.149).
    expected = _independent_confusion(trained.model_path, root, (64, 128))
    moved = np.abs(np.array(metrics["confusion_matrix"]) - expected).sum() / 2
    assert moved <= 0.005 * expected.sum()
    true_positives = np.diag(expected)
    union = expected.sum(0) + expected.sum(1) - true_positives
    assert metrics["miou"] == pytest.approx(np.mean(true_positives[union > 0] / union[union > 0]), abs=0.02)


def _independent_confusion(model_path, cityscapes_root, input_size) -> np.ndarray:
    import keras

    from segflow.augment import normalize_image
    from segflow.cityscapes import IMAGE_DIR, IMAGE_SUFFIX
    from segflow.evaluate import load_model

    model = load_model(model_path)  # rows: ground-truth trainId, columns: predicted, as metrics.json
    counts = np.zeros((19, 19), dtype=np.int64)
    images = sorted((cityscapes_root / IMAGE_DIR / "val").rglob(f"*{IMAGE_SUFFIX}"))
    for image_path, label in zip(images, _ground_truth_train_ids(cityscapes_root), strict=True):
        pixels = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)[np.newaxis] / 255.0
        small = keras.ops.image.resize(normalize_image(pixels), input_size, interpolation="bilinear")
        logits = keras.ops.image.resize(model(small, training=False), label.shape, interpolation="bilinear")
        prediction = keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1))[0]
        scored = label < 19
        counts += np.bincount(19 * label[scored] + prediction[scored], minlength=19 * 19).reshape(19, 19)
    return counts


def test_a_missing_model_is_one_clear_error(synthetic_dataset, tmp_path):
    result = CliRunner().invoke(
        cli, ["evaluate", "--model", str(tmp_path / "nope.keras"), "--records", str(synthetic_dataset[1]), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: model file {tmp_path / 'nope.keras'} does not exist"


def test_eager_predictors_of_several_models_agree_with_compiled_ones_and_trace_nothing():
    """The report predicts a few images with each of several models. A compiled predictor per
    model traces a graph each time, and TensorFlow warns after five tracings of the same function
    in its last ten calls; eager predictors give the same trainIds without tracing."""
    import logging

    import tensorflow as tf

    from segflow import models
    from segflow.evaluate import make_predictor

    class Messages(logging.Handler):
        def __init__(self):
            super().__init__()
            self.texts = []

        def emit(self, record):
            self.texts.append(record.getMessage())

    images = np.random.default_rng(0).normal(size=(1, 32, 64, 3)).astype(np.float32)
    built = [models.build("icnet", input_shape=(32, 64, 3), width=0.125) for _ in range(5)]
    messages = Messages()
    tf.get_logger().addHandler(messages)
    try:
        compiled = [[make_predictor(model)(images, (32, 64)) for _ in range(2)] for model in built]
        warned_compiled = [text for text in messages.texts if "retracing" in text]
        messages.texts.clear()
        eager = [[make_predictor(model, compiled=False)(images, (32, 64)) for _ in range(2)] for model in built]
    finally:
        tf.get_logger().removeHandler(messages)
    assert warned_compiled, "the compiled predictors should trip TensorFlow's retracing warning"
    assert not [text for text in messages.texts if "retracing" in text]
    for compiled_runs, eager_runs in zip(compiled, eager):
        assert eager_runs[0].shape == (1, 32, 64) and eager_runs[0].dtype == np.int32
        assert np.mean(compiled_runs[0] == eager_runs[0]) > 0.999


@pytest.mark.slow
def test_the_cli_starts_tensorflow_without_its_start_up_log_lines(trained, synthetic_dataset, tmp_path):
    """TensorFlow prints absl's "All log messages before absl::InitializeLog()" warning and INFO
    lines (CPU feature guard, oneDNN) when it loads, unless TF_CPP_MIN_LOG_LEVEL is set before
    that: the `segflow` command sets it for itself and every process it starts."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "segflow", "evaluate", "--model", str(trained.model_path),
               "--records", str(synthetic_dataset[1]), "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "absl::InitializeLog" not in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith(("I0000", "W0000"))], result.stderr
