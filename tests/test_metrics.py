import json

import numpy as np
import pytest

from segflow.cityscapes import CATEGORY_NAMES, CLASS_NAMES, IGNORE_LABEL, TRAIN_LABELS
from segflow.metrics import ConfusionMatrix, summarize, write_metrics


def random_batches(seed, num_batches=3, shape=(2, 12, 16)):
    """trainId ground truth (with ignored pixels) and predictions, small enough for pixel loops."""
    rng = np.random.default_rng(seed)
    for _ in range(num_batches):
        ground_truth = rng.integers(0, 19, shape).astype(np.uint8)
        ground_truth[rng.random(shape) < 0.2] = IGNORE_LABEL
        prediction = np.where(rng.random(shape) < 0.6, ground_truth, rng.integers(0, 19, shape)) % 255
        yield ground_truth, prediction.astype(np.int64)


def reference_iou(pairs, classes_of):
    """IoU per group from explicit TP / FP / FN counts, pixel by pixel; None where the group is absent."""
    num_groups = max(classes_of) + 1
    true_pos, false_pos, false_neg = [0] * num_groups, [0] * num_groups, [0] * num_groups
    for ground_truth, prediction in pairs:
        for gt, pred in zip(ground_truth.ravel().tolist(), prediction.ravel().tolist()):
            if gt == IGNORE_LABEL:
                continue
            gt_group, pred_group = classes_of[gt], classes_of[pred]
            if gt_group == pred_group:
                true_pos[gt_group] += 1
            else:
                false_neg[gt_group] += 1
                false_pos[pred_group] += 1
    return [
        tp / (tp + fp + fn) if tp + fp + fn else None for tp, fp, fn in zip(true_pos, false_pos, false_neg)
    ]


def accumulate(pairs):
    matrix = ConfusionMatrix()
    for ground_truth, prediction in pairs:
        matrix.update(ground_truth, prediction)
    return matrix


def test_confusion_counts_match_pixel_loop():
    pairs = list(random_batches(seed=0))
    expected = np.zeros((19, 19), dtype=np.int64)
    for ground_truth, prediction in pairs:
        for gt, pred in zip(ground_truth.ravel(), prediction.ravel()):
            if gt != IGNORE_LABEL:
                expected[gt, pred] += 1
    np.testing.assert_array_equal(accumulate(pairs).counts, expected)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_class_and_category_iou_match_reference(seed):
    pairs = list(random_batches(seed))
    metrics = summarize(accumulate(pairs).counts)

    class_iou = reference_iou(pairs, list(range(19)))
    assert list(metrics["class_iou"]) == list(CLASS_NAMES)
    np.testing.assert_allclose(list(metrics["class_iou"].values()), class_iou, rtol=1e-12)
    assert metrics["miou"] == pytest.approx(np.mean(class_iou), rel=1e-12)

    category_of = [CATEGORY_NAMES.index(label.category) for label in TRAIN_LABELS]
    category_iou = reference_iou(pairs, category_of)
    assert list(metrics["category_iou"]) == list(CATEGORY_NAMES)
    np.testing.assert_allclose(list(metrics["category_iou"].values()), category_iou, rtol=1e-12)
    assert metrics["category_miou"] == pytest.approx(np.mean(category_iou), rel=1e-12)

    evaluated = sum(int((gt != IGNORE_LABEL).sum()) for gt, _ in pairs)
    correct = sum(int(((gt == pred) & (gt != IGNORE_LABEL)).sum()) for gt, pred in pairs)
    assert metrics["pixel_accuracy"] == pytest.approx(correct / evaluated, rel=1e-12)


def test_absent_class_is_none_and_left_out_of_the_mean():
    ground_truth = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = np.array([[0, 1, 1, 1], [2, 2, 5, 5]])  # 5 only where ground truth is ignored
    metrics = summarize(accumulate([(ground_truth, prediction)]).counts)
    assert metrics["class_iou"]["road"] == pytest.approx(1 / 2)
    assert metrics["class_iou"]["sidewalk"] == pytest.approx(2 / 3)
    assert metrics["class_iou"]["building"] == 1.0
    assert metrics["class_iou"]["pole"] is None
    assert sum(value is None for value in metrics["class_iou"].values()) == 16
    assert metrics["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["category_iou"] == {
        "flat": 1.0, "construction": 1.0, "object": None, "nature": None, "sky": None, "human": None, "vehicle": None
    }  # fmt: skip
    assert metrics["category_miou"] == 1.0
    assert metrics["pixel_accuracy"] == pytest.approx(5 / 6)


