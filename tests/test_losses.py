"""The segmentation loss against a numpy reference, and the learning-rate schedule."""

import numpy as np
import pytest

from segflow.losses import SegmentationCrossEntropy, class_weights_from_pixel_counts
from segflow.schedules import PolyWarmup

NUM_CLASSES = 3


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 4, 6, NUM_CLASSES)).astype("float32") * 2
    labels = rng.integers(0, NUM_CLASSES, size=(2, 4, 6)).astype("int32")
    labels[0, :2] = 255
    return labels, logits


def _pixel_cross_entropy(labels, logits):
    """-log softmax(logits)[label] per pixel, in float64; 0 where the label is 255."""
    logits = logits.astype(np.float64)
    log_norm = np.log(np.exp(logits).sum(-1))
    safe = np.where(labels == 255, 0, labels)
    return log_norm - np.take_along_axis(logits, safe[..., None], -1)[..., 0]


def test_cross_entropy_is_the_mean_over_pixels_not_ignored():
    labels, logits = _batch()
    expected = _pixel_cross_entropy(labels, logits)[labels != 255].mean()
    loss = SegmentationCrossEntropy(num_classes=NUM_CLASSES)(labels, logits)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_ignored_pixels_do_not_change_the_loss_whatever_their_logits():
    labels, logits = _batch()
    changed = logits.copy()
    changed[labels == 255] = 100.0
    loss = SegmentationCrossEntropy(num_classes=NUM_CLASSES)
    assert float(loss(labels, changed)) == pytest.approx(float(loss(labels, logits)), rel=1e-6)


def test_a_batch_with_every_pixel_ignored_has_zero_loss_not_nan():
    _, logits = _batch()
    labels = np.full(logits.shape[:3], 255, "int32")
    assert float(SegmentationCrossEntropy(num_classes=NUM_CLASSES)(labels, logits)) == 0.0


def test_class_weights_give_the_weighted_mean():
    labels, logits = _batch()
    weights = np.array([1.0, 5.0, 0.5])
    valid = labels != 255
    pixel_weights = weights[np.where(valid, labels, 0)] * valid
    expected = (_pixel_cross_entropy(labels, logits) * pixel_weights).sum() / pixel_weights.sum()
    loss = SegmentationCrossEntropy(num_classes=NUM_CLASSES, class_weights=weights)(labels, logits)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_class_weights_of_the_wrong_length_are_refused_with_both_counts():
    with pytest.raises(ValueError, match="^class_weights needs 3 values; got 2$"):
        SegmentationCrossEntropy(num_classes=NUM_CLASSES, class_weights=[1.0, 2.0])

def test_ohem_keeps_pixels_below_the_threshold_or_the_min_kept_hardest():
    labels, logits = _batch()
    valid = labels != 255
    pixel_losses = _pixel_cross_entropy(labels, logits)[valid]
    true_probability = np.exp(-pixel_losses)
    for threshold, min_kept in [(0.3, 4), (0.3, 30), (0.9, 4), (0.0, 1)]:  # the last keeps the hardest pixel only
        kth = np.sort(true_probability)[min(min_kept, valid.sum()) - 1]
        kept = true_probability <= max(threshold, kth)
        loss = SegmentationCrossEntropy(num_classes=NUM_CLASSES, ohem_threshold=threshold, ohem_min_kept=min_kept)
        assert float(loss(labels, logits)) == pytest.approx(pixel_losses[kept].mean(), rel=1e-5)
        assert kept.sum() >= min(min_kept, valid.sum())
    # A low threshold with a small min_kept really drops the easy pixels: the loss goes up.
    plain = float(SegmentationCrossEntropy(num_classes=NUM_CLASSES)(labels, logits))
    hard = float(SegmentationCrossEntropy(num_classes=NUM_CLASSES, ohem_threshold=0.3, ohem_min_kept=4)(labels, logits))
    assert hard > plain


def test_enet_class_weights_favour_rare_classes_and_are_bounded():
    weights = class_weights_from_pixel_counts([900_000, 90_000, 10_000, 0])
    np.testing.assert_allclose(weights, 1 / np.log(1.02 + np.array([0.9, 0.09, 0.01, 0.0])), rtol=1e-6)
    assert weights[0] < weights[1] < weights[2] < weights[3] == pytest.approx(1 / np.log(1.02))
    # One labelled pixel is a positive sum too.
    np.testing.assert_allclose(class_weights_from_pixel_counts([1, 0]), 1 / np.log(1.02 + np.array([1.0, 0.0])))
    assert weights.dtype == np.float32
    for bad in ([0, 0], [5, -1], [[1, 2]]):  # no labelled pixel, a negative count, not one count per class
        with pytest.raises(ValueError, match="positive sum"):
            class_weights_from_pixel_counts(bad)


def test_loss_config_round_trip():
    loss = SegmentationCrossEntropy(num_classes=NUM_CLASSES, class_weights=[1, 2, 3], ohem_threshold=0.5, ohem_min_kept=7)
    copy = SegmentationCrossEntropy.from_config(loss.get_config())
    labels, logits = _batch()
    assert float(copy(labels, logits)) == pytest.approx(float(loss(labels, logits)))


def test_poly_schedule_warms_up_linearly_then_decays_to_the_end_rate():
    schedule = PolyWarmup(0.1, total_steps=110, warmup_steps=10, power=0.9, end_learning_rate=0.001)
    rates = {step: float(schedule(step)) for step in (0, 5, 10, 60, 110, 500)}
    assert rates[0] == pytest.approx(0.01)  # 10 % of the peak
    assert rates[5] == pytest.approx(0.01 + 0.09 * 0.5)
    assert rates[10] == pytest.approx(0.1)
    assert rates[60] == pytest.approx(0.099 * 0.5**0.9 + 0.001, rel=1e-5)
    assert rates[110] == pytest.approx(0.001) and rates[500] == pytest.approx(0.001)
    assert PolyWarmup.from_config(schedule.get_config()).get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="warmup_steps"):
        PolyWarmup(0.1, total_steps=10, warmup_steps=11)


def test_poly_schedule_defaults_are_deeplabs_and_a_warmup_may_span_every_step():
    # Defaults: no warmup, power 0.9, decay to 0 (DeepLab's poly schedule, Chen et al. 2017, 4.1).
    schedule = PolyWarmup(0.01, total_steps=100)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(50)) == pytest.approx(0.01 * 0.5**0.9, rel=1e-5)
    assert float(schedule(100)) == 0.0
    assert float(PolyWarmup(0.01, total_steps=1)(1)) == 0.0  # a one-step decay still ends at the end rate
    assert float(PolyWarmup(0.01, total_steps=10, warmup_steps=10)(10)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="warmup_steps"):
        PolyWarmup(0.01, total_steps=10, warmup_steps=-1)
