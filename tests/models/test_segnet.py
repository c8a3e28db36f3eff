import keras
import numpy as np
import pytest

from model_checks import (
    tiny_model,
)
from segflow.models import build
from segflow.models.complexity import build_for_shapes
from segflow.models.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D


@pytest.fixture(scope="module")
def model():
    return tiny_model("segnet")






def test_params_match_paper():
    # Badrinarayanan et al. 2017 (and Fast-SCNN's Table 5): 29.46 M.
    assert build_for_shapes("segnet").count_params() == pytest.approx(29.4e6, rel=0.05)


def test_decoder_unpools_with_the_encoder_indices():
    model = build("segnet", num_classes=3, input_shape=(64, 128, 3), width=1 / 8)
    for stage in range(1, 6):
        unpool = model.get_layer(f"decoder{stage}_unpool")
        indices = unpool.input[1]
        assert indices is model.get_layer(f"encoder{stage}_pool").output[1]


def test_pooling_indices_point_at_each_window_maximum():
    images = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D()(images)
    pooled, indices = keras.ops.convert_to_numpy(pooled), keras.ops.convert_to_numpy(indices)
    windows = images.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 2, 3, 3, 4)
    np.testing.assert_array_equal(pooled, windows.max(axis=-1))
    np.testing.assert_array_equal(indices, windows.argmax(axis=-1))


def test_unpooling_puts_each_value_back_at_its_argmax_position():
    images = np.random.default_rng(1).normal(size=(2, 4, 6, 3)).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D()(images)
    unpooled = keras.ops.convert_to_numpy(MaxUnpooling2D()([pooled, indices]))
    # Every window maximum is where it was; everything else is zero.
    expected = np.zeros_like(images)
    for b, row, col, channel in np.ndindex(2, 2, 3, 3):
        window = images[b, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2, channel]
        r, c = np.unravel_index(window.argmax(), (2, 2))
        expected[b, 2 * row + r, 2 * col + c, channel] = window[r, c]
    np.testing.assert_array_equal(unpooled, expected)


def test_unpooling_places_new_values_by_index():
    # The decoder unpools its own features, not the pooled ones: values go where indices say.
    values = np.array([[[[5.0]]]], dtype="float32")
    for index, position in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        unpooled = keras.ops.convert_to_numpy(MaxUnpooling2D()([values, np.array([[[[index]]]], "int32")]))
        expected = np.zeros((1, 2, 2, 1), "float32")
        expected[0, position[0], position[1], 0] = 5.0
        np.testing.assert_array_equal(unpooled, expected)
