"""Score a folder of predictions in the Cityscapes submission format against gtFine.

Computes what cityscapesScripts' `evalPixelLevelSemanticLabeling.py` computes — class IoU and
iIoU, category IoU and iIoU, their means — to 1e-6 of it on the same files, with a few
`np.bincount` calls per image where the official script loops over instances in Python.

Predictions are single-channel labelIds PNGs; the one for ground truth `{city}_{seq}_{frame}` is
the one PNG under the folder (searched recursively) whose name starts with that key, as the
official script matches them. iIoU weights each instance's pixels by the official average
instance size of its class divided by the instance's size, so large and small objects count alike.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from segflow.cityscapes import (
    INSTANCE_IDS_SUFFIX,
    LABEL_DIR,
    LABEL_IDS_SUFFIX,
    LABELS,
    SPLITS,
    TRAIN_LABELS,
)
from segflow.errors import SegflowError
from segflow.metrics import iou_score, mean_of_scores, summarize

# Average instance size per class over the Cityscapes training set: the fixed table
# `args.avgClassSize` of the official evaluation, which iIoU weights are computed from.
AVERAGE_INSTANCE_SIZE = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}
NUM_LABEL_IDS = 34  # labelIds 0..33 appear in `*_labelIds.png`
# In instanceIds images a pixel of instance k of a class holds labelId * 1000 + k; others hold the labelId.
INSTANCE_ID_OFFSET = 1000

EVALUATED_LABEL_IDS = np.array([label.id for label in TRAIN_LABELS])  # in trainId order
# Classes scored by iIoU: evaluated classes with instances (person, rider, car, ..., bicycle).
INSTANCE_CLASSES = tuple(label for label in TRAIN_LABELS if label.has_instances)
# Categories scored by iIoU: those whose labels all have instances (human, vehicle). Their label
# ids include ignored classes (caravan, trailer): predicting those counts as the category.
INSTANCE_CATEGORIES: dict[str, tuple[int, ...]] = {
    category: tuple(label.id for label in LABELS if label.category == category and label.id >= 0)
    for category in dict.fromkeys(label.category for label in LABELS)
    if all(label.has_instances for label in LABELS if label.category == category and label.id >= 0)
}


def _label_id_table(values: dict[int, object], default, dtype) -> np.ndarray:
    """A 256-entry lookup table indexed by labelId (instanceId // 1000 of a 16-bit image is < 256)."""
    table = np.full(256, default, dtype=dtype)
    for label_id, value in values.items():
        table[label_id] = value
    return table


AVERAGE_SIZE_BY_LABEL_ID = _label_id_table(
    {label.id: AVERAGE_INSTANCE_SIZE[label.name] for label in INSTANCE_CLASSES}, 0.0, np.float64
)
HAS_SCORED_INSTANCES = _label_id_table({label.id: True for label in INSTANCE_CLASSES}, False, bool)
INSTANCE_CATEGORY_OF_LABEL_ID = _label_id_table(
    {label_id: index for index, ids in enumerate(INSTANCE_CATEGORIES.values()) for label_id in ids}, -1, np.int64
)
_KEY = re.compile(r"^(.+?_\d{6}_\d{6})")


class ImageCounts(NamedTuple):
    """What one image adds to the scores; counts of several images add up element-wise."""

    label_id_matrix: np.ndarray  # 34×34 pixel counts [ground-truth labelId, predicted labelId]
    instance_true_positives: np.ndarray  # per labelId, size-weighted
    instance_false_negatives: np.ndarray  # per labelId, size-weighted
    category_true_positives: np.ndarray  # per INSTANCE_CATEGORIES entry, size-weighted
    category_false_negatives: np.ndarray

    def __add__(self, other: ImageCounts) -> ImageCounts:
        return ImageCounts(*(mine + theirs for mine, theirs in zip(self, other)))


def score_folder(
    predictions_dir: str | os.PathLike,
    ground_truth_root: str | os.PathLike,
    split: str = "val",
    workers: int = 1,
    force: bool = False,
) -> dict:
    """Score every ground-truth image of `split` under `ground_truth_root`/gtFine against its prediction.

    Returns the metrics dict written as metrics.json: `miou`, `class_iou`, `mean_iiou`,
    `class_iiou`, `category_miou`, `category_iou`, `mean_category_iiou`, `category_iiou`,
    `pixel_accuracy`, `num_images` and `label_id_confusion_matrix`. Scores are None for a class
    that neither ground truth nor prediction contains. `workers` threads read and count images.

    Raises SegflowError, unless `force`, when the predictions look like trainIds (files named
    `*_trainIds.png` by `segflow predict`, or values that are trainIds: see `_looks_like_train_ids`),
    which scored as labelIds give a meaningless mIoU near 0; and always when the split has no
    evaluated ground truth (every pixel void, as in Cityscapes' test split), where there is
    nothing to score.
    """
    ground_truth_files = find_ground_truth(ground_truth_root, split)
    prediction_files = match_predictions(ground_truth_files, predictions_dir)
    named = [path for path in prediction_files if path.name.endswith(TRAIN_IDS_SUFFIX)]
    if named and not force:
        raise SegflowError(
            f"{len(named)} of {len(prediction_files)} predictions are trainIds files ({named[0].name}, written by"
            f" `segflow predict --format trainIds`); scoring needs labelIds: predict with --format labelIds"
            " (or pass --force to score them as labelIds anyway)"
        )
    # Threads suffice: PNG decoding and numpy release the GIL, and nothing is pickled or spawned.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        total = sum(pool.map(count_image, prediction_files, ground_truth_files), start=empty_counts())
    if not total.label_id_matrix[EVALUATED_LABEL_IDS].sum():
        raise SegflowError(
            f"the {split} split under {ground_truth_root} has no evaluated ground truth: every pixel of its"
            f" {len(ground_truth_files)} labelIds images is void (ignored), so there is nothing to score"
            " (Cityscapes withholds the test labels: score val, or submit test predictions to the benchmark server)"
        )
    if not force and _looks_like_train_ids(total.label_id_matrix.sum(axis=0)):
        raise SegflowError(
            f"the predictions in {predictions_dir} look like trainIds, not labelIds: they use only values 0..18,"
            " mostly the void labelIds 0..6, and never person (24) or car (26); scored as labelIds they would"
            " give a meaningless mIoU. Write labelIds (segflow.cityscapes.to_label_ids, or `segflow predict"
            " --format labelIds`), or pass --force to score them as they are"
        )
    return score_counts(total) | {"num_images": len(ground_truth_files)}


TRAIN_IDS_SUFFIX = "_trainIds.png"
VOID_LABEL_IDS = np.arange(7)  # unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground


def _looks_like_train_ids(predicted_pixels: np.ndarray) -> bool:
    """Whether predicted-labelId pixel counts are those of trainIds maps: no value above 18 (the
    last trainId), at least a quarter of the pixels on void labelIds 0..6 (which a model writing
    labelIds never predicts; as trainIds they are road..pole), and none on person or car."""
    total = predicted_pixels.sum()
    return bool(
        total
        and not predicted_pixels[19:].any()
        and predicted_pixels[VOID_LABEL_IDS].sum() >= total / 4
    )


def find_ground_truth(ground_truth_root: str | os.PathLike, split: str) -> list[Path]:
    """The `*_gtFine_labelIds.png` files of one split, sorted."""
    if split not in SPLITS:
        raise SegflowError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    split_dir = Path(ground_truth_root) / LABEL_DIR / split
    files = sorted(split_dir.glob(f"*/*{LABEL_IDS_SUFFIX}"))
    if not files:
        raise SegflowError(f"no ground truth found: {split_dir}/*/*{LABEL_IDS_SUFFIX} matches no file")
    return files


def match_predictions(ground_truth_files: list[Path], predictions_dir: str | os.PathLike) -> list[Path]:
    """The prediction for each ground-truth file: the one PNG whose name starts with its `{city}_{seq}_{frame}`."""
    predictions_dir = Path(predictions_dir)
    if not predictions_dir.is_dir():
        raise SegflowError(f"predictions folder {predictions_dir} does not exist")
    by_key: dict[str, Path] = {}
    for path in sorted(predictions_dir.rglob("*.png")):
        match = _KEY.match(path.name)
        if not match:
            continue
        key = match.group(1)
        if key in by_key:
            raise SegflowError(f"two predictions for {key}: {by_key[key]} and {path}")
        by_key[key] = path
    missing = [path for path in ground_truth_files if _ground_truth_key(path) not in by_key]
    if missing:
        key = _ground_truth_key(missing[0])
        raise SegflowError(
            f"no prediction for {len(missing)} of {len(ground_truth_files)} ground-truth images, "
            f"first {missing[0]}: expected a file {key}*.png under {predictions_dir}"
        )
    return [by_key[_ground_truth_key(path)] for path in ground_truth_files]


def _ground_truth_key(path: Path) -> str:
    return path.name[: -len(LABEL_IDS_SUFFIX)]


def empty_counts() -> ImageCounts:
    return ImageCounts(
        np.zeros((NUM_LABEL_IDS, NUM_LABEL_IDS), dtype=np.int64),
        np.zeros(NUM_LABEL_IDS),
        np.zeros(NUM_LABEL_IDS),
        np.zeros(len(INSTANCE_CATEGORIES)),
        np.zeros(len(INSTANCE_CATEGORIES)),
    )


def count_image(prediction_path: Path, ground_truth_path: Path) -> ImageCounts:
    """Confusion counts and size-weighted instance hits of one prediction against its ground truth."""
    label_ids = _read_label_ids(ground_truth_path)
    instance_path = ground_truth_path.with_name(_ground_truth_key(ground_truth_path) + INSTANCE_IDS_SUFFIX)
    instance_ids = _read_image(instance_path)
    if instance_ids.shape != label_ids.shape:
        raise SegflowError(f"{instance_path} is {_size(instance_ids)}, but {ground_truth_path} is {_size(label_ids)}")
    prediction = _read_prediction(prediction_path, ground_truth_path, label_ids.shape)
    return _instance_counts(_confusion_counts(label_ids, prediction), instance_ids, prediction)


def _confusion_counts(label_ids: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """34×34 pixel counts [ground-truth labelId, predicted labelId] of one image.

    bincount runs over chunks that fit in cache: twice as fast as over a full image at once.
    """
    cells = (label_ids.astype(np.uint16) * NUM_LABEL_IDS + prediction).ravel()
    chunk = 1 << 18
    counts = np.zeros(NUM_LABEL_IDS * NUM_LABEL_IDS, dtype=np.int64)
    for start in range(0, cells.size, chunk):
        counts += np.bincount(cells[start : start + chunk], minlength=counts.size)
    return counts.reshape(NUM_LABEL_IDS, NUM_LABEL_IDS)


def _instance_counts(label_id_matrix: np.ndarray, instance_ids: np.ndarray, prediction: np.ndarray) -> ImageCounts:
    """Add the size-weighted hits of each instance, from a histogram of the labelIds predicted on it."""
    on_instance = instance_ids > INSTANCE_ID_OFFSET
    pixel_instance = instance_ids[on_instance]
    instances = np.flatnonzero(np.bincount(pixel_instance, minlength=1))
    row_of_instance = np.zeros(instances[-1] + 1 if instances.size else 1, dtype=np.intp)
    row_of_instance[instances] = np.arange(instances.size)
    cells = row_of_instance[pixel_instance] * NUM_LABEL_IDS + prediction[on_instance]
    predicted = np.bincount(cells, minlength=instances.size * NUM_LABEL_IDS).reshape(-1, NUM_LABEL_IDS)

    labels = instances // INSTANCE_ID_OFFSET
    scored = HAS_SCORED_INSTANCES[labels]  # instances of ignored classes (caravan, trailer) count for nothing
    labels, predicted = labels[scored], predicted[scored]
    sizes = predicted.sum(axis=1)
    weights = AVERAGE_SIZE_BY_LABEL_ID[labels] / sizes
    hits = predicted[np.arange(labels.size), labels]
    categories = INSTANCE_CATEGORY_OF_LABEL_ID[labels]
    same_category = INSTANCE_CATEGORY_OF_LABEL_ID[:NUM_LABEL_IDS] == categories[:, np.newaxis]
    category_hits = (predicted * same_category).sum(axis=1)

    def add_up(groups, values, length):
        return np.bincount(groups, weights=values, minlength=length)

    num_categories = len(INSTANCE_CATEGORIES)
    return ImageCounts(
        label_id_matrix,
        add_up(labels, hits * weights, NUM_LABEL_IDS),
        add_up(labels, (sizes - hits) * weights, NUM_LABEL_IDS),
        add_up(categories, category_hits * weights, num_categories),
        add_up(categories, (sizes - category_hits) * weights, num_categories),
    )


def score_counts(counts: ImageCounts) -> dict:
    """The official metrics from summed image counts (see `score_folder`)."""
    matrix = counts.label_id_matrix
    # Rows and columns of the 19 evaluated classes, plus one column for predictions of other labels.
    rows = matrix[EVALUATED_LABEL_IDS]
    evaluated_columns = rows[:, EVALUATED_LABEL_IDS]
    other_column = rows.sum(axis=1, keepdims=True) - evaluated_columns.sum(axis=1, keepdims=True)
    pixel_scores = summarize(np.hstack([evaluated_columns, other_column]))
    false_positives = evaluated_columns.sum(axis=0) - np.diag(evaluated_columns)

    class_iiou = {
        label.name: iou_score(
            counts.instance_true_positives[label.id],
            int(false_positives[label.train_id]),
            counts.instance_false_negatives[label.id],
        )
        for label in INSTANCE_CLASSES
    }
    category_iiou = {}
    for index, (category, label_ids) in enumerate(INSTANCE_CATEGORIES.items()):
        other_rows = [label.id for label in TRAIN_LABELS if label.category != category]
        category_false_positives = int(matrix[np.ix_(other_rows, label_ids)].sum())
        category_iiou[category] = iou_score(
            counts.category_true_positives[index], category_false_positives, counts.category_false_negatives[index]
        )
    return {
        "miou": pixel_scores["miou"],
        "class_iou": pixel_scores["class_iou"],
        "mean_iiou": mean_of_scores(class_iiou.values()),
        "class_iiou": class_iiou,
        "category_miou": pixel_scores["category_miou"],
        "category_iou": pixel_scores["category_iou"],
        "mean_category_iiou": mean_of_scores(category_iiou.values()),
        "category_iiou": category_iiou,
        "pixel_accuracy": pixel_scores["pixel_accuracy"],
        "label_id_confusion_matrix": matrix.tolist(),
    }


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if len(image.getbands()) != 1:
                raise SegflowError(f"{path} has {len(image.getbands())} channels ({image.mode}); expected one")
            return np.asarray(image)
    except FileNotFoundError:
        raise SegflowError(f"{path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise SegflowError(f"{path} is not a readable image: {error}") from None


def _read_label_ids(path: Path) -> np.ndarray:
    label_ids = _read_image(path)
    if label_ids.min() < 0 or label_ids.max() >= NUM_LABEL_IDS:
        raise SegflowError(f"{path} holds values up to {label_ids.max()}, not labelIds 0..{NUM_LABEL_IDS - 1}")
    return label_ids.astype(np.uint8, copy=False)


def _read_prediction(path: Path, ground_truth_path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if len(image.getbands()) != 1:
                raise SegflowError(
                    f"{path} is a {image.mode} image with {len(image.getbands())} channels; predictions must be "
                    "single-channel labelIds PNGs"
                )
            if image.size != (shape[1], shape[0]):
                raise SegflowError(
                    f"{path} is {image.size[0]}x{image.size[1]}, but its ground truth {ground_truth_path} "
                    f"is {shape[1]}x{shape[0]}"
                )
            prediction = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise SegflowError(f"{path} is not a readable image: {error}") from None
    if prediction.min() < 0 or prediction.max() >= NUM_LABEL_IDS:
        bad_values = np.unique(prediction[(prediction < 0) | (prediction >= NUM_LABEL_IDS)])
        raise SegflowError(
            f"{path} holds values {bad_values[:5].tolist()} that are not Cityscapes labelIds 0..{NUM_LABEL_IDS - 1}"
        )
    return prediction.astype(np.uint8, copy=False)


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"

