"""Evaluate a trained model on a split of the TFRecords: the official Cityscapes class and category
IoU from a streaming confusion matrix, plus speed, parameters and FLOPs, into `metrics.json`.

Scoring happens at full label resolution: each image is resized (bilinear) to the model's input
size, and the logits are resized (bilinear) back to the label's size before the argmax, so a model
trained on smaller images is judged on every labelled pixel. `segflow predict` uses the same
`predict_train_ids`, which is why its labelIds PNGs score the same mIoU under
`segflow evaluate --predictions`. iIoU needs instance ids, which the records do not hold: score
`segflow predict` output with `segflow evaluate --predictions` for it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from segflow.digests import file_sha256
from segflow.errors import SegflowError
from segflow.run_files import METRICS_FILE, MODEL_FILE

LATENCY_RUNS = 20


def load_model(path: str | os.PathLike):
    """A `.keras` model saved by `segflow train`; a training output folder means its model.keras."""
    import keras

    from segflow import losses, models, schedules  # noqa: F401  (registers the custom objects)

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise SegflowError(f"model file {path} does not exist")
    try:
        return keras.models.load_model(path, compile=False)
    except (ValueError, OSError) as error:
        raise SegflowError(f"could not load the model {path}: {error}") from error


def model_input_size(model) -> tuple[int, int] | None:
    """(height, width) the model takes, or None if it takes any size."""
    height, width = model.input_shape[1:3]
    return (height, width) if height and width else None


def make_predictor(model, *, compiled: bool = True):
    """A function `(images [B, H, W, 3] normalised, output_size) -> trainIds [B, h, w]`: images
    resized to the model's input size, logits resized to `output_size`, then argmax.

    `compiled`: trace it into a graph once (for many batches): batch size, image size and output
    size are left unknown in the graph, so one trace serves a training run's per-epoch validation
    (batches at `val_image_size`) and its evaluation (single images at full size) alike. False
    runs it eagerly, for a few images of each of several models (the report's samples), where
    tracing a graph per model costs more than it saves and makes TensorFlow warn about frequent
    retracing.
    """
    import tensorflow as tf

    input_size = model_input_size(model)

    def predict(images, output_size):
        if input_size is not None:
            images = tf.image.resize(images, input_size, method="bilinear")
        logits = tf.cast(model(images, training=False), tf.float32)
        logits = tf.image.resize(logits, output_size, method="bilinear")
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    if compiled:
        any_images = tf.TensorSpec([None, None, None, 3], tf.float32)
        predict = tf.function(predict, input_signature=[any_images, tf.TensorSpec([2], tf.int32)])

    def predict_train_ids(images, output_size=None):
        images = tf.convert_to_tensor(images, tf.float32)
        size = tf.constant(output_size or tuple(images.shape[1:3]), tf.int32)
        return predict(images, size).numpy()

    predict_train_ids.graph_function = predict if compiled else None  # its tracing count, for tests
    return predict_train_ids


def confusion_matrix(model, dataset, predictor=None):
    """Stream `(images, labels)` batches through the model into a `segflow.metrics.ConfusionMatrix`
    at the labels' resolution."""
    from segflow.metrics import ConfusionMatrix

    predictor = predictor or make_predictor(model)
    matrix = ConfusionMatrix()
    for images, labels in dataset:
        matrix.update(labels.numpy(), predictor(images, tuple(labels.shape[1:3])))
    return matrix


_NO_GROUND_TRUTH = (
    "the {split} split in {where} has no evaluated ground truth: every label pixel is void (ignored), so"
    " there is nothing to score (Cityscapes withholds the test labels: score val, or submit test"
    " predictions to the benchmark server)"
)


def _check_ground_truth(records_dir: str | os.PathLike, split: str) -> None:
    """Before any work: the records match their manifest and `split` has labelled pixels."""
    from segflow.convert import read_manifest, verify_records

    if read_manifest(records_dir) is None:
        return  # records without a manifest: checked while reading
    manifest = verify_records(records_dir, (split,))
    pixels = manifest["splits"][split].get("class_pixels", {})
    if pixels and not any(count for name, count in pixels.items() if name != "ignore"):
        raise SegflowError(_NO_GROUND_TRUTH.format(split=split, where=records_dir))


def evaluate_model(
    model_path: str | os.PathLike,
    records_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "val",
    batch_size: int = 1,
    model=None,
    predictor=None,
    samples: int = 0,
) -> dict:
    """Score `model_path` on `split` of `records_dir`; write and return `out_dir/metrics.json`.
    With `samples` > 0, also write the report's tiles of the first `samples` val images
    (`segflow.report.samples.write_samples`: `out_dir/samples/`, replaced).

    `model`: the model of `model_path` already in memory (`segflow.train.TrainResult.model`), and
    `predictor` its `make_predictor` (`TrainResult.predictor`): used instead of loading the file
    and tracing a predictor again.

    Keys: those of `segflow.metrics.summarize` (`miou`, `class_iou`, `category_miou`,
    `category_iou`, `pixel_accuracy`), `confusion_matrix` (rows: ground-truth trainId, columns:
    predicted), `num_images`, and `speed`: `images_per_second` (model + resizes + argmax, data
    loading excluded), `end_to_end_images_per_second`, `latency_ms_p50`/`p95` (batch 1 at the
    evaluated resolution, LATENCY_RUNS repeats), `images_per_second_p25_p75` and
    `latency_ms_p25_p75` (the spread of the repeats: each batch, each batch-1 run), `input_size`,
    `evaluated_size`, `params`, `gflops` (per image at the model's input size; convolutions and
    dense layers, 2 FLOPs per multiply-add), `model_sha256` (of the `model_path` file; None if it
    is not a local file).
    """
    from segflow import input_pipeline
    from segflow.metrics import ConfusionMatrix, summarize, write_metrics
    from segflow.models.complexity import gflops

    if not Path(records_dir).is_dir():
        raise SegflowError(f"records folder {records_dir} does not exist")
    _check_ground_truth(records_dir, split)
    if model is None:
        model, predictor = load_model(model_path), None
    dataset = input_pipeline.make_dataset(records_dir, split=split, training=False, batch_size=batch_size)
    predictor = predictor or make_predictor(model)

    matrix, num_images, model_seconds, batch_rates = ConfusionMatrix(), 0, 0.0, []
    first_images = None
    started = time.perf_counter()
    for images, labels in dataset:
        size = tuple(labels.shape[1:3])
        if first_images is None:
            first_images = images[:1]
            predictor(first_images, size)  # trace outside the timing
        before = time.perf_counter()
        predictions = predictor(images, size)
        seconds = time.perf_counter() - before
        model_seconds += seconds
        batch_rates.append(int(images.shape[0]) / seconds)
        matrix.update(labels.numpy(), predictions)
        num_images += int(images.shape[0])
    total_seconds = time.perf_counter() - started
    if num_images == 0:
        raise SegflowError(f"{records_dir} has no {split} examples")
    if not matrix.counts.sum():
        raise SegflowError(_NO_GROUND_TRUTH.format(split=split, where=records_dir))

    latencies = _latencies_ms(predictor, first_images, tuple(first_images.shape[1:3]))
    metrics = {
        **summarize(matrix.counts),
        "confusion_matrix": matrix.counts.tolist(),
        "num_images": num_images,
        "split": split,
        "model": str(model_path),
        "speed": {
            "images_per_second": num_images / model_seconds,
            "end_to_end_images_per_second": num_images / total_seconds,
            "latency_ms_p50": float(np.percentile(latencies, 50)),
            "latency_ms_p95": float(np.percentile(latencies, 95)),
            # Spreads of the repeats (each batch; each batch-1 run): speeds move with machine load.
            "images_per_second_p25_p75": [float(value) for value in np.percentile(batch_rates, [25, 75])],
            "latency_ms_p25_p75": [float(value) for value in np.percentile(latencies, [25, 75])],
            "batch_size": batch_size,
            "input_size": list(model_input_size(model) or first_images.shape[1:3]),
            "evaluated_size": list(first_images.shape[1:3]),
        },
        "params": int(model.count_params()),
        "gflops": gflops(model),
        # Ties metrics.json and the sample tiles to the model file they came from.
        "model_sha256": file_sha256(model_path) if Path(model_path).is_file() else None,
    }
    write_metrics(metrics, Path(out_dir) / METRICS_FILE)
    if samples:  # the report's tiles, with the predictor already traced
        from segflow.report.samples import write_samples

        write_samples(out_dir, records_dir, predictor, samples, model_sha256=metrics["model_sha256"])
    return metrics


def _latencies_ms(predictor, image, output_size, runs: int = LATENCY_RUNS) -> np.ndarray:
    predictor(image, output_size)
    latencies = []
    for _ in range(runs):
        before = time.perf_counter()
        predictor(image, output_size)
        latencies.append((time.perf_counter() - before) * 1000)
    return np.asarray(latencies)

