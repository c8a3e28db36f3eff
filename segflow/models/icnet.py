"""ICNet: three resolutions of one image, fused by cascade feature fusion, with cascade label
guidance for training."""

from __future__ import annotations

import keras

from segflow.models.layers import GridAveragePooling2D, apply_conv_bn_relu, apply_logits, check_arguments, scaled
from segflow.models.resnet import apply_bottleneck_block, apply_resnet_stem, check_resnet50_weights, load_resnet50_weights

# The released ICNet keeps half the kernels of PSPNet's ResNet-50 (the paper's "model
# compression", kernel keeping rate 0.5): bottleneck widths 32/64/128/256 (outputs
# 128/256/512/1024) instead of 64/128/256/512. (filters, blocks, dilation) per stage.
STAGES = {"conv2": (32, 3, 1), "conv3": (64, 4, 1), "conv4": (128, 6, 2), "conv5": (256, 3, 4)}
# MMSeg's ImageNet-initialised ICNet (configs/_base_/models/icnet_r50-d8.py: a full ResNet-50,
# layer_channels=(512, 2048)) keeps all the kernels: twice the widths above.
FULL_RESNET50_WIDTH = 2.0
PYRAMID_BINS = (1, 2, 3, 6)
CFF_FILTERS = 128

# === Layers ===


def apply_deep_stem(x, width: float):
    """PSPNet's stem: three 3×3 convolutions (the first with stride 2) and a 3×3 stride-2 max
    pooling, in place of ResNet's single 7×7 convolution."""
    x = apply_conv_bn_relu(x, scaled(32, width), 3, strides=2, name="conv1_1")
    x = apply_conv_bn_relu(x, scaled(32, width), 3, name="conv1_2")
    x = apply_conv_bn_relu(x, scaled(64, width), 3, name="conv1_3")
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def apply_stage(x, stage: str, width: float, first_block: int = 1, last_block: int | None = None):
    """Bottleneck blocks `first_block`..`last_block` of one dilated ResNet stage."""
    filters, blocks, dilation = STAGES[stage]
    for index in range(first_block, (last_block or blocks) + 1):
        stride = 2 if index == 1 and stage == "conv3" else 1
        x = apply_bottleneck_block(x, scaled(filters, width), stride, dilation, name=f"{stage}_block{index}")
    return x


def apply_pyramid_pooling(x, bins: tuple[int, ...]):
    """ICNet's pyramid pooling: average-pool to each bins×bins grid, resize back bilinearly,
    and add to the features (the released model sums; PSPNet concatenates)."""
    height, width = x.shape[1], x.shape[2]
    pooled = [x]
    for size in bins:
        y = GridAveragePooling2D(size, name=f"pyramid_pool{size}")(x)
        pooled.append(keras.layers.Resizing(height, width, name=f"pyramid_pool{size}_resize")(y))
    return keras.layers.Add(name="pyramid_sum")(pooled)


def apply_cascade_feature_fusion(low, high, filters: int, name: str):
    """Cascade feature fusion (paper Fig. 3): upsample the low-resolution features by 2,
    dilated 3×3 conv; project the high-resolution features with a 1×1 conv; add; ReLU.

    Returns the fused features and the upsampled low-resolution features, on which the
    cascade label guidance classifier sits.
    """
    upsampled = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_upsample")(low)
    low = apply_conv_bn_relu(upsampled, filters, 3, dilation_rate=2, activation=False, name=f"{name}_low")
    high = apply_conv_bn_relu(high, filters, 1, activation=False, name=f"{name}_high")
    fused = keras.layers.Add(name=f"{name}_add")([low, high])
    return keras.layers.ReLU(name=f"{name}_relu")(fused), upsampled


# === Functional Model ===


