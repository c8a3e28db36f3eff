"""The checks every architecture passes, on tiny models: output shapes at several input
sizes, a get_config/from_config round trip, overfitting one batch with `fit`, and a `.keras`
save/load round trip."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from segflow.models import LOSS_WEIGHTS, build

NUM_CLASSES = 3
TINY_WIDTH = 1 / 8
TINY_SHAPE = (64, 128, 3)
# Sizes whose output shapes are only inferred (symbolic build, nothing runs).
INFERRED_SHAPES = ((32, 64, 3), (512, 1024, 3), (1024, 2048, 3))
OVERFIT_SHAPE = (32, 64, 3)
OVERFIT_STEPS = 40
# Options that keep an architecture's common checks small (depth 18 keeps ResNet's compiled training
# step small; depth 50 is trained inside deeplabv3plus). An architecture not listed uses its defaults.
TINY_OPTIONS = {"resnet": {"depth": 18}}

# For checks whose result cannot depend on the backend (docstring examples, loading a
# keras.applications weights file): they run once, under TensorFlow, sparing the JAX run.
backend_independent = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="backend-independent; checked once, under TensorFlow"
)


def tiny_model(name: str, input_shape=TINY_SHAPE, **options) -> keras.Model:
    """A seeded tiny model, so a test sees the same weights every run."""
    keras.utils.set_random_seed(0)
    return build(name, num_classes=NUM_CLASSES, input_shape=input_shape, width=TINY_WIDTH, **options)


def tiny_batch(input_shape=TINY_SHAPE, batch_size: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose colour gives the class of each 16×16 block, and those labels."""
    rng = np.random.default_rng(seed)
    height, width = input_shape[:2]
    blocks = rng.integers(0, NUM_CLASSES, size=(batch_size, height // 16, width // 16))
    labels = blocks.repeat(16, axis=1).repeat(16, axis=2).astype("int32")
    images = np.eye(3)[labels] * 2 - 1 + 0.3 * rng.normal(size=labels.shape + (3,))
    return images.astype("float32"), labels


def outputs_of(model: keras.Model, images) -> list[np.ndarray]:
    outputs = model(images, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [keras.ops.convert_to_numpy(output) for output in outputs]


def check_output_shapes(name: str, **options) -> None:
    """Float32 logits at input resolution: run at TINY_SHAPE, inferred (built symbolically,
    nothing runs) at a smaller and two large sizes."""
    model = build(name, num_classes=NUM_CLASSES, input_shape=TINY_SHAPE, width=TINY_WIDTH, **options)
    for output in outputs_of(model, tiny_batch()[0]):
        assert output.shape == (2, *TINY_SHAPE[:2], NUM_CLASSES)
        assert output.dtype == np.float32
        assert np.isfinite(output).all()
    for input_shape in INFERRED_SHAPES:
        model = build(name, num_classes=NUM_CLASSES, input_shape=input_shape, width=TINY_WIDTH, **options)
        for output in model.outputs:
            assert output.shape == (None, *input_shape[:2], NUM_CLASSES)
            assert output.dtype == "float32"


def check_config_round_trip(model: keras.Model) -> None:
    """from_config(get_config()) rebuilds the same graph: same weights fit, same outputs."""
    rebuilt = keras.Model.from_config(model.get_config())
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
    rebuilt.set_weights(model.get_weights())
    images, _ = tiny_batch()
    for expected, actual in zip(outputs_of(model, images), outputs_of(rebuilt, images)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def check_overfits_one_batch(name: str, **options) -> None:
    """`fit` on one small batch: the training loss falls by more than half in OVERFIT_STEPS.

    With `aux_outputs=True` every output gets the labels and LOSS_WEIGHTS weights the losses.
    """
    model = tiny_model(name, input_shape=OVERFIT_SHAPE, **options)
    images, labels = tiny_batch(OVERFIT_SHAPE)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # SGD builds a far smaller training graph than Adam (a third of TensorFlow's trace time).
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    if len(model.outputs) == 1:
        model.compile(optimizer=optimizer, loss=loss)
    else:
        labels = [labels] * len(model.outputs)
        model.compile(optimizer=optimizer, loss=[loss] * len(model.outputs), loss_weights=list(LOSS_WEIGHTS[name]))
    history = model.fit(images, labels, batch_size=2, epochs=OVERFIT_STEPS, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


def check_save_load(model: keras.Model, tmp_path: Path) -> None:
    """A `.keras` file reloads to a model with the same outputs."""
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images, _ = tiny_batch()
    for expected, actual in zip(outputs_of(model, images), outputs_of(loaded, images)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
