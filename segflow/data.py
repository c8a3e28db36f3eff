"""The tf.data input pipeline: TFRecord shards in, batches of `(images, labels)` out.

It only composes: list shards → interleaved parallel reads → (shuffle) → `records.decode_example`
→ `augment.parse_train` or `augment.parse_eval` in a parallel map → batch → prefetch. Batches:

- images: float32 `[B, H, W, 3]`, normalised with `augment.MEAN_RGB` / `augment.STDDEV_RGB`;
- labels: int32 `[B, H, W]` of trainIds, 255 (`IGNORE_LABEL`) for void and crop padding; use
  `keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)`.

With an integer seed the stream is reproducible: shard order, shuffle and every example's
augmentation (a stateless seed `(seed, position in the stream)`) depend only on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from segflow import augment
from segflow.errors import SegflowError
from segflow.records import decode_example, shard_pattern

SHUFFLE_BUFFER = 64  # serialized examples; a full-size Cityscapes record is ~2-4 MB
MAX_PARALLEL_READS = 16


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

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), MAX_PARALLEL_READS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
        # Each example's augmentation seed is (seed, its position in the stream): reproducible,
        # and different in every epoch.
        example_seed = _random_seed() if seed is None else seed
        dataset = dataset.enumerate().map(
            lambda index, serialized: augment.parse_train(
                decode_example(serialized),
                crop_size,
                scale_range=scale_range,
                resize=resize,
                seed=tf.stack([tf.constant(example_seed, tf.int64), index]),
                photometric=photometric,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
    else:
        dataset = dataset.map(
            lambda serialized: augment.parse_eval(decode_example(serialized), resize=resize),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


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


def _random_seed() -> int:
    return int.from_bytes(os.urandom(7), "little")
