"""The Cityscapes label table, its lookup tables and the dataset's fixed facts.

The table is the official one from cityscapesScripts (`helpers/labels.py`), copied so that
segflow needs no dependency to read labels; `tests/test_cityscapes.py` checks it still equals
the official table field by field.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


LABELS: tuple[Label, ...] = (
    #     name                    id  trainId category        catId instances ignore  color
    Label("unlabeled",             0, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("ego vehicle",           1, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("rectification border",  2, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("out of roi",            3, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("static",                4, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("dynamic",               5, 255, "void",         0, False, True,  (111, 74, 0)),
    Label("ground",                6, 255, "void",         0, False, True,  (81, 0, 81)),
    Label("road",                  7,   0, "flat",         1, False, False, (128, 64, 128)),
    Label("sidewalk",              8,   1, "flat",         1, False, False, (244, 35, 232)),
    Label("parking",               9, 255, "flat",         1, False, True,  (250, 170, 160)),
    Label("rail track",           10, 255, "flat",         1, False, True,  (230, 150, 140)),
    Label("building",             11,   2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall",                 12,   3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence",                13,   4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail",           14, 255, "construction", 2, False, True,  (180, 165, 180)),
    Label("bridge",               15, 255, "construction", 2, False, True,  (150, 100, 100)),
    Label("tunnel",               16, 255, "construction", 2, False, True,  (150, 120, 90)),
    Label("pole",                 17,   5, "object",       3, False, False, (153, 153, 153)),
    Label("polegroup",            18, 255, "object",       3, False, True,  (153, 153, 153)),
    Label("traffic light",        19,   6, "object",       3, False, False, (250, 170, 30)),
    Label("traffic sign",         20,   7, "object",       3, False, False, (220, 220, 0)),
    Label("vegetation",           21,   8, "nature",       4, False, False, (107, 142, 35)),
    Label("terrain",              22,   9, "nature",       4, False, False, (152, 251, 152)),
    Label("sky",                  23,  10, "sky",          5, False, False, (70, 130, 180)),
    Label("person",               24,  11, "human",        6, True,  False, (220, 20, 60)),
    Label("rider",                25,  12, "human",        6, True,  False, (255, 0, 0)),
    Label("car",                  26,  13, "vehicle",      7, True,  False, (0, 0, 142)),
    Label("truck",                27,  14, "vehicle",      7, True,  False, (0, 0, 70)),
    Label("bus",                  28,  15, "vehicle",      7, True,  False, (0, 60, 100)),
    Label("caravan",              29, 255, "vehicle",      7, True,  True,  (0, 0, 90)),
    Label("trailer",              30, 255, "vehicle",      7, True,  True,  (0, 0, 110)),
    Label("train",                31,  16, "vehicle",      7, True,  False, (0, 80, 100)),
    Label("motorcycle",           32,  17, "vehicle",      7, True,  False, (0, 0, 230)),
    Label("bicycle",              33,  18, "vehicle",      7, True,  False, (119, 11, 32)),
    Label("license plate",        -1,  -1, "vehicle",      7, False, True,  (0, 0, 142)),
)  # fmt: skip

NUM_CLASSES = 19
IGNORE_LABEL = 255
CITYSCAPES_TRAIN_EXAMPLES = 2975
CITYSCAPES_VAL_EXAMPLES = 500
CITYSCAPES_TEST_EXAMPLES = 1525
IMAGE_HEIGHT, IMAGE_WIDTH = 1024, 2048
SPLITS = ("train", "val", "test")

LABEL_BY_ID = {label.id: label for label in LABELS}
LABEL_BY_NAME = {label.name: label for label in LABELS}
# The 19 evaluated classes in trainId order.
TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted((label for label in LABELS if 0 <= label.train_id < IGNORE_LABEL), key=lambda label: label.train_id)
)
CLASS_NAMES: tuple[str, ...] = tuple(label.name for label in TRAIN_LABELS)
# Evaluated categories (those with at least one evaluated class), in catId order.
CATEGORY_NAMES: tuple[str, ...] = tuple(dict.fromkeys(label.category for label in TRAIN_LABELS))
# labelIds 0..33 are the ids that appear in `*_labelIds.png`; -1 (license plate) never does.
VALID_LABEL_IDS: frozenset[int] = frozenset(label.id for label in LABELS if label.id >= 0)


def _lookup(pairs, default: int) -> np.ndarray:
    table = np.full(256, default, dtype=np.uint8)
    for key, value in pairs:
        table[key] = value
    return table


# uint8 lookup tables: index with a label image to map it in one numpy operation.
LABEL_ID_TO_TRAIN_ID = _lookup(((label.id, label.train_id) for label in LABELS if label.id >= 0), IGNORE_LABEL)
TRAIN_ID_TO_LABEL_ID = _lookup(((label.train_id, label.id) for label in TRAIN_LABELS), 0)
TRAIN_ID_TO_COLOR = np.zeros((256, 3), dtype=np.uint8)
for _label in TRAIN_LABELS:
    TRAIN_ID_TO_COLOR[_label.train_id] = _label.color
LABEL_ID_TO_COLOR = np.zeros((256, 3), dtype=np.uint8)
for _label in LABELS:
    if _label.id >= 0:
        LABEL_ID_TO_COLOR[_label.id] = _label.color
del _label


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a labelIds image to trainIds (255 = ignored in training and evaluation)."""
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds back to labelIds, the format the Cityscapes test server accepts."""
    return TRAIN_ID_TO_LABEL_ID[train_ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Paint trainIds in the Cityscapes palette (ignore is black)."""
    return TRAIN_ID_TO_COLOR[train_ids]


# --- Layout -------------------------------------------------------------------------------
# leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
# gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_{labelIds,instanceIds,color,polygons}.*
IMAGE_DIR = "leftImg8bit"
LABEL_DIR = "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_IDS_SUFFIX = "_gtFine_instanceIds.png"
COLOR_SUFFIX = "_gtFine_color.png"
POLYGONS_SUFFIX = "_gtFine_polygons.json"
PACKAGES = ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip")
