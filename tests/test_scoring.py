import copy
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segflow import scoring
from segflow.cli import cli
from segflow.errors import SegflowError

CITIES = ("aachen", "bochum")


def street_scene(rng, height, width):
    """labelIds and instanceIds of a street-like scene: bands of stuff, ignored patches, instances.

    Instances include classes that are ignored in evaluation (caravan 29, trailer 30) and a crowd
    region (class id without an instance number), as in gtFine.
    """
    label_ids = np.zeros((height, width), np.uint8)
    for label_id, top in zip((23, 11, 21, 7, 8), [0, *np.sort(rng.integers(0, height, 4))]):
        label_ids[top:] = label_id
    for label_id in rng.choice([0, 1, 3, 4, 9, 10, 12, 13, 14, 17, 19, 20, 22], 8):
        y, x = rng.integers(0, height), rng.integers(0, width)
        label_ids[y : y + rng.integers(2, height // 3), x : x + rng.integers(2, width // 3)] = label_id
    instance_ids = label_ids.astype(np.uint16)
    for k in range(int(rng.integers(4, 10))):
        label_id = int(rng.choice([24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 26, 24]))
        y, x = rng.integers(0, height), rng.integers(0, width)
        window = np.s_[y : y + rng.integers(1, height // 4), x : x + rng.integers(1, width // 4)]
        label_ids[window] = label_id
        instance_ids[window] = label_id * 1000 + k
    y, x = rng.integers(0, height - 4), rng.integers(0, width - 6)
    label_ids[y : y + 4, x : x + 6] = instance_ids[y : y + 4, x : x + 6] = 26  # a crowd of cars
    return label_ids, instance_ids


def perturbed(label_ids, rng):
    """A plausible wrong prediction: swapped classes, a shift, noise, patches of ignored labels."""
    prediction = label_ids.copy()
    for label_id in rng.choice(np.unique(label_ids), 2):
        prediction[label_ids == label_id] = rng.integers(0, 34)
    height, width = prediction.shape
    prediction[: height // 2] = np.roll(prediction[: height // 2], int(rng.integers(1, 5)), axis=1)
    noise = rng.random(prediction.shape) < 0.05
    prediction[noise] = rng.integers(0, 34, int(noise.sum()))
    for label_id in (9, 29, 30):  # parking, caravan, trailer: not evaluated, yet they count
        y, x = rng.integers(0, height), rng.integers(0, width)
        prediction[y : y + 5, x : x + 9] = label_id
    return prediction


def write_ground_truth_and_predictions(root, num_images=6, height=64, width=128, seed=0, exact=False):
    """gtFine/val under `root` and a predictions folder (nested per city, as a model writes them)."""
    rng = np.random.default_rng(seed)
    ground_truth_files = []
    for index in range(num_images):
        city = CITIES[index % len(CITIES)]
        key = f"{city}_{index:06d}_000019"
        label_ids, instance_ids = street_scene(rng, height, width)
        folder = root / "cityscapes" / "gtFine" / "val" / city
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label_ids).save(folder / f"{key}_gtFine_labelIds.png")
        Image.fromarray(instance_ids).save(folder / f"{key}_gtFine_instanceIds.png")
        ground_truth_files.append(folder / f"{key}_gtFine_labelIds.png")
        prediction_folder = root / "predictions" / city
        prediction_folder.mkdir(parents=True, exist_ok=True)
        prediction = label_ids if exact else perturbed(label_ids, rng)
        Image.fromarray(prediction).save(prediction_folder / f"{key}_leftImg8bit.png")
    return root / "predictions", root / "cityscapes", ground_truth_files


def official_scores(prediction_files, ground_truth_files):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = copy.copy(official.args)
    args.evalInstLevelScore = True
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = False
    return official.evaluateImgLists(
        [str(path) for path in prediction_files], [str(path) for path in ground_truth_files], args
    )


def none_for_nan(value):
    return None if math.isnan(value) else value


@pytest.fixture
def dataset(tmp_path):
    return write_ground_truth_and_predictions(tmp_path)


def assert_matches_official(predictions, ground_truth_root):
    """Every metric of score_folder equals the official script's on the same files, to 1e-6."""
    ours = scoring.score_folder(predictions, ground_truth_root)
    ground_truth_files = scoring.find_ground_truth(ground_truth_root, "val")
    theirs = official_scores(scoring.match_predictions(ground_truth_files, predictions), ground_truth_files)

    assert ours["label_id_confusion_matrix"] == theirs["confMatrix"]
    assert {type(count) for row in ours["label_id_confusion_matrix"] for count in row} == {int}  # exact, as JSON ints
    for ours_key, their_key in [
        ("class_iou", "classScores"),
        ("class_iiou", "classInstScores"),
        ("category_iou", "categoryScores"),
        ("category_iiou", "categoryInstScores"),
    ]:
        for name, value in ours[ours_key].items():
            expected = none_for_nan(theirs[their_key][name])
            assert (value is None) == (expected is None), (ours_key, name)
            assert value == pytest.approx(expected, abs=1e-6), (ours_key, name)
        # the official dicts list every label; those not scored here are NaN there
        assert all(math.isnan(v) for k, v in theirs[their_key].items() if k not in ours[ours_key])
    assert ours["miou"] == pytest.approx(theirs["averageScoreClasses"], abs=1e-6)
    assert ours["mean_iiou"] == pytest.approx(theirs["averageScoreInstClasses"], abs=1e-6)
    assert ours["category_miou"] == pytest.approx(theirs["averageScoreCategories"], abs=1e-6)
    assert ours["mean_category_iiou"] == pytest.approx(theirs["averageScoreInstCategories"], abs=1e-6)
    # The official script has no aggregate pixel accuracy: it is correct / evaluated pixels of its matrix.
    matrix = np.array(theirs["confMatrix"])
    evaluated = scoring.EVALUATED_LABEL_IDS
    accuracy = matrix[evaluated, evaluated].sum() / matrix[evaluated].sum()
    assert ours["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    return ours


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_official_evaluation(tmp_path, seed):
    predictions, ground_truth_root, _ = write_ground_truth_and_predictions(tmp_path, seed=seed)
    ours = assert_matches_official(predictions, ground_truth_root)
    assert 0.3 < ours["miou"] < 0.95 and 0.3 < ours["mean_iiou"] < 0.95  # the perturbation really hurts


def test_matches_official_evaluation_on_synthetic_dataset(tmp_path):
    from segflow.synthetic import write_dataset

    ground_truth_root = write_dataset(tmp_path / "cityscapes", train=0, val=4, test=0, seed=5)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    rng = np.random.default_rng(5)
    for path in scoring.find_ground_truth(ground_truth_root, "val"):
        prediction = perturbed(np.asarray(Image.open(path)), rng)
        Image.fromarray(prediction).save(predictions / path.name.replace("_gtFine_labelIds", "_pred"))
    ours = assert_matches_official(predictions, ground_truth_root)
    assert sum(value is not None for value in ours["class_iiou"].values()) >= 3  # instances were scored


def test_average_instance_sizes_are_the_official_ones():
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    assert scoring.AVERAGE_INSTANCE_SIZE == official.args.avgClassSize


def test_perfect_predictions_score_one(tmp_path):
    predictions, ground_truth_root, _ = write_ground_truth_and_predictions(tmp_path, exact=True)
    metrics = scoring.score_folder(predictions, ground_truth_root)
    assert metrics["miou"] == metrics["mean_iiou"] == metrics["category_miou"] == 1.0
    assert metrics["mean_category_iiou"] == metrics["pixel_accuracy"] == 1.0
    assert metrics["num_images"] == 6


def test_absent_class_is_null(tmp_path):
    root = tmp_path / "cityscapes" / "gtFine" / "val" / "aachen"
    root.mkdir(parents=True)
    label_ids = np.full((8, 8), 7, np.uint8)  # road only
    label_ids[:, 4:] = 24  # and one person
    instance_ids = np.where(label_ids == 24, 24000, label_ids.astype(np.uint16))
    Image.fromarray(label_ids).save(root / "aachen_000000_000001_gtFine_labelIds.png")
    Image.fromarray(instance_ids).save(root / "aachen_000000_000001_gtFine_instanceIds.png")
    (tmp_path / "predictions").mkdir()
    prediction = label_ids.copy()
    prediction[0, :2] = 26  # car predicted on road: car IoU 0, not null
    Image.fromarray(prediction).save(tmp_path / "predictions" / "aachen_000000_000001.png")

    metrics = scoring.score_folder(tmp_path / "predictions", tmp_path / "cityscapes")
    assert metrics["class_iou"]["sky"] is None and metrics["class_iiou"]["rider"] is None
    assert metrics["class_iou"]["car"] == 0.0 and metrics["class_iiou"]["car"] == 0.0
    assert metrics["class_iou"]["road"] == pytest.approx(30 / 32)
    assert metrics["miou"] == pytest.approx((30 / 32 + 1 + 0) / 3)
    assert metrics["mean_iiou"] == pytest.approx((1 + 0) / 2)
    assert metrics["category_iou"]["nature"] is None
    assert metrics["category_miou"] == pytest.approx((30 / 32 + 1 + 0) / 3)
    assert metrics["category_iiou"] == {"human": 1.0, "vehicle": 0.0}


def test_workers_give_the_same_result(dataset):
    predictions, ground_truth_root, _ = dataset
    assert scoring.score_folder(predictions, ground_truth_root, workers=2) == scoring.score_folder(
        predictions, ground_truth_root
    )


def test_missing_prediction_names_the_ground_truth(dataset):
    predictions, ground_truth_root, ground_truth_files = dataset
    next(predictions.rglob("bochum_000001_000019*.png")).unlink()
    with pytest.raises(SegflowError, match=r"no prediction for 1 of 6 .*bochum_000001_000019_gtFine_labelIds\.png"):
        scoring.score_folder(predictions, ground_truth_root)


def test_duplicate_prediction_names_both_files(dataset):
    predictions, ground_truth_root, _ = dataset
    original = next(predictions.rglob("aachen_000002_000019*.png"))
    (predictions / "aachen_000002_000019_copy.png").write_bytes(original.read_bytes())
    with pytest.raises(SegflowError, match=r"two predictions for aachen_000002_000019: .*_copy\.png"):
        scoring.score_folder(predictions, ground_truth_root)


def test_values_that_are_not_label_ids(dataset):
    predictions, ground_truth_root, _ = dataset
    path = next(predictions.rglob("aachen_000000_000019*.png"))
    prediction = np.asarray(Image.open(path)).copy()
    prediction[3, 3] = 255  # a trainId ignore value left in
    Image.fromarray(prediction).save(path)
    with pytest.raises(SegflowError, match=rf"{path} holds values \[255\] that are not Cityscapes labelIds"):
        scoring.score_folder(predictions, ground_truth_root)


def test_sixteen_bit_prediction_is_checked_too(dataset):
    predictions, ground_truth_root, _ = dataset
    path = next(predictions.rglob("bochum_000001_000019*.png"))
    prediction = np.asarray(Image.open(path)).astype(np.uint16)
    Image.fromarray(prediction).save(path)
    assert scoring.score_folder(predictions, ground_truth_root)["num_images"] == 6  # 16-bit labelIds are fine
    prediction[0, 0] = 7000
    Image.fromarray(prediction).save(path)
    with pytest.raises(SegflowError, match=rf"{path} holds values \[7000\]"):
        scoring.score_folder(predictions, ground_truth_root)


def test_rgb_prediction(dataset):
    predictions, ground_truth_root, _ = dataset
    path = next(predictions.rglob("bochum_000003_000019*.png"))
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(SegflowError, match=rf"{path} is a RGB image with 3 channels"):
        scoring.score_folder(predictions, ground_truth_root)


def test_size_mismatch(dataset):
    predictions, ground_truth_root, _ = dataset
    path = next(predictions.rglob("aachen_000004_000019*.png"))
    Image.open(path).resize((64, 32), Image.NEAREST).save(path)
    with pytest.raises(SegflowError, match=rf"{path} is 64x32, but its ground truth .* is 128x64"):
        scoring.score_folder(predictions, ground_truth_root)


def test_ground_truth_with_mismatched_instance_ids_or_colour_labels_names_the_files(dataset):
    predictions, ground_truth_root, ground_truth_files = dataset
    label_path = ground_truth_files[0]
    instance_path = label_path.with_name(label_path.name.replace("labelIds", "instanceIds"))
    Image.open(instance_path).resize((64, 32), Image.NEAREST).save(instance_path)
    with pytest.raises(SegflowError, match=rf"{instance_path} is 64x32, but {label_path} is 128x64"):
        scoring.score_folder(predictions, ground_truth_root)
    Image.open(label_path).convert("RGB").save(label_path)
    with pytest.raises(SegflowError, match=rf"{label_path} has 3 channels \(RGB\); expected one"):
        scoring.score_folder(predictions, ground_truth_root)


def test_an_unknown_split_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(SegflowError, match=r"unknown split 'bogus'; expected one of train, val, test"):
        scoring.find_ground_truth(tmp_path, "bogus")

@pytest.mark.parametrize(
    "pixels, looks_like_train_ids",
    [
        ({0: 25, 7: 75}, True),  # a quarter on the void labelIds 0..6, nothing above 18: trainIds
        ({0: 20, 7: 80}, False),  # a fifth on void labelIds
        ({0: 50, 7: 49, 19: 1}, False),  # labelId 19 (traffic light) is no trainId map's value
        ({0: 50, 24: 50}, False),  # person
        ({}, False),  # nothing predicted
    ],
)
def test_trainid_maps_are_told_from_label_ids_by_their_pixel_counts(pixels, looks_like_train_ids):
    counts = np.zeros(34, np.int64)
    for label_id, count in pixels.items():
        counts[label_id] = count
    assert scoring._looks_like_train_ids(counts) is looks_like_train_ids

def test_label_id_34_is_refused_in_a_prediction_and_in_the_ground_truth(dataset):
    predictions, ground_truth_root, ground_truth_files = dataset
    path = next(predictions.rglob("aachen_000000_000019*.png"))
    prediction = np.asarray(Image.open(path)).copy()
    prediction[0, 0] = 34  # one past the last labelId, 33
    Image.fromarray(prediction).save(path)
    with pytest.raises(SegflowError, match=rf"^{path} holds values \[34\] that are not Cityscapes labelIds 0\.\.33$"):
        scoring.score_folder(predictions, ground_truth_root)
    label_ids = np.asarray(Image.open(ground_truth_files[0])).copy()
    label_ids[0, 0] = 34
    Image.fromarray(label_ids).save(ground_truth_files[0])
    with pytest.raises(SegflowError, match=rf"^{ground_truth_files[0]} holds values up to 34, not labelIds 0\.\.33$"):
        scoring.score_folder(predictions, ground_truth_root)


def test_a_missing_predictions_folder_and_an_unreadable_prediction_are_named(dataset):
    predictions, ground_truth_root, _ = dataset
    with pytest.raises(SegflowError, match=rf"^predictions folder {predictions / 'nowhere'} does not exist$"):
        scoring.score_folder(predictions / "nowhere", ground_truth_root)
    path = next(predictions.rglob("bochum_000001_000019*.png"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with pytest.raises(SegflowError, match=rf"^{path} is not a readable image: "):
        scoring.score_folder(predictions, ground_truth_root)


def test_an_image_larger_than_one_counting_chunk_counts_every_pixel():
    rng = np.random.default_rng(0)
    label_ids = rng.integers(0, 34, (512, 1024), dtype=np.uint8)  # 524,288 pixels: two chunks of 2**18
    prediction = rng.integers(0, 34, (512, 1024), dtype=np.uint8)
    expected = np.zeros((34, 34), np.int64)
    np.add.at(expected, (label_ids.ravel(), prediction.ravel()), 1)
    np.testing.assert_array_equal(scoring._confusion_counts(label_ids, prediction), expected)

def test_no_ground_truth(tmp_path):
    (tmp_path / "predictions").mkdir()
    with pytest.raises(SegflowError, match=r"no ground truth found: .*gtFine/val"):
        scoring.score_folder(tmp_path / "predictions", tmp_path)


def test_cli_writes_metrics_json(dataset, tmp_path):
    predictions, ground_truth_root, _ = dataset
    out = tmp_path / "results" / "metrics.json"
    result = CliRunner().invoke(
        cli, ["evaluate", "--predictions", str(predictions), "--ground-truth", str(ground_truth_root), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    expected = json.loads(json.dumps(scoring.score_folder(predictions, ground_truth_root)))
    assert metrics == expected
    for key in ["miou", "class_iou", "mean_iiou", "class_iiou", "category_miou", "category_iou",
                "mean_category_iiou", "category_iiou", "pixel_accuracy"]:  # fmt: skip
        assert key in metrics
    assert len(metrics["class_iou"]) == 19 and len(metrics["category_iou"]) == 7


def test_cli_error_writes_nothing(dataset, tmp_path):
    predictions, ground_truth_root, _ = dataset
    next(predictions.rglob("aachen_000000_000019*.png")).unlink()
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        cli, ["evaluate", "--predictions", str(predictions), "--ground-truth", str(ground_truth_root), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: no prediction for 1 of 6") and result.output.count("\n") == 1
    assert not out.exists()


def test_cli_modes_are_exclusive(dataset, tmp_path):
    predictions, ground_truth_root, _ = dataset
    result = CliRunner().invoke(
        cli, ["evaluate", "--predictions", str(predictions), "--model", "m.keras", "--out", str(tmp_path / "m.json")]
    )
    assert result.exit_code == 2 and "not both" in result.output
