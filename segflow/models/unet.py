"""U-Net: a contracting path of four poolings and an expanding path of up-convolutions that
concatenate the contracting path's features at each scale."""

from __future__ import annotations

import keras

from segflow.models.layers import apply_conv_bn_relu, apply_logits, check_arguments, scaled

# Filters of the five scales; the paper doubles them at every pooling.
LEVEL_FILTERS = (64, 128, 256, 512, 1024)

# === Layers ===


def apply_double_conv(x, filters: int, name: str):
    """Two padded 3×3 conv-BN-ReLU layers: the unit U-Net repeats at every scale."""
    x = apply_conv_bn_relu(x, filters, 3, name=f"{name}_1")
    return apply_conv_bn_relu(x, filters, 3, name=f"{name}_2")


def apply_up_block(x, skip, filters: int, name: str):
    """2×2 up-convolution halving the channels, concatenation with the skip features, and a
    double conv."""
    x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    x = keras.layers.Concatenate(name=f"{name}_concat")([skip, x])
    return apply_double_conv(x, filters, name=name)


# === Functional Model ===


def build_unet(
    num_classes: int = 19,
    input_shape: tuple[int, int, int] = (512, 1024, 3),
    width: float = 1.0,
) -> keras.Model:
    """U-Net (Ronneberger et al. 2015), with padded convolutions and batch norm.

    Four 2×2 max poolings take 64 filters to 1024; four 2×2 up-convolutions come back, each
    followed by concatenation with the same-scale encoder features and two 3×3 convolutions;
    a 1×1 convolution gives the logits. Padding keeps the output the size of the input
    (the paper's unpadded version crops instead); batch norm follows every 3×3 convolution.

    Args:
        num_classes: int, number of classes (logit channels). Defaults to 19.
        input_shape: (height, width, channels); height and width divisible by 32.
        width: float, multiplies every channel count (1.0: 64→1024 filters, ≈31.0 M params).

    Returns:
        A functional `keras.Model` from images to float32 logits at input resolution.

    Example:
    >>> model = build_unet(num_classes=3, input_shape=(64, 128, 3), width=0.125)
    >>> model.output_shape
    (None, 64, 128, 3)

    Paper: https://arxiv.org/abs/1505.04597
    """
    check_arguments("unet", num_classes, input_shape, width)
    filters = [scaled(level_filters, width) for level_filters in LEVEL_FILTERS]

    inputs = keras.Input(input_shape, name="image")
    skips = []
    x = inputs
    for level, level_filters in enumerate(filters[:-1], start=1):
        x = apply_double_conv(x, level_filters, name=f"encoder{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"encoder{level}_pool")(x)
    x = apply_double_conv(x, filters[-1], name="bottleneck")
    for level in reversed(range(1, len(filters))):
        x = apply_up_block(x, skips[level - 1], filters[level - 1], name=f"decoder{level}")
    logits = apply_logits(x, num_classes, input_shape, name="logits")
    return keras.Model(inputs, logits, name="unet")
