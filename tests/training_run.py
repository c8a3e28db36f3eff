"""How the session's tiny synthetic dataset and tiny trained model are made; tests/conftest.py
makes each once per session (fixtures `synthetic_dataset`, `records`, `trained`)."""

from __future__ import annotations

import warnings
from pathlib import Path

from segflow.config import TrainConfig

# U-Net at 1/16 width (4..64 filters, 0.12 M parameters) on 64x128 images: ~0.3 s a step here.
# SGD at 0.1 and batch-norm momentum 0.9 so that 40 steps are enough to learn the synthetic
# colours (with Keras' 0.99 the moving statistics would still be mostly their initial values).
TINY_CONFIG = TrainConfig(
    architecture="unet",
    width=0.0625,
    image_size=(64, 128),
    batch_size=2,
    epochs=4,
    steps_per_epoch=10,
    learning_rate=0.1,
    warmup_steps=2,
    batchnorm_momentum=0.9,
    checkpoint_every_steps=5,
)


def synthetic_records(tmp_path_factory) -> tuple[Path, Path]:
    """(Cityscapes root, records folder) of a 64x128 synthetic dataset: 8 train, 4 val, 2 test."""
    from segflow.convert import convert
    from segflow.synthetic import write_dataset

    base = tmp_path_factory.mktemp("synthetic")
    dataset = write_dataset(base / "cityscapes", train=8, val=4, test=2, height=64, width=128)
    convert(dataset, base / "records", progress=False)
    return dataset, base / "records"


def trained_run(records: Path, tmp_path_factory):
    """The `segflow.train.TrainResult` of TINY_CONFIG trained on `records`, and the Python
    warnings raised while it trained."""
    from segflow.train import train

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(TINY_CONFIG, records, tmp_path_factory.mktemp("run"), verbose=0)
    return result, [str(warning.message) for warning in caught]
