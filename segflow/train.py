"""Train a segmentation model with Keras `fit`, resumably, and export it for inference and serving.

A run lives in one output folder:

    config.json        the TrainConfig; a restart with other settings is refused
    history.json       one entry per finished epoch: loss, val mIoU, images/s, wall time
    tensorboard/       TensorBoard logs
    checkpoints/       step-NNNNNNNNN/ (the latest two) and best/ (highest val mIoU)
    model.keras        the final model, single output at `image_size`, float32
    saved_model/       the same model as a TF SavedModel for TF Serving: uint8 RGB of any size in,
                       `label_ids` / `train_ids` out (`segflow.serving`); not with `saved_model`
                       off (the demo: its export traces the model twice more)

Restarting with the same folder resumes from the latest checkpoint: weights, optimizer state
(momentum, step count) and the learning-rate schedule continue exactly, an interrupted epoch is
finished with only its remaining steps, so the run ends after the same number of optimizer steps
as an uninterrupted one. The data stream is not replayed: a resumed run draws a fresh shuffle
and augmentation seeded by (seed, step), so it sees different (equally random) batches.

The model trains at `crop_size` (or `image_size`); validation and export use a fresh model at
`image_size` (float32, single output) that receives the trained weights by layer name: one model
and one traced predictor (`segflow.evaluate.make_predictor`) for the per-epoch validation, the
export and the evaluation that `segflow train --evaluate` runs in the same process
(`TrainResult.model`, `TrainResult.predictor`). Only a `val_image_size` other than `image_size`
builds and traces a second one.

One model, one number: a run hands over its FINAL weights, as the reference schedules
(MMSegmentation, TF Model Garden) report theirs: choosing the best epoch on val and then quoting
its val score would select on the evaluation split. `model.keras`, the SavedModel, the number
`segflow train` prints last (`TrainResult.val_miou`), `metrics.json`, the report and the
champion rule all refer to the final weights. The best epoch's weights stay in
`checkpoints/best/`, labelled as selected on val, and are not exported. The per-epoch val mIoU is computed at
`val_image_size` (labels resized nearest) for speed; `segflow evaluate` scores at full resolution.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from segflow import atomic, checkpoints, storage
from segflow.config import TrainConfig
from segflow.errors import SegflowError

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
KEEP_STEP_CHECKPOINTS = 2


class TrainResult(NamedTuple):
    out_dir: Path
    model_path: Path
    saved_model_dir: Path | None  # None when `config.saved_model` is off
    history: list[dict]
    steps: int  # optimizer steps of the whole run
    resumed_from_step: int  # 0 for a fresh run
    best_val_miou: float | None  # of checkpoints/best/ (selected on val; not exported)
    val_miou: float | None = None  # of the exported (final) weights, measured at the last epoch's end
    best_epoch: int | None = None
    skipped_checkpoints: tuple = ()  # (path, what is wrong) of damaged checkpoints passed over
    optimizer_updates: int | None = None  # applied; fewer than `steps` when loss scaling skipped some
    loss_scale: float | None = None  # mixed precision's dynamic loss scale at the end
    out_uri: str | None = None  # the results-store location when `out_dir` was an s3:// URI
    # The exported model in memory and, when validation traced one for it, its predictor
    # (`segflow.evaluate.make_predictor`): evaluate with them, without loading and tracing again.
    model: keras.Model | None = None
    predictor: object | None = None


def train(
    config: TrainConfig,
    records_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    strategy=None,
    verbose: int = 2,
    work_dir: str | os.PathLike | None = None,
) -> TrainResult:
    """Train `config.architecture` on the `train` split of `records_dir`, scoring on `val` each epoch.

    Args:
        config: what to train and how.
        records_dir: a folder of `{split}-*.tfrecord` shards from `segflow convert`.
        out_dir: the run folder (see the module docstring); reused to resume. An `s3://` URI makes
            the run live in the store: it trains in a local working folder and uploads each
            checkpoint as soon as it is written, and resumes from the store's newest complete
            checkpoint when that is newer than the local one (`segflow.run_sync`).
        strategy: a `tf.distribute.Strategy`; default: MirroredStrategy over all GPUs if several
            are visible, else the default (single device) strategy.
        verbose: Keras `fit` verbosity (0 silent, 1 progress bar, 2 one line per epoch).
        work_dir: the local working folder of an `s3://` run; default: one derived from the URI
            under $SEGFLOW_CACHE (`segflow.run_sync.default_work_dir`).

    Raises SegflowError: a missing records folder; other settings than the run's; checkpoints
    that exist but are all damaged (a damaged newest one is skipped with a warning); a loss or
    weights that are not finite (the run stops at that step, keeping the checkpoints before it,
    and exports nothing); a full disk.
    """
    from segflow import input_pipeline, run_sync

    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        raise SegflowError(f"records folder {records_dir} does not exist")
    sync = run_sync.RunSync(str(out_dir), work_dir) if storage.is_s3(out_dir) else None
    out_dir = sync.local_dir if sync else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sync:
        sync.restore()
    resume = checkpoints.find_resumable(out_dir / CHECKPOINT_DIR)
    latest = (resume.path, resume.state) if resume.path else None
    if latest is None:
        check_backbone_weights(config.backbone_weights)
    _check_same_run(config, out_dir / CONFIG_FILE, resuming=latest is not None)

    num_train = input_pipeline.count_examples(records_dir, "train")
    steps_per_epoch = config.steps_per_epoch or num_train // config.batch_size
    if steps_per_epoch < 1:
        raise SegflowError(f"{records_dir} has {num_train} train examples, fewer than one batch of {config.batch_size}")
    total_steps = steps_per_epoch * config.epochs
    strategy = strategy or default_strategy()
    if config.batch_size % strategy.num_replicas_in_sync:
        raise SegflowError(
            f"batch size {config.batch_size} does not split evenly over {strategy.num_replicas_in_sync} devices"
        )
    start_step = latest[1]["step"] if latest else 0

    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    try:
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with strategy.scope():
            model = build_training_model(config, records_dir, total_steps, backbone=latest is None)
            if latest:
                checkpoints.restore_checkpoint(model, latest[0])
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    print(input_pipeline.startup_line(config, records_dir, model), flush=True)
    # The exported model: float32, single output, at the full image size; also the validation
    # model when validation runs at that size.
    export_model = build_inference_model(config, config.image_size)
    try:
        if sync:
            sync.start()
        predictor = _fit(
            config, model, records_dir, out_dir, start_step, steps_per_epoch, verbose,
            resume_state=resume.state, on_checkpoint=sync.checkpoint_saved if sync else None,
            inference_model=export_model,
        )  # fmt: skip
        _check_finite_weights(model, total_steps)  # never export a diverged model
        copy_weights(model, export_model)
        model_path, saved_model_dir = export(export_model, out_dir, saved_model=config.saved_model)
        if sync:
            sync.finish()
    finally:
        if sync:
            sync.stop()

    best = checkpoints.best_state(out_dir / CHECKPOINT_DIR) or {}
    history = read_history(out_dir)
    # The exported weights are the final ones: their val mIoU is the last epoch's, if that epoch
    # ended after the run's last step (a run killed between its last step and the epoch-end
    # validation has none).
    final = history[-1]["val_miou"] if history and history[-1]["step"] == total_steps else None
    return TrainResult(
        out_dir, model_path, saved_model_dir, history, total_steps, start_step,
        best.get("val_miou"), final, best.get("epoch"),
        skipped_checkpoints=tuple(resume.skipped),
        optimizer_updates=_optimizer_steps(model),
        loss_scale=_loss_scale(model),
        out_uri=sync.uri if sync else None,
        model=export_model,
        predictor=predictor,
    )  # fmt: skip


def default_strategy():
    """MirroredStrategy when several GPUs are visible, else TF's default single-device strategy."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def build_training_model(config: TrainConfig, records_dir: Path, total_steps: int, *, backbone: bool = True) -> keras.Model:
    """The model at the training size, compiled with loss(es), optimizer and schedule; with
    `backbone`, its encoder starts from `config.backbone_weights` (a resumed run restores a
    checkpoint instead). With `config.augment_on_device` it takes uint8 crops and their colour
    maps (`segflow.device_augment.with_device_augment`)."""
    from segflow import models, optimizers
    from segflow.losses import SegmentationCrossEntropy
    from segflow.schedules import PolyWarmup

    loss_weights = models.LOSS_WEIGHTS.get(config.architecture)
    with backbone_weights_file(config.backbone_weights if backbone else "none") as weights:
        model = models.build(
            config.architecture,
            input_shape=(*config.train_size, 3),
            width=config.width,
            aux_outputs=loss_weights is not None,
            **({"weights": weights} if weights else {}),
        )
    if config.batchnorm_momentum is not None:
        for layer in _all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.batchnorm_momentum
    if config.augment_on_device:  # uint8 crops in; jitter and normalisation in the step
        from segflow.device_augment import with_device_augment

        model = with_device_augment(model)
    class_weights = _class_weights(records_dir) if config.class_weights else None
    loss = SegmentationCrossEntropy(
        class_weights=class_weights,
        ohem_threshold=config.ohem_threshold if config.ohem else None,
        ohem_min_kept=config.ohem_min_kept,
    )
    schedule = PolyWarmup(
        config.learning_rate,
        total_steps=total_steps,
        warmup_steps=min(config.warmup_steps, total_steps // 5),
        power=config.poly_power,
    )
    if config.optimizer == "sgd":
        optimizer = optimizers.SGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    # Decay only kernels: biases and normalisation scales/offsets are not regularised.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(
        optimizer=optimizer,
        loss=[loss] * len(loss_weights) if loss_weights else loss,
        loss_weights=list(loss_weights) if loss_weights else None,
        jit_compile=config.jit,
    )
    _build_training_state(model, config.batch_size, config.train_size)
    return model


