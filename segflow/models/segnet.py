"""SegNet: a VGG16 encoder and a mirrored decoder that upsamples with the encoder's
max-pooling indices."""

from __future__ import annotations

import keras

from segflow.models.backbones import check_weights, load_encoder_weights
from segflow.models.layers import (
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    apply_conv_bn_relu,
    apply_logits,
    check_arguments,
    scaled,
)

# The 13 convolutions of VGG16, by stage; each stage ends in a 2×2 max pooling.
ENCODER_FILTERS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# keras.applications.VGG16's convolutions → this encoder's.
VGG16_LAYERS = {
    f"block{stage}_conv{index}": f"encoder{stage}_{index}_conv"
    for stage, filters in enumerate(ENCODER_FILTERS, start=1)
    for index in range(1, len(filters) + 1)
}
# The decoder mirrors it: stage by stage from the deepest, each after an unpooling. The last
# convolution of a stage narrows to the channels of the next (shallower) stage's indices.
DECODER_FILTERS = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))

# === Layers ===


def apply_encoder_stage(x, stage_filters: tuple[int, ...], name: str):
    """Conv-BN-ReLU layers, then 2×2 max pooling; returns the pooled features and the indices."""
    for index, filters in enumerate(stage_filters, start=1):
        x = apply_conv_bn_relu(x, filters, 3, name=f"{name}_{index}")
    return MaxPoolingWithArgmax2D(name=f"{name}_pool")(x)


def apply_decoder_stage(x, indices, stage_filters: tuple[int, ...], name: str):
    """Unpooling with the encoder's indices (sparse map), then conv-BN-ReLU layers (dense)."""
    x = MaxUnpooling2D(name=f"{name}_unpool")([x, indices])
    for index, filters in enumerate(stage_filters, start=1):
        x = apply_conv_bn_relu(x, filters, 3, name=f"{name}_{index}")
    return x


# === Functional Model ===


def build_segnet(
    num_classes: int = 19,
    input_shape: tuple[int, int, int] = (512, 1024, 3),
    width: float = 1.0,
    aux_outputs: bool = False,
    weights: str | None = None,
) -> keras.Model:
    """SegNet (Badrinarayanan et al. 2017).

    The encoder is VGG16's 13 convolutions with batch norm; each of its five 2×2 max
    poolings stores the argmax position of every value. The decoder mirrors the encoder: each
    stage first unpools, putting every value back at its stored position (zeros elsewhere),
    then densifies the sparse map with 3×3 convolutions. A 3×3 convolution gives the logits,
    at full resolution. No learned upsampling and no skip of whole feature maps: only indices
    cross from encoder to decoder.

    Args:
        num_classes: int, number of classes (logit channels). Defaults to 19.
        input_shape: (height, width, channels); height and width divisible by 32.
        width: float, multiplies every channel count (1.0: ≈29.4 M params).
        aux_outputs: bool, accepted for a uniform interface; this model has one output.
        weights: None (random), `"imagenet"` or the path of a keras.applications VGG16
            weights file, for the encoder's 13 convolutions (`block{s}_conv{i}` →
            `encoder{s}_{i}_conv`; kernels only: a batch norm follows each); width 1.0 only.

    Returns:
        A functional `keras.Model` from images to float32 logits at input resolution.

    Example:
    >>> model = build_segnet(num_classes=3, input_shape=(64, 128, 3), width=0.125)
    >>> model.output_shape
    (None, 64, 128, 3)

    Paper: https://arxiv.org/abs/1511.00561
    """
    check_arguments("segnet", num_classes, input_shape, width)
    check_weights("VGG16", weights, width, input_shape)

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    stage_indices = []
    for stage, stage_filters in enumerate(ENCODER_FILTERS, start=1):
        x, indices = apply_encoder_stage(x, [scaled(f, width) for f in stage_filters], name=f"encoder{stage}")
        stage_indices.append(indices)
    for stage, stage_filters in zip(range(len(DECODER_FILTERS), 0, -1), DECODER_FILTERS):
        x = apply_decoder_stage(
            x, stage_indices[stage - 1], [scaled(f, width) for f in stage_filters], name=f"decoder{stage}"
        )
    logits = apply_logits(x, num_classes, input_shape, name="logits", kernel_size=3)
    model = keras.Model(inputs, logits, name="segnet")
    if weights is not None:
        load_encoder_weights(model, "VGG16", weights, VGG16_LAYERS)
    return model
