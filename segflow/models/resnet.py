"""ResNet-18/34/50, dilated to output stride 8 or 16, with an FCN head.

The backbone (`apply_resnet_backbone`) is shared with DeepLabV3+. Its layers carry the names
of `keras.applications.ResNet50`, so ImageNet weights load by name.
"""

from __future__ import annotations

import keras

from segflow.errors import SegflowError
from segflow.models.backbones import check_weights, load_encoder_weights
from segflow.models.layers import apply_logits, check_arguments, scaled

BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
STAGE_FILTERS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
# (stride, dilation) of conv2_x..conv5_x: a stage that would halve the resolution dilates instead.
STAGE_STRIDES_AND_DILATIONS = {
    8: ((1, 1), (2, 1), (1, 2), (1, 4)),
    16: ((1, 1), (2, 1), (2, 1), (1, 2)),
}
# keras.applications' ResNet50 batch-norm epsilon, kept so its weights behave the same here.
BN_EPSILON = 1.001e-5

# === Layers ===


def apply_basic_block(x, filters: int, stride: int, dilation: int, name: str):
    """Two 3×3 convolutions plus the shortcut (ResNet-18/34)."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    x = keras.layers.Conv2D(
        filters, 3, strides=stride, padding="same", dilation_rate=dilation, name=f"{name}_1_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_1_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_2_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def apply_bottleneck_block(x, filters: int, stride: int, dilation: int, name: str):
    """1×1 reduce, 3×3, 1×1 expand to 4×`filters`, plus the shortcut (ResNet-50).

    The stride sits on the first 1×1 convolution, as in the paper and keras.applications.
    """
    out_filters = BOTTLENECK_EXPANSION * filters
    shortcut = x
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = keras.layers.Conv2D(out_filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    x = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_1_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_2_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(out_filters, 1, name=f"{name}_3_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_3_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def apply_resnet_stem(x, width: float):
    """7×7 stride-2 convolution and 3×3 stride-2 max pooling: 1/4 resolution."""
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = keras.layers.Conv2D(scaled(64, width), 7, strides=2, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def apply_resnet_backbone(x, depth: int, output_stride: int, width: float) -> list:
    """The stem and four stages; returns the outputs of conv2_x..conv5_x.

    Their strides are 4, 8, then 16 and 32 capped at `output_stride` (by dilation).
    """
    block = apply_bottleneck_block if depth == 50 else apply_basic_block
    x = apply_resnet_stem(x, width)
    stage_outputs = []
    stages = zip(STAGE_FILTERS, BLOCKS_PER_STAGE[depth], STAGE_STRIDES_AND_DILATIONS[output_stride])
    for stage, (filters, blocks, (stride, dilation)) in enumerate(stages, start=2):
        for index in range(blocks):
            x = block(
                x,
                scaled(filters, width),
                stride=stride if index == 0 else 1,
                dilation=dilation,
                name=f"conv{stage}_block{index + 1}",
            )
        stage_outputs.append(x)
    return stage_outputs


def apply_fcn_head(x, num_classes: int, input_shape: tuple[int, int, int]):
    """FCN head as in torchvision's FCN-ResNet: 3×3 conv to a quarter of the channels, BN,
    ReLU, dropout 0.1, 1×1 classifier, bilinear upsampling to the input size."""
    x = keras.layers.Conv2D(x.shape[-1] // 4, 3, padding="same", use_bias=False, name="fcn_head_conv")(x)
    x = keras.layers.BatchNormalization(name="fcn_head_bn")(x)
    x = keras.layers.ReLU(name="fcn_head_relu")(x)
    x = keras.layers.Dropout(0.1, name="fcn_head_dropout")(x)
    return apply_logits(x, num_classes, input_shape, name="logits")


def check_resnet50_weights(weights: str | None, width: float, input_shape) -> None:
    """Rejects a weights choice that cannot load, before any layer is built."""
    check_weights("ResNet50", weights, width, input_shape)


def load_resnet50_weights(model: keras.Model, weights: str) -> None:
    """Copies ImageNet ResNet-50 weights (`"imagenet"` or a keras.applications weights file)
    into the layers of `model` that carry the same names (`segflow.models.backbones`)."""
    load_encoder_weights(model, "ResNet50", weights)


# === Functional Model ===


def build_resnet(
    num_classes: int = 19,
    input_shape: tuple[int, int, int] = (512, 1024, 3),
    width: float = 1.0,
    depth: int = 50,
    output_stride: int = 8,
    weights: str | None = None,
    aux_outputs: bool = False,
) -> keras.Model:
    """A dilated ResNet with an FCN head (He et al. 2016; Long et al. 2015).

    The last stages trade stride for dilation, so features stay at 1/`output_stride` of the
    input with the receptive field of the full network; an FCN head classifies them and the
    logits are upsampled bilinearly to the input size.

    Args:
        num_classes: int, number of classes (logit channels). Defaults to 19.
        input_shape: (height, width, channels); height and width divisible by 32.
        width: float, multiplies every channel count (1.0 is the published ResNet).
        depth: int, 18, 34 (basic blocks) or 50 (bottleneck blocks). Defaults to 50.
        output_stride: int, 8 or 16: resolution of the last features. Defaults to 8.
        weights: None (random), `"imagenet"` (downloaded by keras.applications) or the path
            of a keras.applications ResNet50 weights file. Only for depth 50, width 1.0. The first
            convolution is adapted to segflow's input normalisation (`segflow.models.backbones`).
        aux_outputs: bool, accepted for a uniform interface; this model has one output.

    Returns:
        A functional `keras.Model` from images to float32 logits at input resolution.

    Example:
    >>> model = build_resnet(num_classes=3, input_shape=(64, 128, 3), width=0.125, depth=18)
    >>> model.output_shape
    (None, 64, 128, 3)

    Papers: https://arxiv.org/abs/1512.03385 (ResNet), https://arxiv.org/abs/1411.4038 (FCN).
    """
    check_arguments("resnet", num_classes, input_shape, width)
    if depth not in BLOCKS_PER_STAGE:
        raise SegflowError(f"resnet: depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth!r}")
    if output_stride not in STAGE_STRIDES_AND_DILATIONS:
        raise SegflowError(f"resnet: output_stride must be 8 or 16, got {output_stride!r}")
    if weights is not None and depth != 50:
        raise SegflowError(f"resnet: ImageNet weights exist for depth 50 only, got depth={depth!r}")
    check_resnet50_weights(weights, width, input_shape)

    inputs = keras.Input(input_shape, name="image")
    features = apply_resnet_backbone(inputs, depth, output_stride, width)[-1]
    logits = apply_fcn_head(features, num_classes, input_shape)
    model = keras.Model(inputs, logits, name=f"resnet{depth}_fcn")
    if weights is not None:
        load_resnet50_weights(model, weights)
    return model
