"""DeepLabV3+: ResNet-50 at output stride 16, atrous spatial pyramid pooling, and a decoder
that refines the result with stride-4 features."""

from __future__ import annotations

import keras

from segflow.models.layers import apply_conv_bn_relu, apply_logits, check_arguments, scaled
from segflow.models.resnet import apply_resnet_backbone, check_resnet50_weights, load_resnet50_weights

ASPP_RATES = (6, 12, 18)
ASPP_FILTERS = 256
LOW_LEVEL_FILTERS = 48
DECODER_FILTERS = 256

# === Layers ===


def apply_aspp(x, filters: int, rates: tuple[int, ...]):
    """Atrous spatial pyramid pooling: a 1×1 conv, one 3×3 conv per dilation rate, and image
    pooling, concatenated and projected back to `filters` channels."""
    height, width = x.shape[1], x.shape[2]
    branches = [apply_conv_bn_relu(x, filters, 1, name="aspp_1x1")]
    for rate in rates:
        branches.append(apply_conv_bn_relu(x, filters, 3, dilation_rate=rate, name=f"aspp_rate{rate}"))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_image_pool")(x)
    pooled = apply_conv_bn_relu(pooled, filters, 1, name="aspp_image_pool_proj")
    pooled = keras.layers.UpSampling2D((height, width), name="aspp_image_pool_upsample")(pooled)
    branches.append(pooled)
    x = keras.layers.Concatenate(name="aspp_concat")(branches)
    x = apply_conv_bn_relu(x, filters, 1, name="aspp_proj")
    return keras.layers.Dropout(0.1, name="aspp_dropout")(x)


def apply_decoder(x, low_level, low_level_filters: int, filters: int):
    """Upsamples the ASPP output to the stride-4 features, concatenates their 1×1 projection,
    and refines with two 3×3 convolutions."""
    low_level = apply_conv_bn_relu(low_level, low_level_filters, 1, name="decoder_low_level")
    factor = (low_level.shape[1] // x.shape[1], low_level.shape[2] // x.shape[2])
    x = keras.layers.UpSampling2D(factor, interpolation="bilinear", name="decoder_upsample")(x)
    x = keras.layers.Concatenate(name="decoder_concat")([x, low_level])
    x = apply_conv_bn_relu(x, filters, 3, name="decoder_conv1")
    return apply_conv_bn_relu(x, filters, 3, name="decoder_conv2")


# === Functional Model ===


def build_deeplabv3plus(
    num_classes: int = 19,
    input_shape: tuple[int, int, int] = (512, 1024, 3),
    width: float = 1.0,
    weights: str | None = None,
    aux_outputs: bool = False,
) -> keras.Model:
    """DeepLabV3+ with a ResNet-50 encoder (Chen et al. 2018).

    The encoder is ResNet-50 dilated to output stride 16; ASPP (rates 6, 12, 18 and image
    pooling, 256 channels) adds context at several scales; the decoder upsamples by 4, joins
    the 48-channel projection of the stride-4 features (conv2_x) and refines with two 3×3
    convolutions before the classifier and a final ×4 bilinear upsampling. Convolutions are
    the plain (not separable) ones the paper uses with its ResNet backbone.

    Args:
        num_classes: int, number of classes (logit channels). Defaults to 19.
        input_shape: (height, width, channels); height and width divisible by 32.
        width: float, multiplies every channel count (1.0 is the published model).
        weights: None (random), `"imagenet"` or the path of a keras.applications ResNet50
            weights file, for the encoder; width 1.0 only. The first convolution is adapted to
            segflow's input normalisation (`segflow.models.backbones`).
        aux_outputs: bool, accepted for a uniform interface; this model has one output.

    Returns:
        A functional `keras.Model` from images to float32 logits at input resolution.

    Example:
    >>> model = build_deeplabv3plus(num_classes=3, input_shape=(64, 128, 3), width=0.125)
    >>> model.output_shape
    (None, 64, 128, 3)

    Paper: https://arxiv.org/abs/1802.02611
    """
    check_arguments("deeplabv3plus", num_classes, input_shape, width)
    check_resnet50_weights(weights, width, input_shape)

    inputs = keras.Input(input_shape, name="image")
    stride4, _, _, features = apply_resnet_backbone(inputs, depth=50, output_stride=16, width=width)
    x = apply_aspp(features, scaled(ASPP_FILTERS, width), ASPP_RATES)
    x = apply_decoder(x, stride4, scaled(LOW_LEVEL_FILTERS, width), scaled(DECODER_FILTERS, width))
    logits = apply_logits(x, num_classes, input_shape, name="logits")
    model = keras.Model(inputs, logits, name="deeplabv3plus")
    if weights is not None:
        load_resnet50_weights(model, weights)
    return model
