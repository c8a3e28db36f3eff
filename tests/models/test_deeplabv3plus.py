import pytest

from model_checks import (
    tiny_model,
)
from segflow.errors import SegflowError
from segflow.models import build
from segflow.models.complexity import build_for_shapes

# KerasHub's DeepLabV3+ with a ResNet-50 encoder (preset deeplab_v3_plus_resnet50_pascalvoc,
# https://keras.io/keras_hub/presets/): 39.19 M parameters.
PUBLISHED_PARAMS = 39.19e6


@pytest.fixture(scope="module")
def model():
    return tiny_model("deeplabv3plus")






def test_params_match_published():
    assert build_for_shapes("deeplabv3plus").count_params() == pytest.approx(PUBLISHED_PARAMS, rel=0.05)


def test_encoder_at_stride_16_and_decoder_at_stride_4():
    model = build("deeplabv3plus", num_classes=3, input_shape=(64, 128, 3), width=1 / 8)
    assert model.get_layer("conv5_block3_out").output.shape[1:3] == (4, 8)
    assert model.get_layer("decoder_concat").output.shape[1:3] == (16, 32)
    for rate in (6, 12, 18):
        assert model.get_layer(f"aspp_rate{rate}_conv").dilation_rate == (rate, rate)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(SegflowError, match="nowhere.h5"):
        build("deeplabv3plus", input_shape=(64, 128, 3), weights=str(tmp_path / "nowhere.h5"))
