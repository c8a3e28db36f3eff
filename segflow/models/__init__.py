"""The segmentation architectures, one registry, and the helpers training needs.

`ARCHITECTURES` maps each name to its `Architecture` (builder and loss weights); `build` is the
one way to make a model by name. Every other list of architectures follows this registry: the
`Architecture` Literal in segflow/config.py (which the CLI's choices and the pipeline's form come
from; kept as a Literal because config.py must not import Keras) and the deployments in
infra/scale-out.yaml are checked against it by tests/models/test_models_registry.py.

Adding an architecture:
    1. One model file, `segflow/models/<name>.py`, exporting
       `build_<name>(num_classes, input_shape, width, ...) -> keras.Model` (float32 logits at the
       input resolution; a docstring with Args, a runnable Example and the paper link).
    2. One registry line below: `"<name>": Architecture(build_<name>)`, with `loss_weights` if the
       model has training-only outputs.
    3. Add the name to the `Architecture` Literal in segflow/config.py and a deployment plus a
       single-GPU entry in infra/scale-out.yaml (the registry test names what is missing).
    4. `tests/models/test_<name>.py` for what is special to the model (published parameter
       count, its distinctive layers); the common checks (output shapes, config round trip,
       overfitting one batch, save/load) run over the registry in tests/models/test_common.py.
"""

from __future__ import annotations

import dataclasses
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



@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registered architecture: its builder, and the loss weight of each output of a model built
    with `aux_outputs=True`, in output order (one weight: the model has no training-only outputs,
    and its builder takes no `aux_outputs`)."""

    builder: Callable[..., keras.Model]
    loss_weights: tuple[float, ...] = (1.0,)

    @property
    def has_aux_outputs(self) -> bool:
        return len(self.loss_weights) > 1


ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture(build_unet),
    "segnet": Architecture(build_segnet),
    # ICNet's cascade label guidance: main 1/4 output, then the 1/8 and 1/16 ones (paper Sec. 3.3).
    "icnet": Architecture(build_icnet, loss_weights=(1.0, 0.4, 0.16)),
    "resnet": Architecture(build_resnet),
    "deeplabv3plus": Architecture(build_deeplabv3plus),
}

# The loss weights of the architectures with training-only outputs (what training compiles with).
LOSS_WEIGHTS: dict[str, tuple[float, ...]] = {
    name: entry.loss_weights for name, entry in ARCHITECTURES.items() if entry.has_aux_outputs
}


def build(
    name: str,
    num_classes: int = NUM_CLASSES,
    input_shape: tuple[int, int, int] = (512, 1024, 3),
    width: float = 1.0,
    aux_outputs: bool = False,
    **options,
) -> keras.Model:
    """Builds architecture `name`; `options` go to its builder (e.g. `depth=34` for resnet,
    `weights="imagenet"`). `aux_outputs=True` adds the training-only outputs of a model that has
    them (see `Architecture.loss_weights`); a model without any is built as it is.

    Raises SegflowError for an unknown name or an option the builder does not take.

    Example:
    >>> build("unet", num_classes=3, input_shape=(64, 128, 3), width=0.125).output_shape
    (None, 64, 128, 3)
    """
    if name not in ARCHITECTURES:
        raise SegflowError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    entry = ARCHITECTURES[name]
    accepted = set(inspect.signature(entry.builder).parameters) - {"aux_outputs"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SegflowError(f"{name} has no option {', '.join(unknown)}; it takes: {', '.join(sorted(accepted))}")
    if entry.has_aux_outputs:
        options["aux_outputs"] = aux_outputs
    return entry.builder(num_classes=num_classes, input_shape=tuple(input_shape), width=width, **options)


def inference_model(model: keras.Model) -> keras.Model:
    """The model without its training-only outputs: a view on the first output that shares
    the weights, or `model` itself when it has one output."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.outputs[0], name=f"{model.name}_inference")
