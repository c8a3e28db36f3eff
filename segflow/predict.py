"""Run a trained model over image files and write one PNG per image.

Formats:
- `labelIds`: 8-bit single-channel PNG of Cityscapes labelIds, what the Cityscapes test server
  and `segflow evaluate --predictions` read. The server matches a prediction to its image by the
  `{city}_{seq}_{frame}` key in the file name, so each output keeps its input's name
  (`berlin_000000_000019_leftImg8bit.png`).
- `trainIds`: 8-bit single-channel PNG of trainIds 0..18.
- `color`: RGB PNG in the Cityscapes palette.
- `overlay`: the input with the colour prediction blended over it at 50 %.

Outputs are written flat into the output folder (Cityscapes keys are unique across cities), each
through a temporary file and a rename. Inference is at full resolution: images are batched,
resized to the model's input size, and the logits resized back to each image's own size before
the argmax (`segflow.evaluate.make_predictor`), exactly as `segflow evaluate --model` scores.
"""

from __future__ import annotations

import glob
import itertools
import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from segflow import atomic
from segflow.cityscapes import colorize, to_label_ids
from segflow.errors import SegflowError

Format = Literal["labelIds", "trainIds", "color", "overlay"]
FORMATS: tuple[str, ...] = ("labelIds", "trainIds", "color", "overlay")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def find_images(images: str | os.PathLike) -> list[Path]:
    """The image files of a folder (searched recursively) or of a glob pattern, sorted."""
    text = str(images)
    if Path(text).is_dir():
        paths = [path for path in Path(text).rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS]
    else:
        paths = [Path(path) for path in glob.glob(text, recursive=True) if Path(path).is_file()]
    if not paths:
        raise SegflowError(f"no images found at {text} (a folder of .png/.jpg files or a glob pattern)")
    paths.sort()
    names = [path.name for path in paths]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SegflowError(f"several input images are named {duplicates[0]}; output names would collide")
    return paths


def predict_images(
    model_path: str | os.PathLike,
    images: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    format: Format = "labelIds",
    batch_size: int = 4,
) -> list[Path]:
    """Predict every image of `images` (folder or glob) with the model; return the written paths."""
    from segflow.evaluate import load_model, make_predictor

    if batch_size < 1:
        raise SegflowError(f"batch size must be at least 1, got {batch_size}")
    if format not in FORMATS:
        raise SegflowError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    paths = find_images(images)
    model = load_model(model_path)
    predictor = make_predictor(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    written = []
    for batch_paths in _batches_of_same_size(paths, batch_size):
        pixels = np.stack([read_rgb(path) for path in batch_paths])
        train_ids = predictor(normalize(pixels), pixels.shape[1:3]).astype(np.uint8)
        for path, rgb, prediction in zip(batch_paths, pixels, train_ids):
            written.append(_write_png(render(prediction, rgb, format), out_dir / path.with_suffix(".png").name))
    return written


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3], decoded by TensorFlow as the records' images are (bit-identical pixels)."""
    import tensorflow as tf

    try:
        return tf.io.decode_image(Path(path).read_bytes(), channels=3, expand_animations=False).numpy()
    except tf.errors.InvalidArgumentError as error:
        raise SegflowError(f"{path} is not a readable PNG or JPEG image") from error


def normalize(pixels: np.ndarray):
    """uint8 RGB → the model's input: [0, 1] then `segflow.augment.normalize_image`, as in training."""
    import tensorflow as tf

    from segflow.augment import normalize_image

    return normalize_image(tf.image.convert_image_dtype(tf.convert_to_tensor(pixels), tf.float32))


def render(train_ids: np.ndarray, rgb: np.ndarray, format: Format) -> np.ndarray:
    """The output image of one prediction in `format`."""
    if format == "labelIds":
        return to_label_ids(train_ids)
    if format == "trainIds":
        return train_ids
    colors = colorize(train_ids)
    if format == "color":
        return colors
    return ((rgb.astype(np.uint16) + colors) // 2).astype(np.uint8)


def _batches_of_same_size(paths: list[Path], batch_size: int):
    """Consecutive runs of at most `batch_size` images that share one size (read from the header)."""

    def size(path):
        try:
            with Image.open(path) as image:
                return image.size
        except (OSError, SyntaxError) as error:
            raise SegflowError(f"{path} is not a readable PNG or JPEG image") from error

    for _, group in itertools.groupby(paths, key=size):
        group = list(group)
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _write_png(array: np.ndarray, path: Path) -> Path:
    with atomic.temporary_file(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return path