def test_class_only_predicted_scores_zero_and_counts_in_the_mean():
    metrics = summarize(accumulate([(np.array([0, 0]), np.array([0, 18]))]).counts)
    assert metrics["class_iou"]["bicycle"] == 0.0
    assert metrics["miou"] == pytest.approx((1 / 2 + 0) / 2)


def test_extra_columns_are_false_negatives_only():
    counts = np.zeros((19, 20), dtype=np.int64)
    counts[0, 0] = 6  # road correct
    counts[0, 19] = 2  # road predicted as a label that is not evaluated (say parking)
    counts[1, 1] = 4
    metrics = summarize(counts)
    assert metrics["class_iou"]["road"] == pytest.approx(6 / 8)
    assert metrics["class_iou"]["sidewalk"] == 1.0
    assert metrics["category_iou"]["flat"] == pytest.approx(10 / 12)
    assert metrics["pixel_accuracy"] == pytest.approx(10 / 12)


def test_streaming_equals_one_batch():
    pairs = list(random_batches(seed=4))
    together = (np.concatenate([gt for gt, _ in pairs]), np.concatenate([pred for _, pred in pairs]))
    np.testing.assert_array_equal(accumulate(pairs).counts, accumulate([together]).counts)


def test_update_rejects_bad_predictions_and_shapes():
    matrix = ConfusionMatrix()
    for bad in (255, 19, -1):  # 19 and -1: just outside 0..18
        with pytest.raises(ValueError, match="trainIds 0..18"):
            matrix.update(np.zeros((2, 2), np.uint8), np.full((2, 2), bad, np.int16))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    assert matrix.counts.sum() == 0


def test_ground_truth_outside_the_19_classes_is_not_counted_whatever_its_value():
    # 255 is the ignore label; 19, 34 and -1 are not evaluated either (the docstring's "outside 0..18").
    ground_truth = np.array([-1, 19, 34, 254, 255, 7], np.int16)
    matrix = ConfusionMatrix()
    matrix.update(ground_truth, np.array([0, 1, 2, 3, 4, 5]))
    expected = np.zeros((19, 19), np.int64)
    expected[7, 5] = 1
    np.testing.assert_array_equal(matrix.counts, expected)


def test_empty_and_one_pixel_batches_add_exactly_their_pixels_as_integers():
    matrix = ConfusionMatrix()
    matrix.update(np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8))
    matrix.update(np.array([[3]], np.uint8), np.array([[18]], np.uint8))
    expected = np.zeros((19, 19), np.int64)
    expected[3, 18] = 1
    np.testing.assert_array_equal(matrix.counts, expected)
    assert matrix.counts.dtype == np.int64  # exact counts: a float matrix rounds past 2**53 pixels


def test_a_matrix_without_evaluated_pixels_scores_none_rather_than_dividing_by_zero():
    metrics = summarize(np.zeros((19, 19), np.int64))
    assert metrics["miou"] is None and metrics["category_miou"] is None and metrics["pixel_accuracy"] is None
    assert set(metrics["class_iou"].values()) == {None} and set(metrics["category_iou"].values()) == {None}


def test_summarize_rejects_a_wrong_matrix():
    with pytest.raises(ValueError, match="19x19"):
        summarize(np.zeros((34, 34)))


def test_write_metrics_is_atomic(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics({"miou": 0.5, "class_iou": {"road": None}}, path)
    assert json.loads(path.read_text()) == {"miou": 0.5, "class_iou": {"road": None}}
    with pytest.raises(TypeError):
        write_metrics({"miou": object()}, path)
    assert json.loads(path.read_text())["miou"] == 0.5  # the earlier file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind
