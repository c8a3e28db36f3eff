"""ImageNet encoders from keras.applications weights files (written here with weights=None: no
internet): every encoder tensor equals the file's, and the first convolution computes on
segflow-normalised RGB what keras.applications computes on its own "caffe" preprocessing."""

import keras
import numpy as np
import pytest
from model_checks import backend_independent

from segflow.errors import SegflowError
from segflow.models import build

SHAPE = (64, 96, 3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(1)
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    # Random batch-norm statistics too, so a tensor left at its initial value would show.
    for layer in resnet.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([np.random.default_rng(len(layer.name)).uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    resnet.save_weights(folder / "resnet50.weights.h5")
    vgg.save_weights(folder / "vgg16.weights.h5")
    return {"ResNet50": (resnet, folder / "resnet50.weights.h5"), "VGG16": (vgg, folder / "vgg16.weights.h5")}


def _segflow_and_caffe_inputs():
    """One random image as segflow normalises it and as keras.applications preprocesses it."""
    from segflow.augment import MEAN_RGB, STDDEV_RGB

    pixels = np.random.default_rng(0).integers(0, 256, size=(1, *SHAPE)).astype("float32")
    ours = (pixels / 255.0 - np.array(MEAN_RGB, "float32")) / np.array(STDDEV_RGB, "float32")
    theirs = keras.applications.resnet.preprocess_input(pixels.copy())  # caffe: BGR minus mean
    return ours, theirs


def _first_convolution(model, images):
    """ResNet-50's conv1_conv of `model` applied to `images` after its 3-pixel zero padding."""
    padded = keras.ops.pad(images, [[0, 0], [3, 3], [3, 3], [0, 0]])
    return keras.ops.convert_to_numpy(model.get_layer("conv1_conv")(padded))


def _layer_output(model, name, images):
    return keras.Model(model.inputs, model.get_layer(name).output)(images).numpy()


@pytest.mark.slow
@backend_independent
@pytest.mark.parametrize("architecture", ["resnet", "deeplabv3plus", "icnet"])
def test_resnet50_encoder_tensors_equal_the_files(files, architecture):
    reference, path = files["ResNet50"]
    model = build(architecture, input_shape=SHAPE, weights=str(path))
    checked = 0
    for layer in reference.layers:
        if not layer.weights or layer.name == "conv1_conv":
            continue
        for ours, theirs in zip(model.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs)
            checked += 1
    assert checked == 316  # 52 convolutions × 2 (conv1_conv apart) + 53 batch norms × 4
    # The first convolution: same outputs on segflow's inputs as the original on caffe inputs
    # (inside the image; at the border the two paddings differ by < 1 grey level).
    ours, theirs = _segflow_and_caffe_inputs()
    # (ICNet's encoder sees the half-size image: the layer is applied to the same image directly.)
    expected = _first_convolution(reference, theirs)[:, 2:-2, 2:-2]
    actual = _first_convolution(model, ours)[:, 2:-2, 2:-2]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


@pytest.mark.slow
@backend_independent
def test_vgg16_encoder_kernels_equal_the_files(files):
    reference, path = files["VGG16"]
    model = build("segnet", input_shape=SHAPE, weights=str(path))
    for stage, convolutions in enumerate((2, 2, 3, 3, 3), start=1):
        for index in range(1, convolutions + 1):
            if (stage, index) == (1, 1):
                continue
            [ours] = model.get_layer(f"encoder{stage}_{index}_conv").get_weights()
            np.testing.assert_array_equal(ours, reference.get_layer(f"block{stage}_conv{index}").get_weights()[0])
    # The first convolution (no bias here): the original's outputs before its ReLU, up to a
    # per-channel constant, which the batch norm after it removes.
    ours, theirs = _segflow_and_caffe_inputs()
    kernel = reference.get_layer("block1_conv1").get_weights()[0]
    expected = keras.ops.convert_to_numpy(keras.ops.conv(theirs, kernel, padding="same"))[:, 1:-1, 1:-1]
    difference = _layer_output(model, "encoder1_1_conv", ours)[:, 1:-1, 1:-1] - expected
    np.testing.assert_allclose(difference, np.broadcast_to(difference[:, :1, :1], difference.shape), atol=1e-3 * np.abs(expected).max())


@pytest.mark.slow
@backend_independent
def test_a_file_of_another_network_is_one_error_naming_the_first_mismatching_layer(files):
    with pytest.raises(SegflowError, match=r"vgg16\.weights\.h5 is not a keras.applications ResNet50 weights file: first mismatching layer 'conv1_conv'"):
        build("resnet", input_shape=SHAPE, weights=str(files["VGG16"][1]))
    with pytest.raises(SegflowError, match=r"not a keras.applications VGG16 weights file: first mismatching layer 'block1_conv1'"):
        build("segnet", input_shape=SHAPE, weights=str(files["ResNet50"][1]))


def test_the_input_normalisation_is_segflows():
    from segflow import augment
    from segflow.models import backbones

    assert (backbones.MEAN_RGB, backbones.STDDEV_RGB) == (augment.MEAN_RGB, augment.STDDEV_RGB)


def test_encoder_weights_need_full_width_and_an_existing_file(tmp_path):
    with pytest.raises(SegflowError, match="width=1.0"):
        build("segnet", input_shape=SHAPE, width=0.5, weights="imagenet")
    with pytest.raises(SegflowError, match="nowhere.h5"):
        build("segnet", input_shape=SHAPE, weights=str(tmp_path / "nowhere.h5"))