def _build_training_state(model: keras.Model, batch_size: int, train_size: tuple[int, int]) -> None:
    """Create the optimizer's slots and the loss trackers now, outside any trace.

    Without a distribution strategy scope, Keras 3's TensorFlow trainer leaves them to the first
    trace of the training step (`keras/src/backend/tensorflow/trainer.py`,
    `_maybe_symbolic_build`), and a `tf.function` that creates variables is traced twice: once
    creating them, once more without. Building them here is the same symbolic build Keras runs
    under a strategy and on its other backends; it halves the tracing of the first step (the
    demo's ICNet: 59 → 31 CPU-s, plus 3 CPU-s here; BENCHMARKS.md, 'Demo').
    """
    labels = keras.KerasTensor((batch_size, *train_size), "int32")
    num_outputs = len(model.outputs)
    model._symbolic_build(data_batch=(model.input, (labels,) * num_outputs if num_outputs > 1 else labels))


def check_backbone_weights(setting: str) -> None:
    """A local weights file must exist and an s3:// one be there, before any work starts."""
    if setting in ("none", "imagenet"):
        return
    if storage.is_s3(setting):
        if not storage.exists(setting):
            raise SegflowError(f"backbone_weights: {setting} does not exist")
    elif not Path(setting).expanduser().is_file():
        raise SegflowError(f"backbone_weights: file {setting} not found")


