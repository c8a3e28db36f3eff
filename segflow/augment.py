"""Per-example parsing: decoded record features in, `(image, label)` tensors out.

`parse_train` decodes then augments (`augment_train`: random scale, crop padded with ignore,
flip, photometric jitter; it also takes already decoded uint8 tensors, e.g. from a cache);
`parse_eval` only decodes and normalises, so evaluation sees every pixel of the stored label.
`augment_train(for_device=True)` stops before colour jitter and normalisation and hands over
uint8 crops with the per-example random values, for `segflow.device_augment` to finish inside
the training step on the accelerator.
Both are pure functions of their inputs (randomness comes from an explicit stateless seed), which
is what makes `segflow.input_pipeline.make_dataset` reproducible. As in TF Model Garden's segmentation
parser, the image and the label always move together and labels are resized `nearest`.

Outputs, for both functions:
- image: float32 `[H, W, 3]`, RGB scaled to [0, 1] then normalised with the ImageNet `MEAN_RGB`
  and `STDDEV_RGB`; padding is 0 (the mean colour).
- label: int32 `[H, W]` of trainIds 0..18, `IGNORE_LABEL` (255) where the pixel is void or
  padding; ready for `keras.losses.SparseCategoricalCrossentropy(ignore_class=255)`.
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from segflow.cityscapes import IGNORE_LABEL
from segflow.errors import SegflowError
from segflow.records import FEATURE_KEYS

# ImageNet statistics for RGB in [0, 1], as used by ImageNet-pretrained backbones.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)

SCALE_RANGE = (0.5, 2.0)
# Modest photometric jitter: brightness in [0, 1] colour units, contrast and saturation as
# factors, hue as a fraction of a full turn of the colour wheel.
BRIGHTNESS_MAX_DELTA = 0.125
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_MAX_DELTA = 0.02
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B in a pixel's grey

# `augment_train(for_device=True)`: the keys of its inputs for `segflow.device_augment`.
DEVICE_IMAGE = "image"
DEVICE_PARAMETERS = "augment"
NUM_DEVICE_PARAMETERS = 15  # colour matrix 3x3, contrast, brightness, box of real pixels (4)


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """Map RGB in [0, 1] to zero mean, unit variance per channel (ImageNet statistics)."""
    return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def _normalize_on_cpu(image: tf.Tensor) -> tf.Tensor:
    """`normalize_image` as one `[pixels, 3] @ [3, 3]` matmul and a `bias_add`, for tf.data
    (which runs on the CPU): TF's CPU kernels broadcast over a last axis of 3 several times
    slower (12.9 vs ~4 ms for a 512x1024 crop, benchmarks/bench_input.py). Not for GPUs, where
    TF32 matmuls would round the result."""
    stddev = tf.constant(STDDEV_RGB)
    pixels = tf.reshape(image, [-1, 3]) @ tf.linalg.diag(1.0 / stddev)
    return tf.reshape(tf.nn.bias_add(pixels, -tf.constant(MEAN_RGB) / stddev), tf.shape(image))


def denormalize_image(image: tf.Tensor) -> tf.Tensor:
    """Inverse of `normalize_image`, clipped to [0, 1]: for showing an input to a person."""
    return tf.clip_by_value(image * tf.constant(STDDEV_RGB) + tf.constant(MEAN_RGB), 0.0, 1.0)


def decode_image(features: dict[str, tf.Tensor]) -> tf.Tensor:
    """The RGB image as uint8 `[H, W, 3]`."""
    return tf.io.decode_png(features[FEATURE_KEYS.image], channels=3)


def decode_label(features: dict[str, tf.Tensor]) -> tf.Tensor:
    """The trainId label as uint8 `[H, W, 1]`."""
    return tf.io.decode_png(features[FEATURE_KEYS.label], channels=1)


def parse_eval(
    features: dict[str, tf.Tensor], resize: tuple[int, int] | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode and normalise, with no randomness.

    Args:
        features: the dict from `segflow.records.decode_example`.
        resize: optional `(height, width)`; the image is resized bilinear and the label nearest.
            Leave it None to evaluate at full label resolution.

    Returns:
        `(image, label)`: float32 `[H, W, 3]` normalised, int32 `[H, W]` (255 = ignore).
    """
    image = tf.image.convert_image_dtype(decode_image(features), tf.float32)
    label = decode_label(features)
    if resize is not None:
        size = _check_size("resize", resize)
        image = tf.image.resize(image, size, method="bilinear")
        label = tf.image.resize(label, size, method="nearest")
    return _normalize_on_cpu(image), tf.cast(label[:, :, 0], tf.int32)


