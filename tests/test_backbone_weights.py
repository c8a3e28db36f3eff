"""`backbone_weights` from the settings to the trained model: a keras.applications file on S3
(moto's server) starts the encoder, a missing one is refused before anything is written, and a
resumed run does not fetch it again."""

import keras
import numpy as np
import pytest

from segflow import storage
from segflow.config import TrainConfig
from segflow.errors import SegflowError


@pytest.mark.slow
def test_an_s3_weights_file_starts_the_encoder(s3_bucket, tmp_path):
    from segflow.train import build_training_model

    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    reference.save_weights(tmp_path / "resnet50.weights.h5")
    uri = storage.upload_file(tmp_path / "resnet50.weights.h5", f"{s3_bucket}/backbones/resnet50.weights.h5")
    config = TrainConfig(architecture="deeplabv3plus", image_size=(64, 128), backbone_weights=uri)
    model = build_training_model(config, tmp_path, total_steps=10)
    for name in ("conv2_block1_1_conv", "conv4_block6_3_bn", "conv5_block3_2_conv"):
        for ours, theirs in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs)
    # Resuming restores a checkpoint: the file is not needed (nor fetched) again.
    fresh = build_training_model(config.model_copy(update={"backbone_weights": f"{s3_bucket}/gone.h5"}), tmp_path, 10, backbone=False)
    assert not np.array_equal(fresh.get_layer("conv2_block1_1_conv").get_weights()[0], reference.get_layer("conv2_block1_1_conv").get_weights()[0])


def test_a_missing_weights_file_is_refused_before_anything_is_written(s3_bucket, tmp_path):
    from segflow.train import train

    records = tmp_path / "records"
    records.mkdir()
    for missing in (f"{s3_bucket}/nothing-here.h5", str(tmp_path / "nothing-here.h5")):
        config = TrainConfig(architecture="resnet", image_size=(64, 128), backbone_weights=missing)
        with pytest.raises(SegflowError, match="backbone_weights: .*nothing-here.h5"):
            train(config, records, tmp_path / "run")
        assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize(
    "architecture, width, message",
    [("unet", 1.0, "unet has no ImageNet encoder"), ("icnet", 0.5, "needs width 1.0"), ("segnet", 0.5, "needs width 1.0")],
)
def test_backbone_weights_only_where_an_encoder_fits(architecture, width, message):
    from segflow.config import train_config

    with pytest.raises(SegflowError, match=message):
        train_config(architecture=architecture, width=width, backbone_weights="imagenet")
