"""Training: it learns, it resumes after a kill with the same step count, it exports, and it runs
under MirroredStrategy and with ICNet's cascade losses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from training_run import TINY_CONFIG

from segflow import checkpoints
from segflow.cli import cli
from segflow.errors import SegflowError

SUBPROCESS_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def _val_label_counts(records):
    from segflow.input_pipeline import make_dataset

    labels = np.concatenate([labels.numpy().ravel() for _, labels in make_dataset(records, "val", training=False, batch_size=4)])
    return np.bincount(labels[labels < 19], minlength=19)


@pytest.mark.slow
def test_a_few_dozen_steps_learn_far_beyond_an_untrained_or_constant_model(trained, records):
    """The threshold, 0.08 val mIoU, sits far above what a model that learned nothing scores.

    Measured on this data: randomly initialised models (seeds 0-3) score 0.003-0.021; the best
    constant prediction (every pixel the most frequent class) scores 0.015, the value computed
    below; a broken pipeline (labels not aligned with images, no learning) predicts close to a
    constant. The trained model scores 0.12-0.14 after its 40 steps.
    """
    history = trained.history
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4]
    assert [entry["step"] for entry in history] == [10, 20, 30, 40]
    assert all(entry["images_per_second"] > 0 and entry["wall_time_s"] > 0 for entry in history)
    assert all(0 < entry["val_seconds"] < entry["wall_time_s"] for entry in history)
    assert history[-1]["loss"] < history[0]["loss"] - 0.5

    counts = _val_label_counts(records)
    best_constant_miou = counts.max() / counts.sum() / np.count_nonzero(counts)
    majority_accuracy = counts.max() / counts.sum()
    assert best_constant_miou < 0.02
    assert history[-1]["val_miou"] > 0.08
    assert history[-1]["val_pixel_accuracy"] > majority_accuracy + 0.25
    assert trained.best_val_miou == max(entry["val_miou"] for entry in history)


@pytest.mark.slow
def test_training_raises_no_warning_about_its_own_arguments(training_warnings):
    """Keras warns "`shuffle=True` was passed, but will be ignored" when `fit` gets a dataset with
    its default shuffle=True; make_dataset shuffles, so `_fit` passes shuffle=False."""
    caught = training_warnings
    assert not [message for message in caught if "shuffle" in message], caught


@pytest.mark.slow
def test_the_final_model_is_exported_as_keras_and_as_a_saved_model(trained):
    import tensorflow as tf

    from segflow.evaluate import load_model

    model = load_model(trained.model_path)
    assert model.input_shape == (None, 64, 128, 3)
    assert model.output_shape == (None, 64, 128, 19)
    images = np.random.default_rng(0).normal(size=(2, 64, 128, 3)).astype("float32")
    saved_model = tf.saved_model.load(str(trained.saved_model_dir))  # keep it: serve() needs its variables
    served = saved_model.logits(images)  # the bare model; `serve` is tested in test_serving.py
    np.testing.assert_allclose(served.numpy(), model(images).numpy(), atol=1e-4)

    best = checkpoints.read_state(trained.out_dir / "checkpoints" / "best")
    assert best["val_miou"] == trained.best_val_miou
    assert list((trained.out_dir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    saved = json.loads((trained.out_dir / "config.json").read_text())
    assert saved == json.loads(TINY_CONFIG.model_dump_json())


@pytest.mark.slow
def test_validation_and_evaluation_share_the_exported_model_and_one_traced_predictor(trained, records, tmp_path):
    """The training process traces one predictor, on the model it exports: the per-epoch
    validation (batches of 2 val images, 4 epochs) and the evaluation (single images) all use
    that one graph, and the evaluation scores exactly what the exported file scores loaded anew."""
    from segflow.evaluate import evaluate_model

    assert trained.predictor.graph_function.experimental_get_tracing_count() == 1
    in_memory = evaluate_model(trained.model_path, records, tmp_path / "memory", model=trained.model, predictor=trained.predictor)
    assert trained.predictor.graph_function.experimental_get_tracing_count() == 1
    from_file = evaluate_model(trained.model_path, records, tmp_path / "file")
    assert in_memory["confusion_matrix"] == from_file["confusion_matrix"] and in_memory["miou"] == from_file["miou"]
    # The records are 64x128, the model's size: the last epoch's validation scored the same pixels.
    assert in_memory["miou"] == pytest.approx(trained.history[-1]["val_miou"], abs=1e-9)


@pytest.mark.slow
def test_a_restart_with_other_settings_is_refused_and_changes_nothing(trained, records):
    from segflow.train import train

    before = (trained.out_dir / "history.json").read_text()
    with pytest.raises(SegflowError, match=r"learning_rate: 0\.1 → 0\.2.*new --out"):
        train(TINY_CONFIG.model_copy(update={"learning_rate": 0.2}), records, trained.out_dir)
    assert (trained.out_dir / "history.json").read_text() == before


@pytest.mark.slow
def test_rerunning_a_finished_run_from_its_config_json_trains_no_further(trained, records):
    before = (trained.out_dir / "history.json").read_text()
    result = CliRunner().invoke(
        cli, ["train", "--config", str(trained.out_dir / "config.json"), "--records", str(records), "--out", str(trained.out_dir), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "40 steps, resumed from step 40" in result.output
    assert (trained.out_dir / "history.json").read_text() == before
    _, state = checkpoints.latest_checkpoint(trained.out_dir / "checkpoints")
    assert state["optimizer_iterations"] == 40


def _reference_loss(labels, logits, class_weights, ohem_threshold, ohem_min_kept):
    """Class-weighted, OHEM-selected mean pixel cross-entropy, in numpy (ENet weights, PSPNet's
    threshold/min-kept OHEM): sum(w·ce) / sum(w) over the kept, labelled pixels."""
    labels, logits = labels.reshape(-1), logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    valid = labels < logits.shape[-1]
    safe = np.where(valid, labels, 0)
    shifted = logits - logits.max(axis=1, keepdims=True)
    cross_entropy = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(safe)), safe]
    weights = valid * (np.ones(logits.shape[-1]) if class_weights is None else class_weights)[safe]
    if ohem_threshold is not None:
        probability = np.where(valid, np.exp(-cross_entropy), 2.0)
        kth = max(min(valid.sum(), ohem_min_kept) - 1, 0)
        weights = weights * (valid & (probability <= max(np.sort(probability)[kth], ohem_threshold)))
    return (cross_entropy * weights).sum() / weights.sum()


@pytest.mark.slow
def test_crops_adamw_class_weights_ohem_and_val_size_take_effect_and_export_at_the_full_size(
    records, tmp_path, monkeypatch
):
    """Each option has its effect: training batches are crops, the optimizer is AdamW, the loss
    equals a numpy class-weighted OHEM cross-entropy (not the plain one) on real labels, and the
    epoch-end validation runs at `val_image_size` (its model and its batches), not `image_size`."""
    import keras

    import segflow.optimizers
    from segflow import evaluate
    from segflow.cityscapes import CLASS_NAMES
    from segflow.config import TrainConfig
    from segflow.convert import read_manifest
    from segflow.evaluate import load_model
    from segflow.train import train

    seen = {}
    compile_, fit = keras.Model.compile, keras.Model.fit

    def spy_compile(model, *args, **kwargs):
        seen.setdefault("compile", kwargs)
        return compile_(model, *args, **kwargs)

    def spy_fit(model, x=None, *args, **kwargs):
        seen.setdefault("batch", next(iter(x)))
        return fit(model, x, *args, **kwargs)

    def spy_confusion_matrix(model, dataset, *args, **kwargs):
        seen.setdefault("val", (model.input_shape, next(iter(dataset))))
        return confusion_matrix(model, dataset, *args, **kwargs)

    confusion_matrix = evaluate.confusion_matrix
    monkeypatch.setattr(evaluate, "confusion_matrix", spy_confusion_matrix)
    monkeypatch.setattr(keras.Model, "compile", spy_compile)
    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    config = TrainConfig(
        architecture="unet", width=0.0625, image_size=(64, 128), crop_size=(64, 64), val_image_size=(32, 64),
        batch_size=2, epochs=1, steps_per_epoch=2, warmup_steps=0, optimizer="adamw", learning_rate=1e-3,
        class_weights=True, ohem=True, ohem_min_kept=1000, saved_model=False,
    )  # fmt: skip
    result = train(config, records, tmp_path / "run", verbose=0)
    assert [entry["step"] for entry in result.history] == [2]
    assert 0 < result.history[0]["val_miou"] < 1 and np.isfinite(result.history[0]["loss"])
    assert load_model(result.model_path).input_shape == (None, 64, 128, 3)  # trained on 64x64 crops
    # saved_model off: model.keras only; validation at 32x64 had its own model, not the exported one.
    assert result.saved_model_dir is None and not (tmp_path / "run" / "saved_model").exists()
    assert result.predictor is None and result.model.input_shape == (None, 64, 128, 3)

    images, labels = (np.asarray(tensor) for tensor in seen["batch"])
    assert images.shape == (2, 64, 64, 3) and labels.shape == (2, 64, 64)  # crops, not 64x128 images
    assert type(seen["compile"]["optimizer"]) is segflow.optimizers.AdamW  # Keras' AdamW, updating with TF kernels
    val_input_shape, (val_images, val_labels) = seen["val"]
    assert val_input_shape == (None, 32, 64, 3)  # the validation model takes val_image_size
    assert val_images.shape[1:] == (32, 64, 3) and val_labels.shape[1:] == (32, 64)  # val batches too
    # ENet weights 1/ln(1.02 + frequency) from the train split's pixel counts (Paszke et al. 2016, 5.2).
    class_pixels = read_manifest(records)["splits"]["train"]["class_pixels"]
    counts = np.array([class_pixels[name] for name in CLASS_NAMES], dtype=np.float64)
    class_weights = 1 / np.log(1.02 + counts / counts.sum())
    # Logits confident and right on every other pixel: those are easy, and OHEM must drop them;
    # on the others the true class's logit falls with its trainId, so class weights move the mean.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(*labels.shape, 19))
    labelled = labels < 19
    easy = (np.arange(labels.size).reshape(labels.shape) % 2 == 0) & labelled
    true_class = np.where(labelled, labels, 0)
    logits[easy, true_class[easy]] += 12.0
    hard = labelled & ~easy
    logits[hard, true_class[hard]] -= 0.5 * true_class[hard]
    loss = float(seen["compile"]["loss"](labels, logits.astype(np.float32)))
    expected = _reference_loss(labels, logits, class_weights, config.ohem_threshold, config.ohem_min_kept)
    assert loss == pytest.approx(expected, rel=1e-4)
    for ignored in (_reference_loss(labels, logits, None, config.ohem_threshold, config.ohem_min_kept),
                    _reference_loss(labels, logits, class_weights, None, config.ohem_min_kept)):  # fmt: skip
        assert abs(ignored - expected) > 0.05 * expected  # dropping either option shows


@pytest.mark.slow
def test_with_augment_on_device_the_step_gets_uint8_crops_trains_exports_and_resumes(records, tmp_path, monkeypatch):
    """The training model takes uint8 crops and colour maps (segflow.device_augment); checkpoints
    restore into it; the exported model still takes normalised float32 images of the full size."""
    import keras

    from segflow.config import TrainConfig
    from segflow.evaluate import load_model
    from segflow.train import train

    seen = {}
    fit = keras.Model.fit

    def spy_fit(model, x=None, *args, **kwargs):
        seen.setdefault("batch", next(iter(x)))
        seen.setdefault("input_names", sorted(model.input))
        return fit(model, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    config = TrainConfig(
        architecture="unet", width=0.0625, image_size=(64, 128), crop_size=(64, 64), val_image_size=(32, 64),
        batch_size=2, epochs=2, steps_per_epoch=2, warmup_steps=0, augment_on_device=True,
    )  # fmt: skip
    result = train(config, records, tmp_path / "run", verbose=0)
    assert [entry["step"] for entry in result.history] == [2, 4]
    assert all(np.isfinite(entry["loss"]) for entry in result.history) and 0 <= result.val_miou <= 1
    inputs, labels = seen["batch"]
    assert seen["input_names"] == ["augment", "image"]
    assert inputs["image"].dtype == "uint8" and inputs["image"].shape == (2, 64, 64, 3)
    assert inputs["augment"].shape == (2, 15) and labels.dtype == "uint8" and labels.shape == (2, 64, 64)
    exported = load_model(result.model_path)
    assert exported.input_shape == (None, 64, 128, 3) and exported.input.dtype == "float32"

    again = train(config, records, tmp_path / "run", verbose=0)  # restores the last checkpoint
    assert again.resumed_from_step == 4 and again.optimizer_updates == 4


# The first, killed run trains under MirroredStrategy on two logical CPU devices, which stand in
# for two GPUs (the same code path), so one pair of processes tests both distribution and resume.
FIRST_RUN_SCRIPT = """
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from segflow.config import train_config
from segflow.train import train

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
train(train_config(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[2], strategy=strategy, verbose=0)
"""
RESUME_SETTINGS = {
    "architecture": "unet", "width": 0.0625, "image_size": "64x128", "batch_size": 2, "epochs": 3,
    "steps_per_epoch": 6, "warmup_steps": 0, "checkpoint_every_steps": 2, "val_max_examples": 2,
}  # fmt: skip
RESUME_CLI_OPTIONS = [
    "--arch", "unet", "--width", "0.0625", "--image-size", "64x128", "--batch-size", "2", "--epochs", "3",
    "--steps-per-epoch", "6", "--warmup-steps", "0", "--checkpoint-every", "2", "--val-max-examples", "2",
]  # fmt: skip


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_after_the_same_number_of_steps(records, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", FIRST_RUN_SCRIPT, str(records), str(out), json.dumps(RESUME_SETTINGS)],
        env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # Kill it in the middle of epoch 2, as soon as its checkpoint of step 8 exists.
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "step-000000008").is_dir():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint of step 8 within 240 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (out / "model.keras").exists()  # killed before the end
    _, state = checkpoints.latest_checkpoint(out / "checkpoints")
    killed_at = state["step"]
    assert 8 <= killed_at < 18 and state["optimizer_iterations"] == killed_at
    # Epoch 1 ran on two replicas; its loss is their mean, not their sum (near ln(19) = 2.94).
    (epoch_1,) = json.loads((out / "history.json").read_text())
    assert epoch_1["step"] == 6 and 1.5 < epoch_1["loss"] < 4.0

    command = [sys.executable, "-m", "segflow", "train", "--records", str(records), "--out", str(out), "--quiet"]
    finished = subprocess.run(command + RESUME_CLI_OPTIONS, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"18 steps, resumed from step {killed_at}" in finished.stdout

    _, final = checkpoints.latest_checkpoint(out / "checkpoints")
    assert (final["step"], final["epoch"], final["optimizer_iterations"]) == (18, 3, 18)
    history = json.loads((out / "history.json").read_text())
    assert history[0] == epoch_1
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert [entry["step"] for entry in history] == [6, 12, 18]
    # The interrupted epoch (normally the 2nd) was finished with only its remaining steps.
    expected_steps = [end - killed_at if end - 6 < killed_at < end else 6 for end in (6, 12, 18)]
    assert [entry["steps_this_session"] for entry in history] == expected_steps
    assert (out / "model.keras").is_file() and (out / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_training_step_is_traced_once(optimizer):
    """Keras creates the optimizer's slots and the loss trackers inside the first trace unless
    they exist, and TensorFlow then traces the step a second time (the demo's ICNet: 59 CPU-s
    for its first step instead of 31). `build_training_model` creates them first."""
    import tensorflow as tf

    from segflow.config import TrainConfig
    from segflow.train import build_training_model

    config = TrainConfig(architecture="unet", width=0.0625, image_size=(32, 64), batch_size=2, optimizer=optimizer)
    model = build_training_model(config, records_dir=None, total_steps=10)
    traces = []
    train_step = model.train_step
    model.train_step = lambda data: (traces.append(1), train_step(data))[1]  # runs only while tracing
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(2, 32, 64, 3)).astype("float32"), rng.integers(0, 19, size=(2, 32, 64)).astype("int32"))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    assert len(traces) == 1
    assert int(model.optimizer.iterations.numpy()) == 3


@pytest.mark.slow
def test_icnet_loss_is_the_cascade_weighted_sum_over_its_three_outputs():
    from segflow.config import TrainConfig
    from segflow.losses import SegmentationCrossEntropy
    from segflow.train import build_inference_model, build_training_model, copy_weights

    config = TrainConfig(architecture="icnet", width=0.0625, image_size=(128, 256), batch_size=2, epochs=1, warmup_steps=0)
    model = build_training_model(config, records_dir=None, total_steps=10)
    # Built before any trace, so that the training step is traced once (see the test below).
    assert model.optimizer.built
    assert {metric.name: len(metric.variables) for metric in model.metrics} == {
        "loss": 2, "logits_loss": 2, "aux_1_8_loss": 2, "aux_1_16_loss": 2,
    }  # fmt: skip
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 128, 256, 3)).astype("float32")
    labels = rng.integers(0, 19, size=(2, 128, 256))
    labels[:, :10] = 255
    outputs = [output.numpy() for output in model(images, training=False)]
    total = float(model.compute_loss(x=images, y=(labels,) * 3, y_pred=outputs, training=False))
    loss = SegmentationCrossEntropy()
    per_output = [float(loss(labels, output)) for output in outputs]
    assert total == pytest.approx(per_output[0] + 0.4 * per_output[1] + 0.16 * per_output[2], rel=1e-4)

    inference = build_inference_model(config, (128, 256))
    copy_weights(model, inference)
    assert len(inference.outputs) == 1
    np.testing.assert_allclose(inference(images, training=False).numpy(), outputs[0], atol=1e-5)


def test_cli_rejects_a_bad_image_size_in_one_line(tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "--arch", "unet", "--records", str(tmp_path), "--out", str(tmp_path / "run"), "--image-size", "64by128"]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: invalid training settings: image_size: image size must look like HEIGHTxWIDTH, e.g. 512x1024; got '64by128'"
    ]
    assert not (tmp_path / "run").exists()


def test_cli_names_a_missing_records_folder(tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "--arch", "unet", "--records", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--image-size", "64x128"]
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: records folder {tmp_path / 'nope'} does not exist"


def test_the_progress_line_says_epoch_loss_val_miou_speed_and_eta():
    from segflow.train import progress_line

    entry = {"epoch": 2, "loss": 0.61384, "val_miou": 0.26789, "images_per_second": 211.34, "wall_time_s": 40.2}
    assert progress_line(entry, 6) == "epoch 2/6: loss 0.6138, val mIoU 0.2679, 211.3 images/s, ETA 161 s"
    assert progress_line({**entry, "loss": None, "val_miou": None}, 2).startswith("epoch 2/2: loss n/a, val mIoU n/a")
    # An epoch end completed after a kill: no steps this session, so no speed and no ETA.
    resumed = {**entry, "images_per_second": None, "wall_time_s": None}
    assert progress_line(resumed, 6) == "epoch 2/6: loss 0.6138, val mIoU 0.2679, n/a, ETA n/a"


def test_relay_passes_complete_lines_once_and_keeps_a_partial_line(tmp_path):
    from segflow.train_process import _relay

    log = tmp_path / "train.log"
    log.write_bytes(b"=== header\n")
    start = log.stat().st_size
    with open(log, "ab") as stream:
        stream.write(b"epoch 1/2: loss 1.0\n\nepoch 2/2: lo")
    lines = []
    offset = _relay(log, start, lines.append)
    assert lines == ["epoch 1/2: loss 1.0"]
    with open(log, "ab") as stream:
        stream.write(b"ss 0.5\n")
    _relay(log, offset, lines.append)
    assert lines == ["epoch 1/2: loss 1.0", "epoch 2/2: loss 0.5"]


def test_the_best_checkpoint_links_the_epoch_ends_weights_instead_of_saving_them_again(tmp_path):
    """An epoch end whose step checkpoint was just written gets `best/` holding that very file
    (one inode), with its own state and checksums; it stays intact after the step is pruned. When
    the epoch end has no step checkpoint of this session, the weights are saved."""
    import keras

    from segflow.checkpoints import WEIGHTS_FILE, copy_checkpoint, read_state, verify_checkpoint
    from segflow.train import StepCheckpointer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    directory = tmp_path / "checkpoints"
    checkpointer = StepCheckpointer(directory, every_steps=5, start_step=0, steps_per_epoch=5, best_miou=None)
    checkpointer.set_model(model)
    for step in range(5):
        checkpointer.on_train_batch_end(step, {"loss": 1.0})
    checkpointer.on_epoch_end(0, {"val_miou": 0.5})
    best, step_5 = directory / "best", directory / "step-000000005"
    assert (best / WEIGHTS_FILE).samefile(step_5 / WEIGHTS_FILE)
    assert verify_checkpoint(best) is None and read_state(best)["val_miou"] == 0.5 and read_state(best)["step"] == 5
    assert "val_miou" not in read_state(step_5)

    for epoch in (1, 2):
        for step in range(5):
            checkpointer.on_train_batch_end(step, {"loss": 1.0})
        checkpointer.on_epoch_end(epoch, {"val_miou": 0.4})  # not better: best/ stays at step 5
    assert not step_5.exists() and verify_checkpoint(best) is None and read_state(best)["step"] == 5

    resumed = StepCheckpointer(directory, every_steps=1000, start_step=15, steps_per_epoch=5, best_miou=0.5)
    resumed.set_model(model)
    resumed.consider_best(0.6)  # nothing saved at step 15 in this session: the weights are written
    assert not (best / WEIGHTS_FILE).samefile(directory / "step-000000015" / WEIGHTS_FILE)
    assert verify_checkpoint(best) is None and read_state(best)["val_miou"] == 0.6

    # The checkpoint to link was pruned meanwhile (damaged newer ones kept): the weights are saved.
    checkpointer.saved_step = checkpointer.step
    shutil.rmtree(checkpointer.saved_path)
    checkpointer.consider_best(0.7)
    assert verify_checkpoint(best) is None and read_state(best)["val_miou"] == 0.7

    copied = copy_checkpoint(best, directory, "copy", {"step": 15})
    assert verify_checkpoint(copied) is None and read_state(copied) == {"step": 15}