def parse_train(
    features: dict[str, tf.Tensor],
    crop_size: tuple[int, int],
    scale_range: tuple[float, float] = SCALE_RANGE,
    resize: tuple[int, int] | None = None,
    seed: tf.Tensor | None = None,
    photometric: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode a record's two PNGs, then `augment_train` them (see there for every argument).

    Args:
        features: the dict from `segflow.records.decode_example`.

    Returns:
        `(image, label)`: float32 `[*crop_size, 3]` normalised, int32 `crop_size` (255 = ignore).
    """
    return augment_train(
        decode_image(features), decode_label(features), crop_size, scale_range, resize, seed, photometric
    )


def augment_train(
    image: tf.Tensor,
    label: tf.Tensor,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float] = SCALE_RANGE,
    resize: tuple[int, int] | None = None,
    seed: tf.Tensor | None = None,
    photometric: bool = True,
    for_device: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, random crop (padded with ignore), horizontal flip, colour jitter, normalise.

    The image is first given the base size `resize` (default: its own size), then scaled by a
    factor drawn uniformly from `scale_range` (image bilinear, label nearest), then a `crop_size`
    window is taken at a random offset. Where the scaled image is smaller than the crop it sits
    at a random place inside it; the rest is padding: image 0 (the mean colour after
    normalisation) and label `IGNORE_LABEL`. Scale and crop are done in one resampling step
    (`tf.image.crop_and_resize` over only the window), so the cost follows the crop size, not
    the scaled image. The result equals `tf.image.resize` of the whole image then cropping (for
    the label, up to which neighbour a sample exactly halfway between two pixels takes).

    Args:
        image: the decoded RGB image, uint8 `[H, W, 3]` (`decode_image`).
        label: the decoded trainIds, uint8 `[H, W, 1]` (`decode_label`).
        crop_size: `(height, width)` of the output.
        scale_range: `(min, max)` scale factor, applied to the base size.
        resize: optional base `(height, width)` before scaling, e.g. `(64, 128)` to train tiny
            models on full-size records.
        seed: stateless seed, an int tensor of shape `[2]`; the same seed gives the same output.
            None draws one at random (not reproducible).
        photometric: whether to jitter brightness, contrast, saturation and hue.
        for_device: leave colour jitter and normalisation to the training step
            (`segflow.device_augment`, on the accelerator): the crop is rounded to uint8 (at most
            half a level, 0.5 / 255, from the float crop) and returned with the per-example
            colour map and where the padding is; same seed, same random values.

    Returns:
        `(image, label)`: float32 `[*crop_size, 3]` normalised, int32 `crop_size` (255 = ignore).
        With `for_device`: `({DEVICE_IMAGE: uint8 [*crop_size, 3] (padding 0),
        DEVICE_PARAMETERS: float32 [15]}, uint8 label)`; the 15 floats are the colour matrix
        (3x3, row-major), contrast, brightness, then the box of real pixels in the output
        (top, left, height, width), see `segflow.device_augment`.
    """
    crop_height, crop_width = _check_size("crop_size", crop_size)
    min_scale, max_scale = float(scale_range[0]), float(scale_range[1])
    if not 0 < min_scale <= max_scale:
        raise SegflowError(f"scale_range must satisfy 0 < min <= max, got {scale_range!r}")
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    scale_seed, crop_y_seed, crop_x_seed, flip_seed, color_seed = tf.unstack(
        tf.random.split(tf.cast(seed, tf.int64), num=5)
    )

    source_size = tf.shape(image)[:2]
    base_size = source_size if resize is None else tf.constant(_check_size("resize", resize))
    scale = tf.random.stateless_uniform([], scale_seed, minval=min_scale, maxval=max_scale)
    scaled_size = tf.maximum(tf.cast(tf.round(tf.cast(base_size, tf.float32) * scale), tf.int32), 1)

    y_window = _crop_window(scaled_size[0], crop_height, crop_y_seed)
    x_window = _crop_window(scaled_size[1], crop_width, crop_x_seed)
    image, label = _scale_and_crop(image, label, source_size, scaled_size, y_window, x_window)
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    if for_device:
        return _for_device(image, label, (crop_height, crop_width), y_window, x_window, flip, color_seed, photometric)

    image = image / 255.0
    if photometric:
        image = _jitter_colors(image, color_seed)
    image = _normalize_on_cpu(image)

    # Pad after normalising, so padded image pixels are exactly 0; the label is shifted by -255
    # around its zero padding, so padded label pixels are exactly 255.
    (_, pad_top, _), (_, pad_left, _) = y_window, x_window
    image = tf.image.pad_to_bounding_box(image, pad_top, pad_left, crop_height, crop_width)
    label = _pad_label(label, pad_top, pad_left, crop_height, crop_width)

    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, axis=[1]), lambda: label)

    image = tf.ensure_shape(image, (crop_height, crop_width, 3))
    label = tf.ensure_shape(label[:, :, 0], (crop_height, crop_width))
    return image, label


