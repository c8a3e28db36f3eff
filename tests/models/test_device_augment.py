"""JitterAndNormalize against a numpy float64 reference, on whichever backend KERAS_BACKEND names."""

import numpy as np

from segflow.augment import LUMA, MEAN_RGB, STDDEV_RGB
from segflow.device_augment import JitterAndNormalize, with_device_augment


def reference(image: np.ndarray, parameters: np.ndarray) -> np.ndarray:
    """The colour map of one example, written out: mean grey over the box, affine map, clip,
    ImageNet normalisation inside the box, 0 outside."""
    matrix, (contrast, brightness) = parameters[:9].reshape(3, 3), parameters[9:11]
    top, left, height, width = parameters[11:].astype(int)
    pixels = image.astype(np.float64) / 255.0
    real = pixels[top : top + height, left : left + width]
    mean_grey = real.reshape(-1, 3).mean(axis=0) @ np.array(LUMA)
    jittered = np.clip(real @ matrix + (1 - contrast) * mean_grey + brightness, 0, 1)
    out = np.zeros_like(pixels)
    out[top : top + height, left : left + width] = (jittered - MEAN_RGB) / STDDEV_RGB
    return out


def test_each_example_gets_its_own_colour_map_and_padding():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 12, 20, 3), dtype=np.uint8)
    matrices = np.eye(3) * rng.uniform(0.8, 1.2, (3, 1, 1)) + rng.uniform(-0.1, 0.1, (3, 3, 3))
    boxes = np.array([[0, 0, 12, 20], [2, 5, 7, 15], [4, 0, 8, 11]])  # none, two sides, two sides
    parameters = np.concatenate(
        [matrices.reshape(3, 9), rng.uniform(0.8, 1.2, (3, 1)), rng.uniform(-0.125, 0.125, (3, 1)), boxes], axis=1
    ).astype(np.float32)

    out = np.asarray(JitterAndNormalize()({"image": images, "augment": parameters}))

    assert out.shape == (3, 12, 20, 3) and out.dtype == np.float32
    expected = np.stack([reference(image, example) for image, example in zip(images, parameters)])
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    assert np.abs(expected).max() > 1  # values of normalised images, not all clipped to 0 or 1


def test_the_wrapped_model_takes_uint8_crops_and_colour_maps():
    import keras

    inner = keras.Sequential([keras.Input((12, 20, 3)), keras.layers.Conv2D(2, 1, name="head")], name="inner")
    model = with_device_augment(inner)

    assert sorted(model.input) == ["augment", "image"] and model.output_shape == (None, 12, 20, 2)
    assert [weight.path for weight in model.weights] == [weight.path for weight in inner.weights]
    identity = np.concatenate([np.eye(3).ravel(), [1, 0, 0, 0, 12, 20]]).astype(np.float32)
    images = np.random.default_rng(1).integers(0, 256, (1, 12, 20, 3), dtype=np.uint8)
    normalised = ((images / 255.0 - MEAN_RGB) / STDDEV_RGB).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(model({"image": images, "augment": identity[None]})), np.asarray(inner(normalised)), atol=1e-5
    )
