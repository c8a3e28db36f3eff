"""One model, one number, and a SavedModel that serves.

A tiny run trained through `segflow train`: the number it prints last is the official evaluation
(`segflow.evaluate.evaluate_model`) of the model it exported; the SavedModel, loaded by plain
TensorFlow in a process that never imports segflow, turns uint8 images of an odd size into the
same labelIds as `segflow predict --format labelIds`.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from segflow.cli import cli

TRAIN_ARGS = ["--arch", "unet", "--width", "0.0625", "--image-size", "64x128", "--batch-size", "2", "--epochs", "2",
              "--steps-per-epoch", "6", "--lr", "0.1", "--warmup-steps", "2", "--batchnorm-momentum", "0.9", "--quiet"]


@pytest.fixture(scope="module")
def run(synthetic_dataset, tmp_path_factory):
    dataset, records = synthetic_dataset
    out = tmp_path_factory.mktemp("served") / "run"
    result = CliRunner().invoke(cli, ["train", "--records", str(records), "--out", str(out), *TRAIN_ARGS])
    assert result.exit_code == 0, result.output
    return dataset, records, out, result.output


@pytest.mark.slow
def test_the_number_a_run_prints_last_is_the_official_evaluation_of_its_exported_model(run, tmp_path):
    from segflow.evaluate import evaluate_model

    _, records, out, output = run
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("exported model (final weights): val mIoU "), output
    printed = float(re.search(r"val mIoU ([0-9.e-]+)", last_line)[1])
    metrics = evaluate_model(out / "model.keras", records, tmp_path)  # records are 64x128, the model's size
    assert printed == pytest.approx(metrics["miou"], abs=1e-9)
    assert 0 < printed < 1
    # The best epoch is reported apart, labelled as selected on val.
    assert re.search(r"best epoch \d: val mIoU [0-9.]+ \(selected on val", output)


SERVE_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
from PIL import Image
image = np.asarray(Image.open(sys.argv[2]).convert("RGB"))
loaded = tf.saved_model.load(sys.argv[1])
serving = loaded.signatures["serving_default"]
outputs = serving(images=tf.constant(image[None]))
np.save(sys.argv[3], outputs["label_ids"].numpy()[0])
np.save(sys.argv[4], outputs["train_ids"].numpy()[0])
spec = serving.structured_input_signature[1]["images"]
print(json.dumps({"segflow_imported": any(name.split(".")[0] == "segflow" for name in sys.modules),
                  "dtype": spec.dtype.name, "shape": spec.shape.as_list(),
                  "outputs": {key: [value.dtype.name, value.shape.as_list()] for key, value in outputs.items()}}))
"""


@pytest.mark.slow
def test_the_saved_model_serves_uint8_images_of_any_size_like_segflow_predict(run, tmp_path):
    dataset, _, out, _ = run
    # A val image at an odd size (neither the model's 64x128 nor a multiple of 32).
    source = sorted((dataset / "leftImg8bit" / "val").rglob("*.png"))[0]
    image_path = tmp_path / "images" / source.name
    image_path.parent.mkdir()
    Image.open(source).convert("RGB").resize((101, 77), Image.BILINEAR).save(image_path)

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(out / "saved_model"), str(image_path), str(tmp_path / "label_ids.npy"),
         str(tmp_path / "train_ids.npy")],
        capture_output=True, text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=tmp_path, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    facts = json.loads(completed.stdout.strip().splitlines()[-1])
    assert facts["segflow_imported"] is False
    assert (facts["dtype"], facts["shape"]) == ("uint8", [None, None, None, 3])
    assert facts["outputs"] == {"label_ids": ["uint8", [1, 77, 101]], "train_ids": ["uint8", [1, 77, 101]]}

    result = CliRunner().invoke(cli, ["predict", "--model", str(out / "model.keras"), "--images", str(image_path.parent),
                                      "--out", str(tmp_path / "predicted"), "--format", "labelIds"])
    assert result.exit_code == 0, result.output
    expected = np.asarray(Image.open(tmp_path / "predicted" / source.name))
    served = np.load(tmp_path / "label_ids.npy")
    assert served.shape == expected.shape == (77, 101)
    np.testing.assert_array_equal(served, expected)
    from segflow.cityscapes import TRAIN_ID_TO_LABEL_ID

    np.testing.assert_array_equal(TRAIN_ID_TO_LABEL_ID[np.load(tmp_path / "train_ids.npy")], served)
    assert len(np.unique(served)) > 1  # a real prediction, not one class everywhere

    # `segflow predict` on the SavedModel itself gives the same labelIds as on model.keras.
    result = CliRunner().invoke(cli, ["predict", "--model", str(out / "saved_model"), "--images", str(image_path.parent),
                                      "--out", str(tmp_path / "from-saved-model"), "--format", "labelIds"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "from-saved-model" / source.name)), expected)