def _for_device(image, label, crop_size, y_window, x_window, flip, color_seed, photometric):
    """The rest of `augment_train(for_device=True)` after the scaled crop (float `image`, int32
    `label`): round, pad, flip, and the colour map and valid box as `DEVICE_PARAMETERS` floats."""
    crop_height, crop_width = crop_size
    (_, pad_top, height), (_, pad_left, width) = y_window, x_window
    # Bilinear samples of uint8 values lie in [0, 255]: + 0.5 and truncation round them.
    image = tf.cast(image + 0.5, tf.uint8)
    image = tf.image.pad_to_bounding_box(image, pad_top, pad_left, crop_height, crop_width)
    label = _pad_label(label, pad_top, pad_left, crop_height, crop_width)
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, axis=[1]), lambda: label)
    left = tf.where(flip, crop_width - pad_left - width, pad_left)

    if photometric:
        matrix, contrast, brightness = _jitter_parameters(color_seed)
    else:  # the identity map: x @ I + (1 - 1) * grey + 0 = x exactly
        matrix, contrast, brightness = tf.eye(3), tf.constant(1.0), tf.constant(0.0)
    box = tf.cast(tf.stack([pad_top, left, height, width]), tf.float32)
    parameters = tf.concat([tf.reshape(matrix, [9]), tf.stack([contrast, brightness]), box], axis=0)

    image = tf.ensure_shape(image, (crop_height, crop_width, 3))
    label = tf.ensure_shape(tf.cast(label[:, :, 0], tf.uint8), (crop_height, crop_width))
    return {DEVICE_IMAGE: image, DEVICE_PARAMETERS: parameters}, label


def _pad_label(label: tf.Tensor, top, left, height: int, width: int) -> tf.Tensor:
    """Pad an int32 label with `IGNORE_LABEL` (shifted by -255 around the zero padding)."""
    return tf.image.pad_to_bounding_box(label - IGNORE_LABEL, top, left, height, width) + IGNORE_LABEL


