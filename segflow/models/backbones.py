"""ImageNet encoders from keras.applications, copied into segflow's models by layer name.

`weights` is `"imagenet"` (keras.applications downloads its file) or the path of a
keras.applications weights file of the same network, legacy `.h5` (what keras.applications
downloads, e.g. `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`) or Keras 3
`.weights.h5` (what `model.save_weights` writes).

keras.applications' ResNet50 and VGG16 were trained on "caffe" inputs (BGR, 0–255, minus the
ImageNet mean; `keras.applications.resnet.preprocess_input`), segflow feeds RGB in [0, 1]
normalised by `segflow.augment.MEAN_RGB` / `STDDEV_RGB`. The first convolution is rewritten so
that, on segflow's inputs, it computes what the original computes on caffe inputs: its kernel's
input channels are reordered RGB ← BGR and scaled by 255·std, and the constant part moves into
its bias (VGG16's first convolution in SegNet has no bias: the batch norm right after it removes
a per-channel constant). Every other tensor is copied unchanged.
"""

from __future__ import annotations

import os

import keras

from segflow.errors import SegflowError

# keras.applications.imagenet_utils, mode "caffe": the BGR mean subtracted from 0–255 pixels.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# segflow's input normalisation, `segflow.augment.MEAN_RGB` / `STDDEV_RGB` (ImageNet statistics
# of RGB in [0, 1]), repeated here so that models import no TensorFlow; a test keeps them equal.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)

# Network → (keras.applications constructor name, its first convolution).
ENCODERS = {"ResNet50": "conv1_conv", "VGG16": "block1_conv1"}


def check_weights(network: str, weights: str | None, width: float, input_shape) -> None:
    """Rejects a weights choice that cannot load, before any layer is built."""
    if weights is None:
        return
    if width != 1.0 or input_shape[-1] != 3:
        raise SegflowError(
            f"ImageNet {network} weights need width=1.0 and 3 input channels, "
            f"got width={width!r}, input_shape={tuple(input_shape)!r}"
        )
    if weights != "imagenet" and not os.path.isfile(weights):
        raise SegflowError(f"{network} weights file not found: {weights}")


def load_encoder_weights(model: keras.Model, network: str, weights: str, layer_names: dict[str, str] | None = None) -> None:
    """Copy keras.applications `network`'s weights into the layers of `model` named like them
    (or as `layer_names` maps them), with the first convolution adapted to segflow's input
    normalisation (see the module docstring).

    Raises:
        SegflowError: the file is not a weights file of `network`; the message names the
            first layer that does not match.
    """
    reference = _reference(network, weights)
    layer_names = layer_names or {}
    first = ENCODERS[network]
    for layer in reference.layers:
        if not layer.weights:
            continue
        target_name = layer_names.get(layer.name, layer.name)
        try:
            target = model.get_layer(target_name)
        except ValueError:
            raise SegflowError(f"{model.name} has no layer {target_name!r} for {network}'s {layer.name!r}") from None
        values = layer.get_weights()
        if layer.name == first:
            values = _adapt_first_convolution(*values)
        try:
            target.set_weights(values[: len(target.weights)])
        except ValueError as error:
            raise SegflowError(f"{network}'s layer {layer.name!r} does not fit {model.name}'s {target_name!r}: {error}") from None


def _reference(network: str, weights: str) -> keras.Model:
    """keras.applications `network` without its classifier, holding `weights`."""
    constructor = getattr(keras.applications, network)
    if weights == "imagenet":
        return constructor(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    reference = constructor(include_top=False, weights=None, input_shape=(None, None, 3))
    try:
        reference.load_weights(weights)
    except Exception as error:  # Keras raises ValueError, h5py OSError/KeyError: all mean "does not fit"
        message = str(error).strip()
        # Keras names the first layer that failed as "<Conv2D name=conv1_conv, built=True>".
        layer = message.partition("name=")[2].split(",")[0].split(">")[0].strip()
        named = f"first mismatching layer {layer!r}" if layer else "its layers do not match"
        detail = message.splitlines()[-1][:300] if message else type(error).__name__
        raise SegflowError(f"{weights} is not a keras.applications {network} weights file: {named} ({detail})") from None
    return reference


def _adapt_first_convolution(kernel, bias=None) -> list:
    """Kernel and bias that give, on segflow-normalised RGB, the original outputs on caffe BGR.

    caffe[k] = 255·(std[c]·x[c] + mean[c]) − CAFFE_MEAN_BGR[k] with c = 2 − k, so
    kernel'[..., c, :] = 255·std[c]·kernel[..., 2 − c, :] and
    bias' = bias + Σ kernel[..., 2 − c, :]·(255·mean[c] − CAFFE_MEAN_BGR[2 − c]).
    """
    ops = keras.ops
    rgb_kernel = ops.flip(ops.cast(kernel, "float64"), axis=2)
    scale = ops.convert_to_tensor([255.0 * std for std in STDDEV_RGB], dtype="float64")
    offset = ops.convert_to_tensor(
        [255.0 * mean - caffe for mean, caffe in zip(MEAN_RGB, reversed(CAFFE_MEAN_BGR))], dtype="float64"
    )
    new_kernel = rgb_kernel * ops.reshape(scale, (1, 1, 3, 1))
    shift = ops.einsum("hwco,c->o", rgb_kernel, offset)
    new_bias = shift if bias is None else ops.cast(bias, "float64") + shift
    return [ops.convert_to_numpy(ops.cast(tensor, kernel.dtype)) for tensor in (new_kernel, new_bias)]
