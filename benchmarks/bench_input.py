"""Input pipeline speed: images/s per CPU core for 512x1024 training crops of 1024x2048 records.

Makes full-size synthetic Cityscapes records (`segflow.synthetic` + `segflow.convert`) in a
temporary folder, or reads `--records DIR`, then times, side by side in one run and pinned to
one core (tf.data private thread pool of 1, one intra-op thread):

- read:          raw TFRecord bytes only
- decode:        `decode_example` + both PNG decodes, the floor every pipeline pays
- eval:          `make_dataset(training=False)`, full resolution
- train:         `make_dataset(training=True)`, 512x1024 crops with all augmentation
- train, no colour jitter
- resize-then-crop: the textbook order (resize the whole image, pad, crop), no jitter, for
  comparison with segflow's one-step crop-and-resize

and, for reference, `train` again with every core. "Per core" is images per CPU-second used by
this process, which other processes on a shared machine do not change; wall-clock rates are
shown too. Rows take turns in three rounds and the best round counts. Ratios are to `decode`.

    .venv/bin/python benchmarks/bench_input.py --quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from segflow import augment, data  # noqa: E402
from segflow.records import decode_example  # noqa: E402

CROP_SIZE = (512, 1024)
HEIGHT, WIDTH = 1024, 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="8 images instead of 16, 12 timed examples per row instead of 32"
    )
    parser.add_argument("--records", help="a folder of existing train-*.tfrecord shards to read instead")
    args = parser.parse_args()
    num_images = 8 if args.quick else 16
    num_timed = 12 if args.quick else 32

    with tempfile.TemporaryDirectory(prefix="bench_input_") as scratch:
        records_dir = Path(args.records) if args.records else make_records(Path(scratch), num_images)
        files = data.list_shards(records_dir, "train")
        print(f"records: {records_dir} ({len(files)} train shards); crops {CROP_SIZE[0]}x{CROP_SIZE[1]}")
        print(f"timing {num_timed} examples per row in 3 alternating rounds after a warm-up batch each\n")

        def train(photometric=True):
            return data.make_dataset(
                records_dir, "train", training=True, batch_size=2, crop_size=CROP_SIZE, photometric=photometric
            )

        rows = {
            "read": one_core(tf.data.TFRecordDataset(files).repeat().batch(2)),
            "decode": one_core(decoded(files)),
            "eval (full resolution)": one_core(
                data.make_dataset(records_dir, "train", training=False, batch_size=2, repeat=True)
            ),
            "train": one_core(train()),
            "train, no colour jitter": one_core(train(photometric=False)),
            "resize-then-crop, no jitter": one_core(resize_then_crop(files)),
            "train, all cores": train(),
        }
        rates = measure(rows, num_timed)

    decode_rate = rates["decode"][0]
    header = ("pipeline (1 core unless said)", "img/s/core", "ms/img", "vs decode", "img/s wall")
    print("{:30s} {:>10s} {:>7s} {:>9s} {:>10s}".format(*header))
    for name, (per_core, per_second) in rates.items():
        print(f"{name:30s} {per_core:10.1f} {1000 / per_core:7.1f} {per_core / decode_rate:8.2f}x {per_second:10.1f}")
    speedup = rates["train, no colour jitter"][0] / rates["resize-then-crop, no jitter"][0]
    print(f"\none-step crop-and-resize vs resize-then-crop, per core: {speedup:.2f}x")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")


def make_records(scratch: Path, num_images: int) -> Path:
    from segflow import convert, synthetic

    started = time.perf_counter()
    synthetic.write_dataset(
        scratch / "data", train=num_images, val=0, test=0, height=HEIGHT, width=WIDTH, seed=0
    )
    convert.convert(scratch / "data", scratch / "records", splits=("train",), num_shards=4, progress=False)
    print(f"made {num_images} synthetic {HEIGHT}x{WIDTH} records in {time.perf_counter() - started:.0f} s")
    return scratch / "records"


def decoded(files: list[str]) -> tf.data.Dataset:
    def decode(serialized):
        features = decode_example(serialized)
        return augment.decode_image(features), augment.decode_label(features)

    return tf.data.TFRecordDataset(files).repeat().map(decode).batch(2)


def resize_then_crop(files: list[str]) -> tf.data.Dataset:
    """The usual order (as in TF Model Garden's parser): scale the whole image, pad, crop."""

    def parse(index, serialized):
        features = decode_example(serialized)
        seed = tf.stack([tf.constant(0, tf.int64), index])
        image = tf.image.convert_image_dtype(augment.decode_image(features), tf.float32)
        label = tf.cast(augment.decode_label(features), tf.float32)
        scale = tf.random.stateless_uniform([], seed, *augment.SCALE_RANGE)
        size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
        image = augment.normalize_image(tf.image.resize(image, size, method="bilinear"))
        label = tf.image.resize(label, size, method="nearest") - 255.0
        padded = tf.maximum(size, CROP_SIZE)
        both = tf.image.pad_to_bounding_box(tf.concat([image, label], axis=2), 0, 0, padded[0], padded[1])
        both = tf.image.stateless_random_crop(both, (*CROP_SIZE, 4), seed)
        both = tf.image.stateless_random_flip_left_right(both, seed)
        return both[:, :, :3], tf.cast(both[:, :, 3] + 255.0, tf.int32)

    return tf.data.TFRecordDataset(files).repeat().enumerate().map(parse).batch(2)


def one_core(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def measure(datasets: dict[str, tf.data.Dataset], num_examples: int, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """Per dataset: images per CPU-second of this process (= images/s per core, and unaffected by
    other processes sharing the machine) and images per wall-clock second, best of `rounds` rounds
    that take turns. Each round opens a fresh iterator (its warm-up batch untimed) and drops it
    afterwards, so no pipeline works ahead in the background while another is timed."""
    rates = {name: (0.0, 0.0) for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            iterator = iter(dataset)
            next(iterator)  # warm-up: shuffle buffer, first reads
            wall, cpu, seen = time.perf_counter(), time.process_time(), 0
            while seen < num_examples // rounds:
                seen += int(tf.shape(tf.nest.flatten(next(iterator))[0])[0])
            per_cpu_second = seen / (time.process_time() - cpu)
            per_second = seen / (time.perf_counter() - wall)
            rates[name] = (max(rates[name][0], per_cpu_second), max(rates[name][1], per_second))
            del iterator
    return rates


if __name__ == "__main__":
    main()