def _crop_window(scaled: tf.Tensor, crop: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Along one axis: a random `crop`-long window over the `scaled`-long image.

    Returns `(valid_start, pad_before, valid_length)`: the part of the image inside the window
    (in scaled coordinates) and where it lands in the output. When the image is longer than the
    crop the window lies inside it; when shorter, the image lies inside the window.
    """
    slack = scaled - crop
    offset = tf.random.stateless_uniform(
        [], seed, minval=tf.minimum(slack, 0), maxval=tf.maximum(slack, 0) + 1, dtype=tf.int32
    )
    valid_start = tf.maximum(offset, 0)
    valid_end = tf.minimum(offset + crop, scaled)
    return valid_start, valid_start - offset, valid_end - valid_start


def _scale_and_crop(image, label, source_size, scaled_size, y_window, x_window):
    """Resample the valid window of the scaled image straight from the source.

    Output pixel `i` of an axis scaled from `n` to `m` samples the source at
    `(start + i + 0.5) * n / m - 0.5` (half-pixel centres, as `tf.image.resize`). Those points lie
    in [-0.5, n - 0.5]; a one-pixel edge padding of the source keeps them inside, which makes the
    edges clamp like `tf.image.resize` instead of reading `crop_and_resize`'s extrapolation value.
    """
    (y_start, _, y_length), (x_start, _, x_length) = y_window, x_window
    source = tf.cast(source_size, tf.float32)
    step = source / tf.cast(scaled_size, tf.float32)
    first = (tf.cast(tf.stack([y_start, x_start]), tf.float32) + 0.5) * step - 0.5
    last = first + tf.cast(tf.stack([y_length, x_length]) - 1, tf.float32) * step
    # Normalised box coordinates in the padded source (size n + 2, so the divisor is n + 1).
    box = tf.concat([(first + 1.0) / (source + 1.0), (last + 1.0) / (source + 1.0)], axis=0)
    boxes, box_indices = box[tf.newaxis], tf.zeros([1], tf.int32)
    window_size = tf.stack([y_length, x_length])

    image = tf.image.crop_and_resize(
        _repeat_edges(image)[tf.newaxis], boxes, box_indices, window_size, method="bilinear"
    )[0]
    label = tf.image.crop_and_resize(
        _repeat_edges(label)[tf.newaxis], boxes, box_indices, window_size, method="nearest"
    )[0]
    return image, tf.cast(label, tf.int32)


def _repeat_edges(image: tf.Tensor) -> tf.Tensor:
    """Pad by one pixel that repeats the border (`tf.concat`: ~20x faster than mirror `tf.pad`)."""
    image = tf.concat([image[:1], image, image[-1:]], axis=0)
    return tf.concat([image[:, :1], image, image[:, -1:]], axis=1)


def _jitter_colors(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue of an RGB image in [0, 1].

    All four are affine maps of RGB, so they are composed into one 3x3 matrix and an offset and
    applied in a single pass (the HSV round trips of `tf.image.random_saturation`/`_hue` cost
    several times more); `_jitter_parameters` draws them. `segflow.device_augment` applies the
    same map inside the training step.
    """
    matrix, contrast, brightness = _jitter_parameters(seed)
    # Saturation and hue keep greys grey, so contrast's mean grey can be taken before them.
    mean_grey = tf.tensordot(tf.reduce_mean(image, axis=[0, 1]), tf.constant(LUMA), 1)
    offset = (1.0 - contrast) * mean_grey + brightness

    pixels = tf.reshape(image, [-1, 3]) @ matrix + offset
    return tf.clip_by_value(tf.reshape(pixels, tf.shape(image)), 0.0, 1.0)


def _jitter_parameters(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The random colour map of `_jitter_colors`: float32 `(matrix [3, 3], contrast, brightness)`.

    A pixel row `x` in [0, 1] becomes `x @ matrix + (1 - contrast) * mean grey + brightness`,
    clipped to [0, 1]. Brightness adds a delta; contrast scales the distance from the image's
    mean grey; saturation blends with the pixel's grey (ITU-R 601 luma); hue rotates the chroma
    plane of YIQ, the linear stand-in for a hue shift.
    """
    brightness_seed, contrast_seed, saturation_seed, hue_seed = tf.unstack(tf.random.split(seed, num=4))
    uniform = tf.random.stateless_uniform
    brightness = uniform([], brightness_seed, -BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA)
    contrast = uniform([], contrast_seed, *CONTRAST_RANGE)
    saturation = uniform([], saturation_seed, *SATURATION_RANGE)
    angle = uniform([], hue_seed, -HUE_MAX_DELTA, HUE_MAX_DELTA) * 2.0 * math.pi

    # Row-vector convention: a pixel is a row `x`, the transform is `x @ matrix + offset`.
    luma = tf.constant(LUMA)
    saturation_matrix = saturation * tf.eye(3) + (1.0 - saturation) * luma[:, tf.newaxis] * tf.ones([1, 3])
    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = tf.stack([[1.0, 0.0, 0.0], [0.0, cos, sin], [0.0, -sin, cos]])
    rgb_to_yiq = tf.image.rgb_to_yiq(tf.eye(3))
    hue_matrix = rgb_to_yiq @ rotation @ tf.linalg.inv(rgb_to_yiq)
    return contrast * saturation_matrix @ hue_matrix, contrast, brightness


def _check_size(name: str, size) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(side, numbers.Integral) and side >= 1 for side in size):
        raise SegflowError(f"{name} must be (height, width) of positive integers, got {size!r}")
    return int(size[0]), int(size[1])
