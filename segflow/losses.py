"""Pixel-wise cross-entropy on logits that skips ignored pixels, with optional class weights and
online hard example mining (OHEM), written in `keras.ops` so it runs on any Keras backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from segflow.cityscapes import IGNORE_LABEL, NUM_CLASSES


def class_weights_from_pixel_counts(pixel_counts: Sequence[int], smoothing: float = 1.02) -> np.ndarray:
    """ENet's class weights, `1 / ln(smoothing + frequency)`: rare classes (poles, riders) weigh up
    to ~50× more than road, but a class never weighs more than `1 / ln(smoothing)`.

    Paszke et al., "ENet", https://arxiv.org/abs/1606.02147, section 5.2.
    """
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"pixel counts must be non-negative with a positive sum; got {list(counts)}")
    frequencies = counts / counts.sum()
    return (1.0 / np.log(smoothing + frequencies)).astype(np.float32)


@keras.saving.register_keras_serializable(package="segflow")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Mean cross-entropy over the pixels whose label is not `ignore_label`.

    With class weights the mean is weighted (sum of w·ce over sum of w). With OHEM only pixels whose
    predicted probability for their true class is below `ohem_threshold` count, but never fewer than
    the `ohem_min_kept` hardest ones (Shrivastava et al., https://arxiv.org/abs/1604.03540; the
    threshold/min-kept form of PSPNet and ICNet training code).

    Args:
        num_classes: int, the number of logits channels.
        ignore_label: int, label value that contributes nothing.
        class_weights: optional sequence of `num_classes` floats.
        ohem_threshold: optional float in (0, 1]; None disables OHEM.
        ohem_min_kept: int, the least number of pixels OHEM keeps in a batch.

    Example:
    >>> loss = SegmentationCrossEntropy(num_classes=19)
    >>> loss(labels, logits)  # labels [B, H, W] ints, logits [B, H, W, 19]
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_label: int = IGNORE_LABEL,
        class_weights: Sequence[float] | None = None,
        ohem_threshold: float | None = None,
        ohem_min_kept: int = 100_000,
        name: str = "segmentation_cross_entropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights needs {num_classes} values; got {len(class_weights)}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ohem_threshold = ohem_threshold
        self.ohem_min_kept = ohem_min_kept

    def call(self, y_true, y_pred):
        logits = ops.reshape(ops.cast(y_pred, "float32"), (-1, self.num_classes))
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = ops.logical_and(ops.not_equal(labels, self.ignore_label), ops.less(labels, self.num_classes))
        safe_labels = ops.where(valid, labels, 0)
        pixel_losses = ops.sparse_categorical_crossentropy(safe_labels, logits, from_logits=True)
        weights = ops.cast(valid, "float32")
        if self.class_weights is not None:
            weights = weights * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe_labels)
        if self.ohem_threshold is not None:
            weights = weights * ops.cast(self._hard_pixels(pixel_losses, valid), "float32")
        # Per-pixel values whose plain mean (Keras' reduction, which also divides by the number
        # of replicas under tf.distribute) is the weighted mean over the counted pixels.
        return pixel_losses * weights / ops.maximum(ops.mean(weights), 1e-12)

    def _hard_pixels(self, pixel_losses, valid):
        """Pixels with true-class probability below the threshold, raised so at least min_kept stay."""
        true_probabilities = ops.where(valid, ops.exp(-pixel_losses), 2.0)  # ignored pixels sort last
        num_valid = ops.sum(ops.cast(valid, "int32"))
        kth = ops.maximum(ops.minimum(num_valid, self.ohem_min_kept) - 1, 0)
        kth_smallest = ops.take(ops.sort(true_probabilities), kth)
        threshold = ops.maximum(kth_smallest, self.ohem_threshold)
        return ops.logical_and(valid, ops.less_equal(true_probabilities, threshold))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "class_weights": self.class_weights,
            "ohem_threshold": self.ohem_threshold,
            "ohem_min_kept": self.ohem_min_kept,
        }
