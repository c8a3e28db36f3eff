"""Sample predictions for the report: each model run on the first val images, as PNG tiles.

Evaluation writes them beside metrics.json (`write_samples`, with the predictor it evaluated
with, so nothing is loaded or traced again); the report shows those tiles. Only when an
architecture has none (a run from before they were written, a copy without them) or `--records`
asks for other images does the report load every model and run it here (20 of the demo report's
24 s). That path is the only part of the report that needs TensorFlow, imported lazily inside the
functions that read records or run a model, so loading, summarising and rendering a run never
import it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from segflow import atomic, plots, storage
from segflow.cityscapes import IMAGE_DIR, IMAGE_SUFFIX, LABEL_DIR, LABEL_IDS_SUFFIX, colorize, to_train_ids
from segflow.errors import SegflowError
from segflow.report.loading import ArchitectureResult, Run
from segflow.run_files import SAMPLES_DIR, SAMPLES_FILE

NUM_SAMPLES = 3
SAMPLE_WIDTH = 512  # sample tiles wider than this are shrunk (a full Cityscapes frame is 2048)


def sample_predictions(
    run: Run, records_dir: str | os.PathLike | None, num_samples: int, fetch_model: Callable[[str], Path]
) -> dict:
    """Run each model on the first `num_samples` val images.

    Returns `{"source": where the images came from or None, "images": names, "note": why some or
    all are missing, "rows": [{"name", "image", "ground_truth", "predictions": {arch: PNG or error}}]}`
    (PNG bytes; `rows` is for the HTML only).
    """
    result = {"source": None, "images": [], "note": None, "rows": []}
    models = [arch for arch in run.completed if arch.model_uri]
    if num_samples < 1:
        result["note"] = "Sample predictions were not asked for."
        return result
    if not models:
        result["note"] = "No architecture has a trained model to show predictions of."
        return result
    stored = None if records_dir else _stored_samples(models, num_samples)
    if stored is not None:
        return {**result, **stored}
    data = (run.record or {}).get("data") or {}
    candidates = [records_dir] if records_dir else [data.get("records_dir"), data.get("data_root")]
    located = next((found for found in map(_locate_val_images, filter(None, candidates)) if found), None)
    if located is None:
        searched = ", ".join(str(candidate) for candidate in candidates if candidate) or "none recorded"
        result["note"] = (
            "Sample predictions are skipped: the val images are not on this machine "
            f"(searched: {searched}). Pass --records to render them."
        )
        return result

    kind, folder = located
    examples = _records_examples(folder, num_samples) if kind == "records" else _png_examples(folder, num_samples)
    if not examples:
        result["note"] = f"Sample predictions are skipped: {folder} holds no val images with labels."
        return result
    result["source"] = str(folder)
    result["images"] = [name for name, *_ in examples]
    result["rows"] = [
        {
            "name": name,
            "image": plots.array_png(rgb, SAMPLE_WIDTH),
            "ground_truth": plots.array_png(colorize(label), SAMPLE_WIDTH, nearest=True),
            "predictions": {},
        }
        for name, rgb, label, _ in examples
    ]
    for arch in models:
        for row, prediction in zip(result["rows"], _predict(arch, examples, fetch_model)):
            if not isinstance(prediction, str):  # a text says why the model could not run
                prediction = plots.array_png(colorize(prediction), SAMPLE_WIDTH, nearest=True)
            row["predictions"][arch.name] = prediction
    return result


def write_samples(out_dir: str | os.PathLike, records_dir: str | os.PathLike, predictor,
                  num_samples: int = NUM_SAMPLES, *, model_sha256: str | None = None) -> Path | None:  # fmt: skip
    """Write `predictor`'s trainIds for the first `num_samples` val records of `records_dir` as
    the report's tiles, into `out_dir/samples/` (replacing an older folder atomically).

    `predictor`: `segflow.evaluate.make_predictor` of the model (batch, H, W, 3) float32 →
    (batch, h, w) trainIds. Files: `image-{i}.png` (RGB), `ground-truth-{i}.png` and
    `prediction-{i}.png` (trainId colours), each at most SAMPLE_WIDTH wide, and `samples.json`
    `{"source": records_dir, "asked": num_samples, "model_sha256", "images": [{"name", "image",
    "ground_truth", "prediction"}]}` (fewer images than asked when the split has fewer;
    `model_sha256` of the model file, which metrics.json holds too: the report uses the tiles only
    when the two agree).
    Returns the folder, or None when the records hold no val example.
    """
    examples = _records_examples(Path(records_dir), num_samples)
    if not examples:
        return None
    target = Path(out_dir) / SAMPLES_DIR
    index = []
    with atomic.staging_dir(target, what="sample predictions") as staging:
        for number, (name, rgb, label, images) in enumerate(examples):
            prediction = predictor(images, tuple(label.shape))[0]
            files = {"image": f"image-{number}.png", "ground_truth": f"ground-truth-{number}.png",
                     "prediction": f"prediction-{number}.png"}  # fmt: skip
            (staging / files["image"]).write_bytes(plots.array_png(rgb, SAMPLE_WIDTH))
            (staging / files["ground_truth"]).write_bytes(plots.array_png(colorize(label), SAMPLE_WIDTH, nearest=True))
            (staging / files["prediction"]).write_bytes(plots.array_png(colorize(prediction), SAMPLE_WIDTH, nearest=True))
            index.append({"name": name, **files})
        written = {"source": str(records_dir), "asked": num_samples, "model_sha256": model_sha256, "images": index}
        (staging / SAMPLES_FILE).write_text(json.dumps(written, indent=2) + "\n")
    return target


def _stored_samples(models: list[ArchitectureResult], num_samples: int) -> dict | None:
    """`sample_predictions`' fields from the tiles evaluation wrote, when every model has them, of
    the model its metrics.json scored (the same `model_sha256`), for the same first `num_samples`
    images (the same image and ground-truth tiles); else None (then the models run here)."""
    indexed = []  # (architecture, its samples.json)
    for arch in models:
        index = _read_index(arch.samples_dir) if arch.samples_dir else None
        # Fewer images than asked are enough when the split had no more (`asked` covered them).
        if index is None or (len(index["images"]) < num_samples and index.get("asked", 0) < num_samples):
            return None
        if not index.get("model_sha256") or index["model_sha256"] != (arch.metrics or {}).get("model_sha256"):
            return None  # tiles of another model than the one scored (retrained or re-evaluated since)
        indexed.append((arch, index))
    if len({len(index["images"][:num_samples]) for _, index in indexed}) != 1:
        return None  # not the same images
    rows = []
    try:
        for arch, index in indexed:
            folder = arch.samples_dir
            for number, entry in enumerate(index["images"][:num_samples]):
                shown = (entry["name"], _tile(folder, entry["image"]), _tile(folder, entry["ground_truth"]))
                if number == len(rows):  # the first architecture gives each row its image
                    rows.append({"name": shown[0], "image": shown[1], "ground_truth": shown[2], "predictions": {}})
                elif shown != (rows[number]["name"], rows[number]["image"], rows[number]["ground_truth"]):
                    return None  # another image (or another dataset's image of the same name)
                rows[number]["predictions"][arch.name] = _tile(folder, entry["prediction"])
    except (OSError, KeyError, TypeError):
        return None  # a tile missing or an index not as written
    source = indexed[0][1].get("source")
    return {"source": source, "images": [row["name"] for row in rows], "rows": rows}


def _tile(folder: Path, name: str) -> bytes:
    if Path(name).name != name:  # a file of the samples folder, not a path out of it
        raise KeyError(name)
    return (folder / name).read_bytes()


def _read_index(folder: Path) -> dict | None:
    try:
        index = json.loads((folder / SAMPLES_FILE).read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and isinstance(index.get("images"), list) else None


def _locate_val_images(folder: str | os.PathLike) -> tuple[str, Path] | None:
    """("records", folder) for a folder of val shards, ("pngs", folder) for a Cityscapes folder."""
    from segflow.records import shard_pattern

    path = storage.local_path(folder)
    if storage.is_s3(folder) or not path.is_dir():
        return None
    if any(path.glob(shard_pattern("val"))):
        return "records", path
    if (path / IMAGE_DIR / "val").is_dir() and (path / LABEL_DIR / "val").is_dir():
        return "pngs", path
    return None


def _records_examples(records_dir: Path, count: int) -> list[tuple]:
    """(name, uint8 RGB, trainId label, normalised image batch) of the first val records."""
    import tensorflow as tf

    from segflow.augment import decode_image, parse_eval
    from segflow.input_pipeline import list_shards
    from segflow.records import FEATURE_KEYS, decode_example

    examples = []
    for serialized in tf.data.TFRecordDataset(list_shards(records_dir, "val")).take(count):
        features = decode_example(serialized)
        image, label = parse_eval(features)
        name = features[FEATURE_KEYS.filename].numpy().decode() or f"val #{len(examples) + 1}"
        examples.append((name, decode_image(features).numpy(), label.numpy(), image[tf.newaxis]))
    return examples


def _png_examples(data_root: Path, count: int) -> list[tuple]:
    """The same as `_records_examples`, from the Cityscapes PNGs."""
    from PIL import Image

    from segflow.predict import normalize, read_rgb

    examples = []
    for image_path in sorted((data_root / IMAGE_DIR / "val").glob(f"*/*{IMAGE_SUFFIX}"))[:count]:
        stem = image_path.name[: -len(IMAGE_SUFFIX)]
        label_path = data_root / LABEL_DIR / "val" / image_path.parent.name / f"{stem}{LABEL_IDS_SUFFIX}"
        if not label_path.is_file():
            continue
        rgb = read_rgb(image_path)
        with Image.open(label_path) as label_image:
            label = to_train_ids(np.asarray(label_image))
        examples.append((image_path.name, rgb, label, normalize(rgb[np.newaxis])))
    return examples


def _predict(arch: ArchitectureResult, examples: list[tuple], fetch_model) -> list:
    """trainId predictions at each label's size, or one error text per example if the model fails."""
    from segflow.evaluate import load_model, make_predictor

    try:
        model = load_model(fetch_model(arch.model_uri))
    except SegflowError as error:
        return [f"no prediction: {error}"] * len(examples)
    predictor = make_predictor(model, compiled=False)  # a few images: no graph to trace
    return [predictor(images, tuple(label.shape))[0] for _, _, label, images in examples]