def build_icnet(
    num_classes: int = 19,
    input_shape: tuple[int, int, int] = (512, 1024, 3),
    width: float = 1.0,
    aux_outputs: bool = False,
    weights: str | None = None,
) -> keras.Model:
    """ICNet, the image cascade network (Zhao et al. 2018).

    Three branches see the image at 1/4, 1/2 and full resolution. The 1/2 image goes through
    PSPNet's ResNet-50 up to conv3_1 (1/16). As the paper puts it, the 1/4 branch shares those
    weights and that computation: like the authors' released model, it continues from conv3_1
    downsampled by 2, instead of running conv1-conv3_1 again on a 1/4 image, through dilated
    conv3_2-conv5_3 and pyramid pooling (1/32). The full image goes through three stride-2
    3×3 convolutions (1/8).
    Cascade feature fusion joins 1/32 with 1/16, then the result with 1/8; the classifier works
    at 1/4 and its logits are upsampled by 4.

    Cascade label guidance: with `aux_outputs=True` the model returns
    `[logits, aux_1_8, aux_1_16]`, the classifiers on the 1/8 and 1/16 fusion inputs, each
    upsampled to the input size so the same labels apply; weight their losses with
    `segflow.models.LOSS_WEIGHTS["icnet"]` (1.0, 0.4, 0.16). At inference use only the first
    output (`segflow.models.inference_model`).

    Args:
        num_classes: int, number of classes (logit channels). Defaults to 19.
        input_shape: (height, width, channels); height and width divisible by 32.
        width: float, multiplies every channel count (1.0 is the released, half-kernel ICNet).
        aux_outputs: bool, add the two cascade label guidance outputs. Defaults to False.
        weights: None (random init: the released half-kernel, deep-stem encoder), `"imagenet"` or
            the path of a keras.applications ResNet50 weights file: then the encoder is the full
            ResNet-50 that MMSeg's ImageNet-initialised ICNet uses (configs/_base_/models/
            icnet_r50-d8.py, layer_channels=(512, 2048); icnet_r50-d8-in1k-pre_*), with
            keras.applications' 7×7 stem in place of MMSeg's resnet50_v1c deep stem, since that
            is the stem the weights file has. Needs width 1.0; the first convolution is adapted
            to segflow's input normalisation (`segflow.models.backbones`).

    Returns:
        A functional `keras.Model` from images to float32 logits at input resolution (a list
        of three such outputs with `aux_outputs=True`).

    Example:
    >>> model = build_icnet(num_classes=3, input_shape=(64, 128, 3), width=0.125, aux_outputs=True)
    >>> [shape[1:] for shape in model.output_shape]
    [(64, 128, 3), (64, 128, 3), (64, 128, 3)]

    Paper: https://arxiv.org/abs/1704.08545
    """
    check_arguments("icnet", num_classes, input_shape, width)
    check_resnet50_weights(weights, width, input_shape)

    inputs = keras.Input(input_shape, name="image")
    # 1/2 branch: a 2×2 average is bilinear downsampling by 2 (half-pixel centres).
    image_half = keras.layers.AveragePooling2D(2, name="image_half")(inputs)
    if weights is None:
        x, encoder_width = apply_deep_stem(image_half, width), width
    else:  # keras.applications' ResNet-50, whose layer names the stages below share
        x, encoder_width = apply_resnet_stem(image_half, width), FULL_RESNET50_WIDTH * width
    x = apply_stage(x, "conv2", encoder_width)
    conv3_1 = apply_stage(x, "conv3", encoder_width, last_block=1)

    # 1/4 branch, from the shared conv3_1.
    x = keras.layers.AveragePooling2D(2, name="conv3_1_quarter")(conv3_1)
    x = apply_stage(x, "conv3", encoder_width, first_block=2)
    x = apply_stage(x, "conv4", encoder_width)
    x = apply_stage(x, "conv5", encoder_width)
    x = apply_pyramid_pooling(x, PYRAMID_BINS)
    x = apply_conv_bn_relu(x, scaled(256, width), 1, name="conv5_4")

    # Full-resolution branch.
    y = apply_conv_bn_relu(inputs, scaled(32, width), 3, strides=2, name="conv1_sub1")
    y = apply_conv_bn_relu(y, scaled(32, width), 3, strides=2, name="conv2_sub1")
    y = apply_conv_bn_relu(y, scaled(64, width), 3, strides=2, name="conv3_sub1")

    x, guidance_1_16 = apply_cascade_feature_fusion(x, conv3_1, scaled(CFF_FILTERS, width), name="cff_sub24")
    x, guidance_1_8 = apply_cascade_feature_fusion(x, y, scaled(CFF_FILTERS, width), name="cff_sub12")
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="sub12_upsample")(x)
    logits = apply_logits(x, num_classes, input_shape, name="logits")
    if aux_outputs:
        aux_1_8 = apply_logits(guidance_1_8, num_classes, input_shape, name="aux_1_8")
        aux_1_16 = apply_logits(guidance_1_16, num_classes, input_shape, name="aux_1_16")
        model = keras.Model(inputs, [logits, aux_1_8, aux_1_16], name="icnet")
    else:
        model = keras.Model(inputs, logits, name="icnet")
    if weights is not None:
        load_resnet50_weights(model, weights)
    return model