@contextlib.contextmanager
def backbone_weights_file(setting: str):
    """What `segflow.models.build(weights=...)` takes for a `backbone_weights` setting: None for
    'none', 'imagenet' as is, a local path, or an s3:// file downloaded to a temporary folder
    (removed on exit; the file's name is kept, its suffix tells Keras the format)."""
    if setting == "none":
        yield None
    elif setting == "imagenet":
        yield "imagenet"
    elif storage.is_s3(setting):
        with tempfile.TemporaryDirectory(prefix="segflow-backbone-") as folder:
            yield str(storage.download_file(setting, Path(folder) / setting.rstrip("/").rsplit("/", 1)[-1]))
    else:
        yield str(Path(setting).expanduser())


def build_inference_model(config: TrainConfig, image_size: tuple[int, int]) -> keras.Model:
    """A fresh float32, single-output model of the run's architecture at `image_size`."""
    from segflow import models

    return models.build(config.architecture, input_shape=(*image_size, 3), width=config.width)


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of every layer of `target` from the layer of the same name in `source`.

    The layers' weights do not depend on the input size, so this moves a model trained on crops
    to the full image size, and drops auxiliary heads (present only in `source`).
    """
    source_layers = {layer.name: layer for layer in _all_layers(source)}
    for layer in _all_layers(target):
        if not layer.weights:
            continue
        if layer.name not in source_layers:
            raise SegflowError(f"layer {layer.name!r} of {target.name} has no namesake in {source.name}")
        layer.set_weights(source_layers[layer.name].get_weights())


def _all_layers(model: keras.Model):
    """Leaf layers, looking inside nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def export(model: keras.Model, out_dir: Path, *, saved_model: bool = True) -> tuple[Path, Path | None]:
    """Save `model` as `model.keras` and, with `saved_model`, as a TF SavedModel in `saved_model/`
    (uint8 images of any size in, labelIds and trainIds out: `segflow.serving`), each atomically.
    Returns their paths (None for the SavedModel when not written)."""
    from segflow.serving import export_saved_model

    model_path = out_dir / MODEL_FILE
    descriptor, temporary = tempfile.mkstemp(dir=out_dir, prefix=".model.", suffix=".keras")
    os.close(descriptor)
    try:
        model.save(temporary)
        os.replace(temporary, model_path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    if not saved_model:
        return model_path, None

    saved_model_dir = out_dir / SAVED_MODEL_DIR
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".saved_model."))
    try:
        export_saved_model(model, staging / SAVED_MODEL_DIR)
        if saved_model_dir.exists():
            os.replace(saved_model_dir, staging / "previous")
        os.replace(staging / SAVED_MODEL_DIR, saved_model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_path, saved_model_dir


def read_history(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []


# === Fit ===


def _fit(
    config, model, records_dir, out_dir, start_step, steps_per_epoch, verbose, *, inference_model,
    resume_state=None, on_checkpoint=None,
):  # fmt: skip
    """Run the remaining steps: first the epoch-end work of an epoch whose last step was
    checkpointed but whose validation or history entry was not (a kill at an epoch boundary),
    then the rest of an interrupted epoch, then the whole epochs.

    Validation runs on `inference_model` (a model at `image_size`) when `val_image_size` is that
    size too, else on a model built at it. Returns the traced predictor of `inference_model`, or
    None when validation used another model or nothing was left to run."""
    from segflow import input_pipeline

    total_steps = steps_per_epoch * config.epochs
    first_epoch, done_in_epoch = divmod(start_step, steps_per_epoch)
    epoch_end_missing = start_step > 0 and not done_in_epoch and not _epoch_end_done(out_dir, first_epoch)
    if start_step >= total_steps and not epoch_end_missing:
        return None
    num_outputs = len(model.outputs)

    def train_data(first_step: int):
        """The augmented stream from `first_step` on: seeded by it, so the batches of a resumed
        run differ from those it already trained on."""
        batches = input_pipeline.make_dataset(
            records_dir,
            split="train",
            training=True,
            batch_size=config.batch_size,
            crop_size=config.train_size,
            resize=config.image_size,
            scale_range=config.scale_range,
            seed=config.seed + first_step,
            cache_decoded=config.cache_decoded,
            augment_on_device=config.augment_on_device,
        )
        if num_outputs > 1:  # ICNet's cascade: every output is scored against the same labels
            batches = batches.map(lambda images, labels: (images, (labels,) * num_outputs))
        return batches

    val_data = input_pipeline.make_dataset(
        records_dir,
        split="val",
        training=False,
        batch_size=config.batch_size,
        resize=config.val_image_size or config.image_size,
    )
    if config.val_max_examples:
        val_data = val_data.unbatch().take(config.val_max_examples).batch(config.batch_size)

    checkpoint_dir = out_dir / CHECKPOINT_DIR
    best = checkpoints.best_state(checkpoint_dir)
    val_size = tuple(config.val_image_size or config.image_size)
    val_model = inference_model if val_size == tuple(config.image_size) else build_inference_model(config, val_size)
    validation = ValidationMIoU(val_model, val_data)
    history = HistoryWriter(out_dir / HISTORY_FILE, config.batch_size, steps_per_epoch, config.epochs)
    checkpointer = StepCheckpointer(
        checkpoint_dir, config.checkpoint_every_steps, start_step, steps_per_epoch,
        best["val_miou"] if best else None, on_checkpoint,
    )  # fmt: skip
    callbacks = [
        FiniteLossGuard(checkpoint_dir, start_step),  # first: no checkpoint of a diverged step
        validation,
        history,
        checkpointer,
        keras.callbacks.TensorBoard(str(out_dir / TENSORBOARD_DIR)),
    ]
    if epoch_end_missing:
        _finish_epoch_end(model, first_epoch - 1, resume_state or {}, validation, history, checkpointer)
    if done_in_epoch:  # finish the interrupted epoch with its remaining steps only
        model.fit(
            train_data(start_step),
            initial_epoch=first_epoch,
            epochs=first_epoch + 1,
            steps_per_epoch=steps_per_epoch - done_in_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # make_dataset shuffles; Keras' default True only warns for a Dataset
        )
        first_epoch += 1
    if first_epoch < config.epochs:
        model.fit(
            train_data(first_epoch * steps_per_epoch),
            initial_epoch=first_epoch,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # make_dataset shuffles; Keras' default True only warns for a Dataset
        )
    return validation.predictor if val_model is inference_model else None


def _epoch_end_done(out_dir: Path, epochs: int) -> bool:
    """Whether `history.json` holds epoch `epochs` (1-based) and `best/` has considered it."""
    entry = next((item for item in read_history(out_dir) if item["epoch"] == epochs), None)
    if entry is None:
        return False
    best = checkpoints.best_state(out_dir / CHECKPOINT_DIR)
    miou = entry.get("val_miou")
    return miou is None or (best is not None and best["val_miou"] >= miou)


def _finish_epoch_end(model, epoch, state, validation, history, checkpointer) -> None:
    """Do the epoch-end work a kill skipped, with the restored weights (those of the epoch's last
    step exactly): validate, write the history entry if it is missing, update `best/`."""
    for callback in (validation, history, checkpointer):
        callback.set_model(model)
    entry = next((item for item in read_history(history.path.parent) if item["epoch"] == epoch + 1), None)
    if entry is None:
        logs = {"loss": state.get("epoch_loss")}
        validation.on_epoch_end(epoch, logs)
        history.write_entry(epoch, logs, steps=0, images_per_second=None, wall_time_s=None)
    else:
        logs = {"val_miou": entry.get("val_miou")}
    checkpointer.consider_best(logs.get("val_miou"))


class FiniteLossGuard(keras.callbacks.Callback):
    """Stops training with a SegflowError at the first step whose loss is NaN or infinite (Keras'
    running mean of the epoch's loss: non-finite from that step on), before any later callback
    checkpoints the diverged weights."""

    def __init__(self, checkpoint_dir: Path, start_step: int):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.step = start_step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        loss = float(np.asarray((logs or {}).get("loss", 0.0)))
        if not np.isfinite(loss):
            raise _diverged(f"the loss is {loss}", self.step, self.checkpoint_dir)


class ValidationMIoU(keras.callbacks.Callback):
    """At each epoch end: copy the weights into the validation model, score the val split with
    `segflow.metrics`, and add `val_miou` and `val_pixel_accuracy` to the epoch's logs."""

    def __init__(self, val_model: keras.Model, val_data):
        from segflow.evaluate import make_predictor

        super().__init__()
        self.val_model = val_model
        self.val_data = val_data
        self.predictor = make_predictor(val_model)  # traced once, reused every epoch

    def on_epoch_end(self, epoch, logs=None):
        from segflow.evaluate import confusion_matrix
        from segflow.metrics import summarize

        started = time.perf_counter()
        copy_weights(self.model, self.val_model)
        scores = summarize(confusion_matrix(self.val_model, self.val_data, self.predictor).counts)
        logs["val_miou"] = scores["miou"] or 0.0
        logs["val_pixel_accuracy"] = scores["pixel_accuracy"] or 0.0
        logs["val_seconds"] = time.perf_counter() - started


class HistoryWriter(keras.callbacks.Callback):
    """Keeps `history.json` (one entry per epoch, rewritten atomically) across restarts: an epoch
    trained again after an interruption replaces its earlier entry. `step` counts batches;
    `optimizer_updates` the updates applied (fewer under mixed precision when the dynamic loss
    scale skipped some), `loss_scale` that scale (mixed precision only).

    Prints one progress line per epoch (`epoch 2/6: loss 0.6138, val mIoU 0.2679, 211.3 images/s,
    ETA 80 s`), which the pipeline relays from the training process to the terminal and Prefect;
    the ETA assumes the remaining epochs take as long as this one."""

    def __init__(self, path: Path, batch_size: int, steps_per_epoch: int, epochs: int):
        super().__init__()
        self.path = path
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.last_batch_ended = time.perf_counter()
        if self.steps == 1:
            self.first_batch_ended = self.last_batch_ended

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        # Images/s over steps 2..n: the first step of a `fit` call includes tracing the graph.
        if self.steps > 1:
            seconds, images = self.last_batch_ended - self.first_batch_ended, (self.steps - 1) * self.batch_size
        else:
            seconds, images = self.last_batch_ended - self.epoch_started, self.batch_size
        self.write_entry(
            epoch, logs, self.steps, images_per_second=images / seconds, wall_time_s=time.perf_counter() - self.epoch_started
        )

    def write_entry(self, epoch, logs, steps, images_per_second, wall_time_s) -> None:
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        loss = logs.get("loss")
        entry = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * self.steps_per_epoch,
            "optimizer_updates": _optimizer_steps(self.model),
            "loss": None if loss is None else float(loss),
            "val_miou": logs.get("val_miou"),
            "val_pixel_accuracy": logs.get("val_pixel_accuracy"),
            "val_seconds": logs.get("val_seconds"),  # of the epoch-end validation, for the benchmarks
            "learning_rate": logs["learning_rate"],
            "images_per_second": images_per_second,
            "wall_time_s": wall_time_s,
            # Fewer than steps_per_epoch when this epoch was resumed after an interruption; 0 when
            # only its epoch-end work was done after a kill at its last step.
            "steps_this_session": steps,
        }
        if _loss_scale(self.model) is not None:
            entry["loss_scale"] = _loss_scale(self.model)
        history = [item for item in read_history(self.path.parent) if item["epoch"] < entry["epoch"]]
        atomic.write_json(self.path, [*history, entry])
        print(progress_line(entry, self.epochs), flush=True)


def progress_line(entry: dict, epochs: int) -> str:
    """One history entry as the line a person follows: epoch, loss, val mIoU, images/s, ETA."""
    def number(value, form: str, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:{form}}{unit}"

    # An epoch whose end was only completed after a kill (no steps this session) has no speed.
    seconds = entry["wall_time_s"]
    eta = None if seconds is None else round((epochs - entry["epoch"]) * seconds)
    return (f"epoch {entry['epoch']}/{epochs}: loss {number(entry['loss'], '.4f')}, "
            f"val mIoU {number(entry['val_miou'], '.4f')}, {number(entry['images_per_second'], '.1f', ' images/s')}, "
            f"ETA {number(eta, 'd', ' s')}")  # fmt: skip


class StepCheckpointer(keras.callbacks.Callback):
    """Saves a resumable checkpoint every `every_steps` steps and at each epoch end, and the
    weights with the best `val_miou` so far in `best/` (linked to the epoch end's checkpoint, whose
    weights they are); calls `on_checkpoint(path)` after each."""

    def __init__(self, directory: Path, every_steps: int, start_step: int, steps_per_epoch: int, best_miou, on_checkpoint=None):
        super().__init__()
        self.directory = directory
        self.every_steps = every_steps
        self.step = start_step
        self.steps_per_epoch = steps_per_epoch
        self.best_miou = best_miou
        self.saved_step = start_step
        self.saved_path = None  # the step checkpoint this session wrote last
        self.on_checkpoint = on_checkpoint
        self.epoch_loss = None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        # Keras' running mean over the epoch so far: the epoch's loss when this is its last step.
        self.epoch_loss = float(np.asarray((logs or {}).get("loss", np.nan)))
        if self.step % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if self.saved_step != self.step:
            self._save()
        self.consider_best((logs or {}).get("val_miou"))

    def consider_best(self, miou) -> None:
        if miou is not None and (self.best_miou is None or miou > self.best_miou):
            self.best_miou = miou
            state = {**self._state(), "val_miou": miou}
            linkable = self.saved_path is not None and (self.saved_path / checkpoints.WEIGHTS_FILE).is_file()
            if linkable and self.saved_step == self.step:  # the same weights
                path = checkpoints.copy_checkpoint(self.saved_path, self.directory, checkpoints.BEST_DIR, state)
            else:
                _check_finite_weights(self.model, self.step)
                path = checkpoints.save_checkpoint(self.model, self.directory, checkpoints.BEST_DIR, state)
            if self.on_checkpoint:
                self.on_checkpoint(path)

    def _state(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "optimizer_iterations": _optimizer_steps(self.model),
            "epoch_loss": self.epoch_loss,
        }

    def _save(self):
        _check_finite_weights(self.model, self.step)
        path = checkpoints.save_checkpoint(
            self.model, self.directory, checkpoints.step_checkpoint_name(self.step), self._state()
        )
        checkpoints.prune_step_checkpoints(self.directory, KEEP_STEP_CHECKPOINTS)
        self.saved_step, self.saved_path = self.step, path
        if self.on_checkpoint:
            self.on_checkpoint(path)


# === Helpers ===


def _optimizer_steps(model: keras.Model) -> int:
    """Updates the optimizer has applied (under a distribution strategy, its mirrored counter;
    under mixed precision, the inner optimizer's, which skips steps with non-finite gradients)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations.value))


def _loss_scale(model: keras.Model) -> float | None:
    """The dynamic loss scale of a mixed-precision optimizer; None without one."""
    scale = getattr(model.optimizer, "dynamic_scale", None)
    return None if scale is None else float(keras.ops.convert_to_numpy(scale.value))


def _check_finite_weights(model: keras.Model, step: int) -> None:
    """Raise SegflowError when any weight is NaN or infinite (checked before every checkpoint
    and before the export)."""
    for variable in model.weights:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable.value))):
            raise _diverged(f"weight {variable.path} is not finite", step, None)


def _diverged(what: str, step: int, checkpoint_dir: Path | None) -> SegflowError:
    kept = checkpoints.latest_checkpoint(checkpoint_dir, verify=True) if checkpoint_dir else None
    where = f"; the last checkpoint before it, step {kept[1]['step']}, is kept in {kept[0]}" if kept else ""
    return SegflowError(
        f"training diverged at step {step}: {what}{where}; nothing was exported. "
        "Lower the learning rate (--lr) or the warmup, then train into a new --out folder"
    )


def _check_same_run(config: TrainConfig, path: Path, resuming: bool) -> None:
    """Refuse to resume a run's checkpoint with other settings; otherwise record the settings."""
    current = json.loads(config.model_dump_json())
    if resuming and path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        if changed:
            details = ", ".join(f"{key}: {saved.get(key)!r} → {current.get(key)!r}" for key in changed)
            raise SegflowError(
                f"{path.parent} holds a run with other settings ({details}); "
                "resume with the same settings or choose a new --out folder"
            )
    atomic.write_json(path, current)


def _class_weights(records_dir: Path) -> np.ndarray:
    """ENet weights from the train split's class pixel counts in the records' manifest."""
    from segflow.cityscapes import CLASS_NAMES
    from segflow.convert import read_manifest
    from segflow.losses import class_weights_from_pixel_counts

    manifest = read_manifest(records_dir)
    if manifest is None or "train" not in manifest.get("splits", {}):
        raise SegflowError(f"{records_dir} has no manifest.json with train class pixels, which class weights need")
    class_pixels = manifest["splits"]["train"]["class_pixels"]
    return class_weights_from_pixel_counts([class_pixels[name] for name in CLASS_NAMES])


