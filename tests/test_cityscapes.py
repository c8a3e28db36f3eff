import numpy as np
from cityscapesscripts.helpers import labels as official

from segflow import cityscapes


def test_label_table_equals_official():
    ours = [tuple(label) for label in cityscapes.LABELS]
    theirs = [
        (l.name, l.id, l.trainId, l.category, l.categoryId, l.hasInstances, l.ignoreInEval, tuple(l.color))
        for l in official.labels
    ]
    assert ours == theirs


def test_nineteen_classes_in_train_id_order():
    assert cityscapes.NUM_CLASSES == len(cityscapes.CLASS_NAMES) == 19
    assert cityscapes.CLASS_NAMES[0] == "road" and cityscapes.CLASS_NAMES[18] == "bicycle"
    assert cityscapes.CATEGORY_NAMES == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


def test_label_id_to_train_id_matches_official_for_every_id():
    for label_id in range(34):
        expected = official.id2label[label_id].trainId
        expected = 255 if expected in (-1, 255) else expected
        assert cityscapes.LABEL_ID_TO_TRAIN_ID[label_id] == expected


def test_train_ids_round_trip_to_label_ids():
    train_ids = np.arange(19, dtype=np.uint8).reshape(1, 19)
    label_ids = cityscapes.to_label_ids(train_ids)
    assert [official.id2label[int(i)].trainId for i in label_ids[0]] == list(range(19))
    np.testing.assert_array_equal(cityscapes.to_train_ids(label_ids), train_ids)
    # uint8 both ways, as PNG label images and the records hold them.
    assert label_ids.dtype == np.uint8 and cityscapes.to_train_ids(label_ids).dtype == np.uint8


def test_colorize_uses_palette():
    colors = cityscapes.colorize(np.array([[0, 10, 255]], dtype=np.uint8))
    assert colors.tolist() == [[[128, 64, 128], [70, 130, 180], [0, 0, 0]]]
