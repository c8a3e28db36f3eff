"""The segmentation architectures, one registry, and the helpers training needs.

`ARCHITECTURES` maps each name to its builder; `build` is the one way to make a model by name.
"""

from __future__ import annotations

import inspect
from typing import Callable

import keras

from segflow.cityscapes import NUM_CLASSES
from segflow.errors import SegflowError
from segflow.models.deeplabv3plus import build_deeplabv3plus
from segflow.models.icnet import build_icnet
from segflow.models.resnet import build_resnet
from segflow.models.segnet import build_segnet
from segflow.models.unet import build_unet

ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "unet": build_unet,
    "segnet": build_segnet,
    "icnet": build_icnet,
    "resnet": build_resnet,
    "deeplabv3plus": build_deeplabv3plus,
}

# Loss weight of each output of a model built with `aux_outputs=True`, in output order.
# ICNet's cascade label guidance: main 1/4 output, then the 1/8 and 1/16 ones (paper Sec. 3.3).
LOSS_WEIGHTS: dict[str, tuple[float, ...]] = {"icnet": (1.0, 0.4, 0.16)}


def build(
    name: str,
    num_classes: int = NUM_CLASSES,
    input_shape: tuple[int, int, int] = (512, 1024, 3),
    width: float = 1.0,
    **options,
) -> keras.Model:
    """Builds architecture `name`; `options` go to its builder (e.g. `depth=34` for resnet,
    `aux_outputs=True`, `weights="imagenet"`).

    Example:
    >>> build("unet", num_classes=3, input_shape=(64, 128, 3), width=0.125).output_shape
    (None, 64, 128, 3)
    """
    if name not in ARCHITECTURES:
        raise SegflowError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    builder = ARCHITECTURES[name]
    accepted = set(inspect.signature(builder).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SegflowError(f"{name} has no option {', '.join(unknown)}; it takes: {', '.join(sorted(accepted))}")
    return builder(num_classes=num_classes, input_shape=tuple(input_shape), width=width, **options)


def inference_model(model: keras.Model) -> keras.Model:
    """The model without its training-only outputs: a view on the first output that shares
    the weights, or `model` itself when it has one output."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.outputs[0], name=f"{model.name}_inference")
