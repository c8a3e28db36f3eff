"""Cityscapes segmentation metrics from a confusion matrix: IoU per class and per category, pixel accuracy.

A confusion matrix holds every count these metrics need, so evaluation streams: each batch adds its
counts with one `np.bincount`, and `summarize` turns the total into metrics once. The formulas are
those of cityscapesScripts' `evalPixelLevelSemanticLabeling.py`: pixels whose ground truth is not
one of the 19 evaluated classes are left out, and a class (or category) absent from both ground
truth and prediction has no score (None) and is left out of the mean.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segflow.cityscapes import CATEGORY_NAMES, CLASS_NAMES, NUM_CLASSES, TRAIN_LABELS

# CLASS_CATEGORY[train_id] = index into CATEGORY_NAMES.
CLASS_CATEGORY = np.array([CATEGORY_NAMES.index(label.category) for label in TRAIN_LABELS])


class ConfusionMatrix:
    """Pixel counts over the 19 evaluated classes: `counts[ground-truth trainId, predicted trainId]`.

    Ground-truth pixels outside 0..18 (trainId 255) are not counted. Predictions must be trainIds
    0..18, as an argmax over the 19 logits gives.

    Example:
        matrix = ConfusionMatrix()
        for labels, predictions in batches:
            matrix.update(labels, predictions)
        metrics = summarize(matrix.counts)
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, ground_truth: np.ndarray, prediction: np.ndarray) -> None:
        """Add one batch (any shape, the same for both) of trainId arrays."""
        ground_truth = np.asarray(ground_truth)
        prediction = np.asarray(prediction)
        if ground_truth.shape != prediction.shape:
            raise ValueError(f"ground truth shape {ground_truth.shape} != prediction shape {prediction.shape}")
        if prediction.size == 0:
            return
        num_classes = self.num_classes
        if prediction.min() < 0 or prediction.max() >= num_classes:
            raise ValueError(
                f"predictions must be trainIds 0..{num_classes - 1}, got values "
                f"{prediction.min()}..{prediction.max()}"
            )
        ground_truth = ground_truth.astype(np.intp, copy=False)
        evaluated = (ground_truth >= 0) & (ground_truth < num_classes)
        # Ignored pixels go to one extra bin past the matrix, which is then dropped.
        cell = np.where(evaluated, ground_truth * num_classes + prediction, num_classes * num_classes)
        counts = np.bincount(cell.ravel(), minlength=num_classes * num_classes + 1)
        self.counts += counts[: num_classes * num_classes].reshape(num_classes, num_classes)


def summarize(counts: np.ndarray) -> dict:
    """The official metrics from confusion counts (rows: ground-truth trainId, columns: predicted trainId).

    `counts` is 19×19, or 19×(19+k) where the k extra columns count predictions of labels that are
    not evaluated (say, `parking`): the official script counts those as false negatives of the
    ground-truth class and as nobody's false positive.

    Returns `class_iou` {class name: IoU or None}, `miou`, `category_iou` {category: IoU or None},
    `category_miou` and `pixel_accuracy` (correct pixels / evaluated pixels).
    """
    counts = np.asarray(counts, dtype=np.int64)
    num_classes = len(CLASS_NAMES)
    if counts.ndim != 2 or counts.shape[0] != num_classes or counts.shape[1] < num_classes:
        raise ValueError(f"expected a {num_classes}x{num_classes} (or wider) confusion matrix, got {counts.shape}")
    class_counts = counts[:, :num_classes]
    row_totals = counts.sum(axis=1)

    class_iou = _iou(np.diag(class_counts), row_totals, class_counts.sum(axis=0))

    # Merge classes into categories: sum the class rows and columns of each category.
    membership = np.eye(len(CATEGORY_NAMES), dtype=np.int64)[CLASS_CATEGORY]  # class × category
    category_counts = membership.T @ class_counts @ membership
    category_iou = _iou(np.diag(category_counts), membership.T @ row_totals, category_counts.sum(axis=0))

    total = int(row_totals.sum())
    return {
        "miou": mean_of_scores(class_iou),
        "class_iou": dict(zip(CLASS_NAMES, class_iou)),
        "category_miou": mean_of_scores(category_iou),
        "category_iou": dict(zip(CATEGORY_NAMES, category_iou)),
        "pixel_accuracy": int(np.trace(class_counts)) / total if total else None,
    }


def _iou(true_positives, ground_truth_totals, prediction_totals) -> list[float | None]:
    """tp / (tp + fp + fn) per class, None where the class is in neither ground truth nor prediction."""
    union = np.asarray(ground_truth_totals) + np.asarray(prediction_totals) - np.asarray(true_positives)
    return [int(tp) / int(u) if u else None for tp, u in zip(true_positives, union)]


def iou_score(true_positives: float, false_positives: float, false_negatives: float) -> float | None:
    """tp / (tp + fp + fn), None when all three are zero (the official script's NaN)."""
    denominator = true_positives + false_positives + false_negatives
    return float(true_positives) / float(denominator) if denominator else None


def mean_of_scores(scores) -> float | None:
    """The mean over the scores that exist (not None), as the official script averages; None if none do."""
    present = [score for score in scores if score is not None]
    return sum(present) / len(present) if present else None


def write_metrics(metrics: dict, path: str | os.PathLike) -> Path:
    """Write `metrics` as JSON atomically (`segflow.atomic`), with the normal file mode."""
    from segflow import atomic

    return atomic.write_json(path, metrics)
