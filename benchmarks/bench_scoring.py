"""Folder evaluation speed: segflow's `score_folder` next to cityscapesScripts' official script.

Both score the same synthetic gtFine folder (street-like scenes with ~25 instances per image, as
in Cityscapes val) against the same predictions, in one run; the figures are images/s and the
ratio ours / official. Both must decode the same three PNGs per image (labelIds, instanceIds,
prediction), so the decode-only rate is printed too: it bounds both. Also checks both give the
same mIoU and iIoU.

    .venv/bin/python benchmarks/bench_scoring.py --quick
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from segflow.scoring import find_ground_truth, match_predictions, score_folder

INSTANCE_LABEL_IDS = [24, 24, 24, 25, 26, 26, 26, 27, 28, 31, 32, 33, 33]


def street_scene(rng, height, width, num_instances):
    """labelIds and instanceIds: bands of stuff, ignored patches and rectangular instances."""
    label_ids = np.zeros((height, width), np.uint8)
    for label_id, top in zip((23, 11, 21, 7, 8), [0, *np.sort(rng.integers(0, height, 4))]):
        label_ids[top:] = label_id
    for label_id in rng.choice([1, 3, 4, 12, 13, 17, 19, 20, 22], 10):
        y, x = rng.integers(0, height), rng.integers(0, width)
        label_ids[y : y + rng.integers(2, height // 5), x : x + rng.integers(2, width // 5)] = label_id
    instance_ids = label_ids.astype(np.uint16)
    scale = height / 1024
    for k in range(num_instances):
        label_id = int(rng.choice(INSTANCE_LABEL_IDS))
        instance_height = max(1, int(rng.integers(20, 200) * scale))
        instance_width = max(1, int(rng.integers(20, 200) * scale))
        y, x = rng.integers(0, height), rng.integers(0, width)
        window = np.s_[y : y + instance_height, x : x + instance_width]
        label_ids[window] = label_id
        instance_ids[window] = label_id * 1000 + k
    return label_ids, instance_ids


def predicted(label_ids, rng):
    """A smooth but wrong prediction: shifted, one class swapped, some blocks relabelled."""
    prediction = np.roll(label_ids, (int(rng.integers(-8, 8)), int(rng.integers(-8, 8))), axis=(0, 1))
    prediction[prediction == rng.choice(np.unique(label_ids))] = rng.integers(0, 34)
    height, width = prediction.shape
    for _ in range(20):
        y, x = rng.integers(0, height), rng.integers(0, width)
        prediction[y : y + height // 16, x : x + width // 16] = rng.integers(0, 34)
    return prediction


def write_folder(root: Path, num_images: int, height: int, width: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        city = ("aachen", "bochum", "cologne")[index % 3]
        key = f"{city}_{index:06d}_000019"
        label_ids, instance_ids = street_scene(rng, height, width, num_instances=25)
        folder = root / "gtFine" / "val" / city
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label_ids).save(folder / f"{key}_gtFine_labelIds.png")
        Image.fromarray(instance_ids).save(folder / f"{key}_gtFine_instanceIds.png")
        (root / "predictions" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(predicted(label_ids, rng)).save(root / "predictions" / city / f"{key}_leftImg8bit.png")
    return root / "predictions", root


def official_evaluation(predictions: Path, ground_truth_root: Path) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    ground_truth_files = find_ground_truth(ground_truth_root, "val")
    prediction_files = match_predictions(ground_truth_files, predictions)
    args = copy.copy(official.args)
    args.quiet, args.JSONOutput, args.evalPixelAccuracy = True, False, False
    return official.evaluateImgLists(list(map(str, prediction_files)), list(map(str, ground_truth_files)), args)


def read_only(predictions: Path, ground_truth_root: Path) -> None:
    """Decode the three PNGs of every image and nothing else: the floor both evaluations share."""
    ground_truth_files = find_ground_truth(ground_truth_root, "val")
    for prediction, ground_truth in zip(match_predictions(ground_truth_files, predictions), ground_truth_files):
        for path in (prediction, ground_truth, str(ground_truth).replace("labelIds", "instanceIds")):
            np.asarray(Image.open(path))


def timed(function, *args, **kwargs):
    """Result, and the CPU seconds this process spent on it: steadier than wall time on a shared machine."""
    start = time.process_time()
    result = function(*args, **kwargs)
    return result, time.process_time() - start


def timed_wall(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images (well under a minute)")
    parser.add_argument("--workers", type=int, default=1, help="threads for score_folder (>1 adds a wall-time column)")
    options = parser.parse_args()
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    print(f"official script: C extension {'compiled' if official.CSUPPORT else 'not compiled (numpy path)'}")
    sizes = [(256, 512, 12), (1024, 2048, 4)] if options.quick else [(256, 512, 60), (1024, 2048, 16)]
    parallel = f"ours x{options.workers}" if options.workers > 1 else ""
    print("images per CPU second (ours xN: per wall second); ratio = ours / official;")
    print("'excl. decode' subtracts the PNG-decode-only time from both")
    print(f"{'size':>10} {'images':>6} {'PNG decode':>10} {'official':>9} {'ours':>7} {'ratio':>6}"
          f" {'excl. decode':>12} {parallel:>9} {'|dmIoU|':>8} {'|diIoU|':>8}")  # fmt: skip
    for height, width, num_images in sizes:
        with tempfile.TemporaryDirectory() as folder:
            predictions, ground_truth_root = write_folder(Path(folder), num_images, height, width)
            _, decode_seconds = timed(read_only, predictions, ground_truth_root)
            theirs, official_seconds = timed(official_evaluation, predictions, ground_truth_root)
            ours, our_seconds = timed(score_folder, predictions, ground_truth_root)
            if options.workers > 1:
                _, parallel_seconds = timed_wall(score_folder, predictions, ground_truth_root, workers=options.workers)
        print(
            f"{f'{height}x{width}':>10} {num_images:>6} {num_images / decode_seconds:>10.1f}"
            f" {num_images / official_seconds:>9.1f} {num_images / our_seconds:>7.1f}"
            f" {official_seconds / our_seconds:>6.2f}"
            f" {(official_seconds - decode_seconds) / max(our_seconds - decode_seconds, 1e-9):>12.1f}"
            f" {f'{num_images / parallel_seconds:.1f}' if options.workers > 1 else '':>9}"
            f" {abs(ours['miou'] - theirs['averageScoreClasses']):>8.1e}"
            f" {abs(ours['mean_iiou'] - theirs['averageScoreInstClasses']):>8.1e}"
        )


if __name__ == "__main__":
    main()
