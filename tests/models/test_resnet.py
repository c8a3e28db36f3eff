import keras
import numpy as np
import pytest

from model_checks import (
    backend_independent,
    check_config_round_trip,
    check_output_shapes,
    check_overfits_one_batch,
    check_save_load,
    tiny_model,
)
from segflow.errors import SegflowError
from segflow.models import build
from segflow.models.complexity import build_for_shapes

# keras.applications.ResNet50(include_top=False): 23,587,712 params (the published 25.6 M of
# He et al. 2016 / the Keras applications table, minus the 2,049,000 of the ImageNet classifier).
RESNET50_NOTOP_PARAMS = 23_587_712
# torchvision's ResNet-18 / ResNet-34: 11.69 M / 21.80 M, minus the 513,000 of the classifier.
RESNET18_NOTOP_PARAMS = 11.69e6 - 0.513e6
RESNET34_NOTOP_PARAMS = 21.80e6 - 0.513e6


def backbone_params(model: keras.Model) -> int:
    return sum(layer.count_params() for layer in model.layers if layer.name.startswith(("conv", "pool")))


@pytest.fixture(scope="module")
def model():
    return tiny_model("resnet")


def test_output_shapes():
    check_output_shapes("resnet")


def test_output_shapes_depth_34_stride_16():
    check_output_shapes("resnet", depth=34, output_stride=16)


def test_config_round_trip(model):
    check_config_round_trip(model)


def test_overfits_one_batch():
    # Depth 18 keeps the compiled training step small; depth 50 is trained in deeplabv3plus.
    check_overfits_one_batch("resnet", depth=18)


@pytest.mark.slow
def test_save_load(model, tmp_path):
    check_save_load(model, tmp_path)


def test_resnet50_backbone_has_exactly_keras_applications_parameters():
    model = build_for_shapes("resnet")
    assert backbone_params(model) == RESNET50_NOTOP_PARAMS
    # FCN head (Long et al. 2015, torchvision's FCNHead): 3×3 conv 2048→512, BN, 1×1 classifier.
    assert model.count_params() == pytest.approx(RESNET50_NOTOP_PARAMS + 2048 * 512 * 9 + 512 * 4 + 512 * 19 + 19)


@pytest.mark.parametrize("depth, published", [(18, RESNET18_NOTOP_PARAMS), (34, RESNET34_NOTOP_PARAMS)])
def test_basic_block_backbones_match_published_parameters(depth, published):
    model = build_for_shapes("resnet", depth=depth)
    assert backbone_params(model) == pytest.approx(published, rel=0.05)


@pytest.mark.parametrize("output_stride, feature_size", [(8, (8, 16)), (16, (4, 8))])
def test_output_stride_sets_the_feature_resolution(output_stride, feature_size):
    model = build("resnet", num_classes=3, input_shape=(64, 128, 3), width=1 / 8, output_stride=output_stride)
    assert model.get_layer("conv5_block3_out").output.shape[1:3] == feature_size


def test_bad_depth_and_stride_are_rejected():
    with pytest.raises(SegflowError, match="depth must be one of"):
        build("resnet", input_shape=(64, 128, 3), depth=101)
    with pytest.raises(SegflowError, match="output_stride must be 8 or 16"):
        build("resnet", input_shape=(64, 128, 3), output_stride=32)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "resnet50_notop.h5"
    with pytest.raises(SegflowError, match="resnet50_notop.h5"):
        build("resnet", input_shape=(64, 128, 3), weights=str(missing))


def test_weights_need_full_width():
    with pytest.raises(SegflowError, match="width=1.0"):
        build("resnet", input_shape=(64, 128, 3), width=0.5, weights="imagenet")


@pytest.mark.slow
@backend_independent
def test_loads_keras_applications_resnet50_weights(tmp_path):
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 128, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    reference.save_weights(path)
    model = build("resnet", input_shape=(64, 128, 3), weights=str(path))
    # conv1_conv is adapted to segflow's input normalisation: tests/models/test_backbones.py.
    for name in ("conv2_block1_1_conv", "conv3_block2_2_conv", "conv5_block3_3_bn"):
        for ours, theirs in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
