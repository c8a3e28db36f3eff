import numpy as np
import pytest

from model_checks import (
    NUM_CLASSES,
    TINY_SHAPE,
    check_config_round_trip,
    check_output_shapes,
    check_save_load,
    outputs_of,
    tiny_batch,
    tiny_model,
)
from segflow.errors import SegflowError
from segflow.models import LOSS_WEIGHTS, build, inference_model
from segflow.models.complexity import build_for_shapes

# The released ICNet (half of PSPNet-50's kernels): 6.68 M parameters, as listed in
# Fast-SCNN's comparison (Poudel et al. 2019, https://arxiv.org/abs/1902.04502, Table 5).
PUBLISHED_PARAMS = 6.68e6


@pytest.fixture(scope="module")
def model():
    return tiny_model("icnet", aux_outputs=True)



def test_output_shapes_with_aux_outputs():
    check_output_shapes("icnet", aux_outputs=True)


def test_config_round_trip_with_aux_outputs(model):
    check_config_round_trip(model)


@pytest.mark.slow
def test_save_load_with_aux_outputs(model, tmp_path):
    check_save_load(model, tmp_path)





def test_params_match_published():
    assert build_for_shapes("icnet").count_params() == pytest.approx(PUBLISHED_PARAMS, rel=0.05)


def test_aux_outputs_present_for_training(model):
    assert model.output_names == ["logits", "aux_1_8", "aux_1_16"]
    assert len(LOSS_WEIGHTS["icnet"]) == len(model.outputs)
    assert LOSS_WEIGHTS["icnet"] == (1.0, 0.4, 0.16)
    # The guidance classifiers sit on the 1/8 and 1/16 fusion inputs.
    assert model.get_layer("aux_1_8_classifier").input.shape[1:3] == (TINY_SHAPE[0] // 8, TINY_SHAPE[1] // 8)
    assert model.get_layer("aux_1_16_classifier").input.shape[1:3] == (TINY_SHAPE[0] // 16, TINY_SHAPE[1] // 16)


def test_inference_model_has_only_the_main_output_and_shares_weights(model):
    inference = inference_model(model)
    assert len(inference.outputs) == 1
    assert inference.output_shape == (None, *TINY_SHAPE[:2], NUM_CLASSES)
    images, _ = tiny_batch()
    np.testing.assert_array_equal(outputs_of(inference, images)[0], outputs_of(model, images)[0])
    assert inference.get_layer("logits_classifier") is model.get_layer("logits_classifier")


def test_without_aux_outputs_there_is_one_output():
    model = build("icnet", num_classes=NUM_CLASSES, input_shape=TINY_SHAPE, width=1 / 8)
    assert len(model.outputs) == 1
    assert inference_model(model) is model


def test_three_branches_at_quarter_half_and_full_resolution():
    model = build("icnet", num_classes=NUM_CLASSES, input_shape=TINY_SHAPE, width=1 / 8)
    height, width = TINY_SHAPE[:2]
    assert model.get_layer("conv3_block1_out").output.shape[1:3] == (height // 16, width // 16)  # 1/2 image, /8
    assert model.get_layer("conv5_4_relu").output.shape[1:3] == (height // 32, width // 32)  # 1/4 image, /8
    assert model.get_layer("conv3_sub1_relu").output.shape[1:3] == (height // 8, width // 8)  # full image, /8
    assert model.get_layer("conv5_block1_2_conv").dilation_rate == (4, 4)


def test_imagenet_weights_need_the_full_width_encoder():
    # With weights the encoder is keras.applications' full ResNet-50 (tests/models/test_backbones.py
    # checks its tensors): a width-multiplied ICNet cannot hold them.
    with pytest.raises(SegflowError, match="ImageNet ResNet50 weights need width=1.0"):
        build("icnet", input_shape=TINY_SHAPE, width=0.5, weights="imagenet")
