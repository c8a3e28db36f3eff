"""The tf.data input pipeline: TFRecord shards in, batches of `(images, labels)` out.

It only composes: list shards → interleaved parallel reads → [decode the PNGs → cache] →
(shuffle) → `records.decode_example` → `augment.parse_train` (or, cached, `augment.augment_train`)
or `augment.parse_eval` in a parallel map → batch → prefetch. Batches:

- images: float32 `[B, H, W, 3]`, normalised with `augment.MEAN_RGB` / `augment.STDDEV_RGB`;
- labels: int32 `[B, H, W]` of trainIds, 255 (`IGNORE_LABEL`) for void and crop padding; use
  `keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)`.

With `augment_on_device`, training batches leave colour jitter and normalisation to the
training step (`segflow.device_augment`): images are uint8 crops with their per-example colour
maps, labels uint8, a quarter of the bytes to copy to the device.

With an integer seed the stream is reproducible: shard order, shuffle and every example's
augmentation (a stateless seed `(seed, position in the stream)`) depend only on it.

Decode once (`cache_decoded`): training can keep the decoded uint8 images and labels in memory
after the first epoch (`tf.data.Dataset.cache` after decoding, before augmentation), so later
epochs skip the PNG decoding, most of the pipeline's CPU time on full-size Cityscapes records
(see BENCHMARKS.md). It takes `H × W × 4` bytes per example (3 image + 1 label channels): 23.2 GiB
for the 2975 Cityscapes train images at 1024×2048. Augmentation stays random in every epoch.
The first epoch is the same stream as without the cache (up to the last `shuffle_buffer`
examples, which the shuffle mixes with the next epoch's); later epochs keep the first epoch's
shard order and rely on the shuffle buffer, which then holds references into the cache, not
copies.

`startup_line` tells a training run, at its start, whether its decoded images are cached and,
with GPUs, whether this machine's CPUs can supply the images the GPUs could train on.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import tensorflow as tf

from segflow import augment
from segflow.errors import SegflowError
from segflow.records import decode_example, shard_pattern

SHUFFLE_BUFFER = 64  # serialized examples; a full-size Cityscapes record is ~2-4 MB
MAX_PARALLEL_READS = 16
# "auto" caches the decoded images when they take at most this fraction of the memory available
# now; the rest is left to the shuffle buffer, prefetched batches, the model and the TF runtime.
CACHE_MEMORY_FRACTION = 0.5
CACHE_SETTINGS = ("auto", "on", "off")

# Demand side of `startup_line` and benchmarks/bench_input.py: NVIDIA H100 Tensor Core GPU
# datasheet, H100 SXM, "BF16 Tensor Core 1,979 teraFLOPS" with sparsity, i.e. 989 dense; a
# well-tuned training step reaches ~40 % of it (model FLOPs utilisation); training costs ~3 ×
# the forward FLOPs (forward, then gradients for activations and for weights).
H100_BF16_DENSE_TFLOPS = 989.0
UTILISATION = 0.4
TRAINING_FLOPS_PER_FORWARD = 3.0

logger = logging.getLogger(__name__)


def make_dataset(
    records: str | os.PathLike,
    split: str | None = None,
    *,
    training: bool,
    batch_size: int,
    crop_size: tuple[int, int] | None = None,
    resize: tuple[int, int] | None = None,
    scale_range: tuple[float, float] = augment.SCALE_RANGE,
    photometric: bool = True,
    seed: int | None = 0,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    repeat: bool | None = None,
    cache_decoded: str = "off",
    augment_on_device: bool = False,
) -> tf.data.Dataset:
    """Batches of `(images, labels)` from TFRecord shards (see the module docstring for dtypes).

    Training: shuffled, augmented (`augment.parse_train`: base size `resize`, random scale in
    `scale_range`, `crop_size` crops padded with 255, flips, colour jitter), repeated, and the
    last partial batch dropped. Evaluation: records in shard order, `augment.parse_eval` (full
    resolution, or `resize`), every example once, the last batch may be smaller; all images of
    the split must share one size unless `resize` is given or `batch_size` is 1.

    Args:
        records: a folder of `{split}-*-of-*.tfrecord` shards (give `split`), or a glob pattern.
        split: `"train"`, `"val"` or `"test"` when `records` is a folder.
        training: augment and shuffle (True) or evaluate (False).
        batch_size: examples per batch.
        crop_size: `(height, width)` of training crops; required when training.
        resize: training: base size before random scaling; evaluation: output size.
        scale_range: training: `(min, max)` random scale factor.
        photometric: training: jitter brightness, contrast, saturation and hue.
        seed: makes shard order, shuffle and augmentation reproducible; None: a fresh random
            stream each time, and elements may come out of order for speed.
        shuffle_buffer: training: serialized examples held for shuffling.
        repeat: loop forever; default: `training`.
        cache_decoded: training: keep the decoded images and labels in memory after the first
            epoch: `"on"`, `"off"`, or `"auto"` (on when they fit, see `cache_decision`).
        augment_on_device: training: leave colour jitter and normalisation to the training
            step (`segflow.device_augment`); batches are then `({"image": uint8 [B, H, W, 3],
            "augment": float32 [B, 15]}, uint8 labels [B, H, W])`.

    Example:
        make_dataset("records", "train", training=True, batch_size=8, crop_size=(512, 1024))
    """
    if batch_size < 1:
        raise SegflowError(f"batch_size must be at least 1, got {batch_size}")
    if training and crop_size is None:
        raise SegflowError("crop_size is required for a training dataset, e.g. (512, 1024)")
    files = list_shards(records, split)
    repeat = training if repeat is None else repeat
    deterministic = seed is not None or not training
    cache, needed, _ = cache_decision(cache_decoded, records, split) if training else (False, 0, 0)
    if cache:
        logger.info("keeping %s of decoded train images in memory after the first epoch", _size(needed))

    # One epoch of serialized examples, the shards in a new random order in each epoch.
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), MAX_PARALLEL_READS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if cache:
        dataset = dataset.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic).cache()
    if repeat:
        dataset = dataset.repeat()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
        # Each example's augmentation seed is (seed, its position in the stream): reproducible,
        # and different in every epoch.
        example_seed = _random_seed() if seed is None else seed

        def parse(index, example):
            image, label = example if cache else _decode(example)
            pair_seed = tf.stack([tf.constant(example_seed, tf.int64), index])
            return augment.augment_train(
                image, label, crop_size, scale_range, resize, seed=pair_seed, photometric=photometric,
                for_device=augment_on_device,
            )  # fmt: skip

        dataset = dataset.enumerate().map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    else:
        dataset = dataset.map(
            lambda serialized: augment.parse_eval(decode_example(serialized), resize=resize),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic
    # tf.data's autotuning thread, when an iterator is deleted (at the end of every `fit` and
    # every validation pass), waits out its current optimisation period, which doubles up to 60 s
    # (TF 2.21): deleting a 30-s-old training iterator took 10.9 s, and the demo's trainings
    # stalled up to 62 s after their last epoch. Without it, AUTOTUNE parallelism is the core
    # count and prefetch grows its buffer itself; measured side by side on 2 cores (3 rounds,
    # round by round): 64×128 batches 1.08-1.14× as fast, 512×1024 crops 0.87-1.03×
    # (BENCHMARKS.md, 'Demo').
    options.autotune.enabled = False
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def cache_decision(
    setting: str, records: str | os.PathLike, split: str | None = None, available: int | None = None
) -> tuple[bool, int, int]:
    """Whether to cache the decoded examples: `(cache, bytes needed, bytes available)`.

    Args:
        setting: `"on"`, `"off"`, or `"auto"` (on when the bytes needed are at most
            `CACHE_MEMORY_FRACTION` of the memory available).
        records, split: the shards, as for `make_dataset`; see `decoded_bytes`.
        available: bytes of memory available; default: `MemAvailable` of /proc/meminfo.

    Raises:
        SegflowError: `setting` is none of the three.
    """
    if setting not in CACHE_SETTINGS:
        raise SegflowError(f"cache_decoded must be one of {', '.join(CACHE_SETTINGS)}; got {setting!r}")
    if setting == "off":
        return False, 0, 0
    available = _available_memory() if available is None else available
    needed = decoded_bytes(records, split)
    return setting == "on" or needed <= CACHE_MEMORY_FRACTION * available, needed, available


def decoded_bytes(records: str | os.PathLike, split: str | None = None) -> int:
    """Bytes that the decoded uint8 images (3 channels) and labels (1) take: examples (from
    `manifest.json` when `records` is a folder that has one, else counted) × the first record's
    `image/height × image/width × 4`."""
    files = list_shards(records, split)
    if tf.io.gfile.isdir(str(records)):
        count = count_examples(records, split)
    else:
        count = int(tf.data.TFRecordDataset(files).reduce(tf.constant(0, tf.int64), lambda total, _: total + 1))
    first = decode_example(next(iter(tf.data.TFRecordDataset(files[:1]).take(1))))
    return count * int(first["image/height"]) * int(first["image/width"]) * 4


def per_core_rate(
    records: str | os.PathLike,
    split: str | None = "train",
    *,
    crop_size: tuple[int, int],
    resize: tuple[int, int] | None = None,
    scale_range: tuple[float, float] = augment.SCALE_RANGE,
    cached: bool,
    for_device: bool = False,
    num_examples: int = 4,
    rounds: int = 2,
) -> float:
    """Training images per CPU-second on one core, from a short timed sample of the records.

    Times `augment.parse_train` (`cached=False`: the PNGs decoded every time) or only
    `augment.augment_train` on decoded tensors held in memory (`cached=True`), with colour jitter
    and normalisation left to the device or not (`for_device`), over the first
    `num_examples` records, held in memory so that disk reads do not count, on a private tf.data
    thread pool of one thread. CPU time of this process is used, so other processes on the
    machine do not change the result. Best of `rounds` passes, after one untimed pass.
    """
    files = list_shards(records, split)
    sample = tf.data.TFRecordDataset(files).take(num_examples)
    if cached:
        sample = sample.map(_decode)
    sample = sample.cache().repeat().enumerate()

    def parse(index, example):
        image, label = example if cached else _decode(example)
        seed = tf.stack([tf.constant(0, tf.int64), index])
        return augment.augment_train(image, label, crop_size, scale_range, resize, seed=seed, for_device=for_device)

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    iterator = iter(sample.map(parse).with_options(options))
    best = 0.0
    for round_index in range(rounds + 1):
        started = time.process_time()
        for _ in range(num_examples):
            next(iterator)
        if round_index:  # the first pass fills the cache and traces the functions
            best = max(best, num_examples / max(time.process_time() - started, 1e-9))
    return best


def gpu_demand(forward_gflops: float, gpus: int) -> float:
    """Training images/s that `gpus` H100s consume at `UTILISATION` of the dense bf16 peak,
    for a model of `forward_gflops` per image (see the constants for the sources)."""
    return gpus * UTILISATION * H100_BF16_DENSE_TFLOPS * 1e3 / (TRAINING_FLOPS_PER_FORWARD * forward_gflops)


def startup_line(config, records_dir: str | os.PathLike, model, gpus: int | None = None) -> str:
    """One line for the start of a training run: whether the decoded train images are cached
    (with their size) and, with GPUs, the images/s this machine's cores supply against the
    images/s the GPUs could train on (`gpu_demand`), saying "input-bound" when fewer.

    Args:
        config: the run's `segflow.config.TrainConfig`.
        records_dir: the records folder.
        model: the training model (a Keras model at the training size), for its forward FLOPs
            (`segflow.models.complexity.gflops`).
        gpus: GPUs training; default: the GPUs TensorFlow sees. With none, supply is not measured.
    """
    cache, needed, available = cache_decision(config.cache_decoded, records_dir, "train")
    if cache:
        line = f"input pipeline: decoded train images kept in memory after the first epoch ({_size(needed)}"
        line += f" of {_size(available)} available)" if available else ")"
    elif config.cache_decoded == "auto":
        line = (
            f"input pipeline: PNGs decoded every epoch (cache_decoded=auto: {_size(needed)} of decoded images"
            f" exceed {CACHE_MEMORY_FRACTION:.0%} of the {_size(available)} available)"
        )
    else:
        line = "input pipeline: PNGs decoded every epoch (cache_decoded=off)"
    if config.augment_on_device:
        line += "; colour jitter and normalisation in the training step (augment_on_device)"
    gpus = len(tf.config.list_logical_devices("GPU")) if gpus is None else gpus
    if gpus:
        cores = len(os.sched_getaffinity(0))
        rate = per_core_rate(
            records_dir, "train", crop_size=config.train_size, resize=config.image_size,
            scale_range=config.scale_range, cached=cache, for_device=config.augment_on_device,
        )
        from segflow.models.complexity import gflops

        demand = gpu_demand(gflops(model), gpus)
        line += f"; supplies ~{rate * cores:.0f} images/s on this machine ({cores} cores × {rate:.1f})"
        line += f", {gpus} GPU(s) could train ~{demand:.0f} images/s of {config.architecture}"
        line += " at 40 % of an H100's bf16 peak: INPUT-BOUND" if rate * cores < demand else ": not input-bound"
        if rate * cores < demand and not config.augment_on_device:
            line += " (--augment-on-device moves colour jitter and normalisation to the GPU, see BENCHMARKS.md)"
    return line


def list_shards(records: str | os.PathLike, split: str | None = None) -> list[str]:
    """The shard files of `split` in the folder `records`, or matching the pattern `records`; sorted."""
    records = str(records)
    if tf.io.gfile.isdir(records):
        if split is None:
            raise SegflowError(f"{records} is a folder: name the split to read from it (train, val or test)")
        pattern = os.path.join(records, shard_pattern(split))
        if os.path.isfile(os.path.join(records, "manifest.json")):
            from segflow.convert import verify_records

            verify_records(records, (split,))  # no shard missing, extra or changed
    else:
        pattern = records
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise SegflowError(f"no TFRecord shards match {pattern}")
    return files


def count_examples(records_dir: str | os.PathLike, split: str) -> int:
    """Examples in `split`: from `manifest.json` when the converter wrote one, else by reading the shards."""
    from segflow.convert import read_manifest

    manifest = read_manifest(records_dir) or {}
    if split in manifest.get("splits", {}):
        return int(manifest["splits"][split]["num_examples"])
    files = list_shards(Path(records_dir), split)
    return int(tf.data.TFRecordDataset(files).reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def _decode(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A serialized record → uint8 image `[H, W, 3]` and uint8 label `[H, W, 1]`."""
    features = decode_example(serialized)
    return augment.decode_image(features), augment.decode_label(features)


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def _available_memory() -> int:
    """Bytes of memory available to new allocations (`MemAvailable`, which counts reclaimable page cache)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _random_seed() -> int:
    return int.from_bytes(os.urandom(7), "little")
