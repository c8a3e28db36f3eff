"""Colour jitter and normalisation inside the training step, on the accelerator.

With `augment_on_device`, the tf.data pipeline does only what must be done per example on the
CPU (decode, random scale and crop, padding, flip: `segflow.augment.augment_train(for_device=True)`)
and hands over uint8 crops with 15 floats per example: the colour map it drew from the
example's stateless seed and the box of real (not padded) pixels. `JitterAndNormalize`, the
first layer of the training model (`with_device_augment`), then does what
`augment._jitter_colors` and `augment._normalize_on_cpu` do on the CPU path:

    x = uint8 / 255;  y = clip(x @ matrix + (1 - contrast) * mean grey + brightness, 0, 1)
    out = (y - MEAN_RGB) / STDDEV_RGB inside the box, 0 (the mean colour) in the padding

where the mean grey is taken over the box only, as the CPU path takes it over the crop before
padding. Same seed, same values: the only difference from the CPU path is the rounding of the
bilinear crop to uint8 (at most 0.5 / 255 before normalisation; `tests/test_augment.py`). The
batches also cross to the device as 4 bytes per pixel (uint8 RGB + uint8 label) instead of 16
(float32 RGB + int32 label).

Only the training model has this layer: validation, `model.keras`, the SavedModel and
`segflow predict` use models built by `segflow.train.build_inference_model`, which take
normalised float32 images as before. keras.ops only, so the layer runs on any Keras backend;
the 3x3 map is three broadcast multiply-adds, not a matmul, so that TF32 matmuls on GPUs do not
round it.
"""

from __future__ import annotations

import keras
from keras import ops

from segflow.augment import DEVICE_IMAGE, DEVICE_PARAMETERS, LUMA, MEAN_RGB, NUM_DEVICE_PARAMETERS, STDDEV_RGB


class JitterAndNormalize(keras.layers.Layer):
    """uint8 crops and their colour maps in, normalised float32 images out (module docstring).

    Inputs: a dict `{DEVICE_IMAGE: uint8 [B, H, W, 3], DEVICE_PARAMETERS: float32 [B, 15]}` from
    `segflow.input_pipeline.make_dataset(augment_on_device=True)`. Output: float32 `[B, H, W, 3]`.
    Always computes in float32 (also under a mixed-precision policy). No weights.

    Example:
        layer = JitterAndNormalize()
        images = layer({"image": uint8_crops, "augment": parameters})
    """

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, inputs):
        image = ops.cast(inputs[DEVICE_IMAGE], "float32") / 255.0
        parameters = ops.cast(inputs[DEVICE_PARAMETERS], "float32")
        height, width = ops.shape(image)[1], ops.shape(image)[2]
        matrix = ops.reshape(parameters[:, :9], (-1, 1, 1, 3, 3))
        contrast, brightness = parameters[:, 9], parameters[:, 10]
        top, left, box_height, box_width = (parameters[:, index, None] for index in range(11, 15))

        rows = ops.cast(ops.arange(height), "float32")[None, :]
        columns = ops.cast(ops.arange(width), "float32")[None, :]
        in_rows = ops.logical_and(rows >= top, rows < top + box_height)  # [B, H]
        in_columns = ops.logical_and(columns >= left, columns < left + box_width)  # [B, W]
        inside = ops.logical_and(in_rows[:, :, None], in_columns[:, None, :])[..., None]  # [B, H, W, 1]

        real_pixels = box_height[:, 0] * box_width[:, 0]
        mean_rgb = ops.sum(ops.where(inside, image, 0.0), axis=(1, 2)) / real_pixels[:, None]  # [B, 3]
        mean_grey = ops.sum(mean_rgb * ops.convert_to_tensor(LUMA, "float32"), axis=-1)
        offset = ((1.0 - contrast) * mean_grey + brightness)[:, None, None, None]
        jittered = offset + sum(image[..., channel, None] * matrix[..., channel, :] for channel in range(3))
        jittered = ops.clip(jittered, 0.0, 1.0)

        mean = ops.convert_to_tensor(MEAN_RGB, "float32")
        stddev = ops.convert_to_tensor(STDDEV_RGB, "float32")
        return ops.where(inside, (jittered - mean) / stddev, 0.0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[DEVICE_IMAGE])


def with_device_augment(model: keras.Model) -> keras.Model:
    """`model` (float32 normalised images `[B, H, W, 3]` in) behind a `JitterAndNormalize`
    layer: a model that takes `{DEVICE_IMAGE: uint8 [B, H, W, 3], DEVICE_PARAMETERS: float32
    [B, 15]}` and gives `model`'s outputs. `model` is nested as one layer, so its layers and
    weights are the same objects (`segflow.train.copy_weights` finds them by name)."""
    height, width = model.input_shape[1:3]
    inputs = {
        DEVICE_IMAGE: keras.Input((height, width, 3), dtype="uint8", name=DEVICE_IMAGE),
        DEVICE_PARAMETERS: keras.Input((NUM_DEVICE_PARAMETERS,), dtype="float32", name=DEVICE_PARAMETERS),
    }
    images = JitterAndNormalize(name="jitter_and_normalize")(inputs)
    return keras.Model(inputs, model(images), name=f"{model.name}_augment_on_device")
