"""Run a trained model over image files and write one PNG per image.

Formats:
- `labelIds`: 8-bit single-channel PNG of Cityscapes labelIds, what the Cityscapes test server
  and `segflow evaluate --predictions` read. The server matches a prediction to its image by the
  `{city}_{seq}_{frame}` key in the file name, so each output keeps its input's name
  (`berlin_000000_000019_leftImg8bit.png`).
- `trainIds`: 8-bit single-channel PNG of trainIds 0..18, named `{input stem}_trainIds.png` so a
  trainIds folder is never mistaken for labelIds (`segflow evaluate` refuses such files).
- `color`: RGB PNG in the Cityscapes palette.
- `overlay`: the input with the colour prediction blended over it at 50 %.

Outputs are written flat into the output folder (Cityscapes keys are unique across cities), each
through a temporary file and a rename. Before any work, `check_outputs` refuses two inputs that
map to one output name (`frame_0001.jpg` and `frame_0001.png`) and an output that would replace an
input; `check_image` refuses an image that is not 8-bit RGB, as `segflow convert` does. Inference is at full resolution: images are batched,
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
    """Predict every image of `images` (folder or glob) with the model; return the written paths.

    `model_path`: a `model.keras` (or the run folder holding it), or an exported SavedModel folder
    (`saved_model/`, holding `saved_model.pb`), which is run through its `serving_default`
    signature: uint8 images in, trainIds out, segflow's preprocessing inside (`segflow.serving`).
    """
    from segflow.evaluate import load_model, make_predictor

    if batch_size < 1:
        raise SegflowError(f"batch size must be at least 1, got {batch_size}")
    if format not in FORMATS:
        raise SegflowError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    paths = find_images(images)
    out_dir = Path(out_dir)
    outputs = check_outputs(paths, images, out_dir, format)
    for path in paths:
        check_image(path)
    if is_saved_model(model_path):
        predict_train_ids = _serving_predictor(model_path)
    else:
        predictor = make_predictor(load_model(model_path))

        def predict_train_ids(pixels):
            return predictor(normalize(pixels), pixels.shape[1:3])

    out_dir.mkdir(parents=True, exist_ok=True)

    written = []
    for batch_paths in _batches_of_same_size(paths, batch_size):
        pixels = np.stack([read_rgb(path) for path in batch_paths])
        train_ids = predict_train_ids(pixels).astype(np.uint8)
        for path, rgb, prediction in zip(batch_paths, pixels, train_ids):
            written.append(_write_png(render(prediction, rgb, format), outputs[path]))
    return written


def is_saved_model(path: str | os.PathLike) -> bool:
    """True for a SavedModel folder (it holds `saved_model.pb`)."""
    return (Path(path) / "saved_model.pb").is_file()


def _serving_predictor(path: str | os.PathLike):
    """`pixels uint8 [B, H, W, 3] -> trainIds [B, H, W]` through a SavedModel's serving signature."""
    import tensorflow as tf

    try:
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    except (OSError, ValueError, KeyError) as error:
        raise SegflowError(f"{path} is not a SavedModel exported by segflow train (no serving_default): {error}") from None
    return lambda pixels: signature(images=tf.constant(pixels, tf.uint8))["train_ids"].numpy()


def output_name(path: Path, format: Format) -> str:
    """The output file name of input `path`: its stem + `.png` (`_trainIds.png` for trainIds)."""
    return path.stem + ("_trainIds.png" if format == "trainIds" else ".png")


def check_outputs(paths: list[Path], images: str | os.PathLike, out_dir: Path, format: Format) -> dict[Path, Path]:
    """`{input: output path}`; SegflowError naming the files if two inputs share an output or an
    output would replace an input (a later run over a folder that holds earlier predictions
    meets this check too: each earlier output maps onto itself)."""
    outputs, by_output = {}, {}
    for path in paths:
        output = out_dir / output_name(path, format)
        if output in by_output:
            raise SegflowError(
                f"{by_output[output]} and {path} would both be written to {output}; rename one of them"
            )
        by_output[output], outputs[path] = path, output
    inputs = {path.resolve() for path in paths}
    clobbered = sorted(str(output) for output in outputs.values() if output.resolve() in inputs)
    if clobbered:
        raise SegflowError(
            f"the predictions would replace the input images {', '.join(clobbered[:3])}: choose an --out folder"
            " that holds no input image"
        )
    return outputs


def check_image(path: Path) -> None:
    """An 8-bit RGB PNG or JPEG (Cityscapes' leftImg8bit), else SegflowError with the fix: the
    same rule `segflow convert` applies, so what one reads the other reads too."""
    try:
        with Image.open(path) as image:
            mode, kind = image.mode, image.format
    except (OSError, SyntaxError) as error:
        raise SegflowError(f"{path} is not a readable PNG or JPEG image") from error
    if mode != "RGB":
        raise SegflowError(
            f"{path} is a {kind} image in mode {mode} ({_MODE_NAMES.get(mode, mode)}); segflow reads 8-bit RGB photos."
            f" Convert it first, e.g. python -c \"from PIL import Image; Image.open('{path.name}').convert('RGB')"
            f".save('{path.stem}.png')\""
        )


_MODE_NAMES = {"P": "palette", "L": "grayscale", "LA": "grayscale+alpha", "RGBA": "RGB+alpha", "I;16": "16-bit",
               "I": "32-bit integer", "CMYK": "CMYK", "1": "1-bit"}  # fmt: skip


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
