"""Input pipeline speed: images/s per CPU core for 512x1024 training crops of 1024x2048 records,
and whether `--cores` cores can feed `--gpus` GPUs training each architecture.

Makes full-size synthetic Cityscapes records (`segflow.synthetic` + `segflow.convert`) in a
temporary folder, or reads `--records DIR`, then times, side by side in one run and pinned to
one core (tf.data private thread pool of 1, one intra-op thread):

- read:          raw TFRecord bytes only
- decode:        `decode_example` + both PNG decodes, the cost decode-once saves after epoch 1
- eval:          `make_dataset(training=False)`, full resolution
- train:         `make_dataset(training=True)`, 512x1024 crops with all augmentation (today's)
- train, decode once: the same with `cache_decoded="on"`, after its first epoch
- the same two with `augment_on_device=True`: colour jitter and normalisation left to the
  training step (`segflow.device_augment`, which runs on the accelerator and is not timed
  here), the pipeline handing over uint8 crops; the CPU supply is what it changes
- train, no colour jitter
- resize-then-crop: the textbook order (resize the whole image, pad, crop), no jitter, for
  comparison with segflow's one-step crop-and-resize
- each augmentation stage alone (crop-and-resize, flip, colour jitter, normalisation) on
  inputs held in memory, minus the cost of a pass-through map over the same inputs

and, for reference, `train` again with every core. "Per core" is images per CPU-second used by
this process, which other processes on a shared machine do not change; wall-clock rates are
shown too. Rows take turns in three rounds and the best round counts. Ratios are to `decode`.

Then the supply/demand table: supply = per-core rate × `--cores`; demand = the images/s that
`--gpus` H100s train at 40 % of their dense bf16 peak (989 TFLOP/s, NVIDIA H100 datasheet) when
a training step costs 3 × the forward GFLOPs at 512x1024 (`segflow.models.complexity`), i.e.
`segflow.input_pipeline.gpu_demand`.

    .venv/bin/python benchmarks/bench_input.py --quick [--cores 16] [--gpus 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from segflow import augment, input_pipeline  # noqa: E402
from segflow.models.complexity import summarize_architectures  # noqa: E402
from segflow.records import decode_example  # noqa: E402

CROP_SIZE = (512, 1024)
HEIGHT, WIDTH = 1024, 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="8 images instead of 16, 12 timed examples per row instead of 32"
    )
    parser.add_argument(
        "--records", help="a folder of existing train-*.tfrecord shards to read instead (decode-once decodes them all first)"
    )
    parser.add_argument("--cores", type=int, default=16, help="CPU cores of the GPU machine (default 16)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs training (default 1)")
    args = parser.parse_args()
    num_images = 8 if args.quick else 16
    num_timed = 12 if args.quick else 32

    with tempfile.TemporaryDirectory(prefix="bench_input_") as scratch:
        records_dir = Path(args.records) if args.records else make_records(Path(scratch), num_images)
        files = input_pipeline.list_shards(records_dir, "train")
        print(f"records: {records_dir} ({len(files)} train shards); crops {CROP_SIZE[0]}x{CROP_SIZE[1]}")
        print(f"timing {num_timed} examples per row in 3 alternating rounds after untimed warm-up batches\n")

        def train(photometric=True, cache_decoded="off", augment_on_device=False):
            return input_pipeline.make_dataset(
                records_dir, "train", training=True, batch_size=2, crop_size=CROP_SIZE,
                photometric=photometric, cache_decoded=cache_decoded, augment_on_device=augment_on_device,
            )

        # Decode once: warm up with a whole epoch, so that timing starts with the cache full.
        epoch_batches = input_pipeline.count_examples(records_dir, "train") // 2 + 1

        rows = {
            "read": one_core(tf.data.TFRecordDataset(files).repeat().batch(2)),
            "decode": one_core(decoded(files)),
            "eval (full resolution)": one_core(
                input_pipeline.make_dataset(records_dir, "train", training=False, batch_size=2, repeat=True)
            ),
            "train": one_core(train()),
            "train, decode once": (one_core(train(cache_decoded="on")), epoch_batches),
            "train, augment on device": one_core(train(augment_on_device=True)),
            "train, decode once, on device": (one_core(train(cache_decoded="on", augment_on_device=True)), epoch_batches),
            "train, no colour jitter": one_core(train(photometric=False)),
            "resize-then-crop, no jitter": one_core(resize_then_crop(files)),
            "train, all cores": train(),
            # Stages: two examples in memory, so two warm-up batches fill the cache.
            **{f"stage: {name}": (one_core(stage), 2) for name, stage in stages(files).items()},
        }
        rates = measure(rows, num_timed)

    decode_rate = rates["decode"][0]
    header = ("pipeline (1 core unless said)", "img/s/core", "ms/img", "vs decode", "img/s wall")
    print("{:30s} {:>10s} {:>7s} {:>9s} {:>10s}".format(*header))
    for name, (per_core, per_second) in rates.items():
        if not name.startswith("stage:"):
            print(f"{name:30s} {per_core:10.1f} {1000 / per_core:7.1f} {per_core / decode_rate:8.2f}x {per_second:10.1f}")
    speedup = rates["train, no colour jitter"][0] / rates["resize-then-crop, no jitter"][0]
    print(f"\none-step crop-and-resize vs resize-then-crop, per core: {speedup:.2f}x")
    today, decode_once = rates["train"][0], rates["train, decode once"][0]
    print(f"decode once vs today's training pipeline, per core: {decode_once / today:.2f}x (goal >= 2x)")
    print("\nCPU path vs augment on device (jitter + normalisation in the training step), img/s per core:")
    print(f"  {'':22s} {'CPU path':>9s} {'on device':>9s} {'ratio':>6s}")
    pairs = (("PNGs decoded each epoch", "train", "train, augment on device"),
             ("decode once", "train, decode once", "train, decode once, on device"))  # fmt: skip
    for label, cpu_name, device_name in pairs:
        cpu_path, on_device = rates[cpu_name][0], rates[device_name][0]
        print(f"  {label:22s} {cpu_path:9.1f} {on_device:9.1f} {on_device / cpu_path:5.2f}x")
    print("  bytes per 512x1024 example to the device: CPU path 8.0 MiB (float32 RGB + int32 label),"
          " on device 2.0 MiB (uint8 RGB + uint8 label + 60 B)")

    floors = {name: 1000 / rates[name][0] for name in ("stage: pass-through", "stage: pass-through, image only")}
    augment_ms = 1000 / decode_once
    print("\naugmentation stages, 1 core, inputs in memory (ms/img net of a pass-through map over the same inputs):")
    for name, (per_core, _) in rates.items():
        if name.startswith("stage:") and name not in floors:
            net = 1000 / per_core - floors["stage: pass-through" + (", image only" if "uint8" in name else "")]
            print(f"  {name[7:]:38s} {net:6.1f} ms/img  ({net / augment_ms:4.0%} of decode-once training's {augment_ms:.1f})")

    on_device = rates["train, decode once, on device"][0]
    supplies = {"today": today, "decode once": decode_once, "+ on device": on_device}
    print(f"\nsupply with {args.cores} cores vs demand of {args.gpus} H100(s) at 40 % of 989 TFLOP/s bf16, 512x1024:")
    for name, rate in supplies.items():
        print(f"  supply, {name + ':':14s} {rate * args.cores:8.0f} img/s  ({rate:.1f} per core)")
    print(f"  {'architecture':14s} {'fwd GFLOPs':>10s} {'demand img/s':>12s}" + "".join(f" {name:>12s}" for name in supplies))
    for row in summarize_architectures(input_shape=(*CROP_SIZE, 3)):
        demand = input_pipeline.gpu_demand(row["gflops"], args.gpus)
        verdicts = ["ok" if rate * args.cores >= demand else "INPUT-BOUND" for rate in supplies.values()]
        print(f"  {row['name']:14s} {row['gflops']:10.1f} {demand:12.0f}" + "".join(f" {verdict:>12s}" for verdict in verdicts))
    print(f"\nthe device stage run on this CPU instead (as CPU-only training would): {device_stage_ms():.1f} CPU-ms/img")
    print(f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")


def device_stage_ms(batch_size: int = 2, rounds: int = 5) -> float:
    """CPU-ms per 512x1024 example of `segflow.device_augment.JitterAndNormalize` (a traced
    call on TF's CPU kernels with all threads), best of `rounds`, for training without a GPU."""
    from segflow.device_augment import JitterAndNormalize

    layer = JitterAndNormalize()
    inputs = {
        augment.DEVICE_IMAGE: tf.random.uniform((batch_size, *CROP_SIZE, 3), maxval=256, dtype=tf.int32),
        augment.DEVICE_PARAMETERS: tf.tile([[1.1, 0, 0, 0, 1.1, 0, 0, 0, 1.1, 1.1, 0.05, 0, 0, 400, 1024]], [batch_size, 1]),
    }
    inputs[augment.DEVICE_IMAGE] = tf.cast(inputs[augment.DEVICE_IMAGE], tf.uint8)
    call = tf.function(lambda inputs: layer(inputs))
    call(inputs).numpy()  # trace
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        call(inputs).numpy()
        best = min(best, (time.process_time() - started) * 1000 / batch_size)
    return best


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


def stages(files: list[str]) -> dict[str, tf.data.Dataset]:
    """Each augmentation stage of `augment.augment_train` alone, as a map over inputs held in
    memory: decoded uint8 images and labels for crop-and-resize, float crops for the rest."""
    decoded = tf.data.TFRecordDataset(files).take(2).map(input_pipeline._decode).cache().repeat()
    crops = decoded.take(2).map(
        lambda image, label: (tf.image.resize(image, CROP_SIZE) / 255.0, tf.image.resize(label, CROP_SIZE, "nearest"))
    ).cache().repeat()
    float_crops = decoded.take(2).map(lambda image, label: tf.image.resize(image, CROP_SIZE)).cache().repeat()

    def crop_and_resize(index, example):
        image, label = example
        seed = tf.stack([tf.constant(0, tf.int64), index])
        size = tf.shape(image)[:2]
        scale = tf.random.stateless_uniform([], seed, *augment.SCALE_RANGE)
        scaled = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
        y_seed, x_seed = tf.unstack(tf.random.split(seed, 2))
        y_window = augment._crop_window(scaled[0], CROP_SIZE[0], y_seed)
        x_window = augment._crop_window(scaled[1], CROP_SIZE[1], x_seed)
        image, label = augment._scale_and_crop(image, label, size, scaled, y_window, x_window)
        (_, top, _), (_, left, _) = y_window, x_window
        image = tf.image.pad_to_bounding_box(image, top, left, *CROP_SIZE)
        return image, tf.image.pad_to_bounding_box(label - 255, top, left, *CROP_SIZE) + 255

    def flip(index, example):
        image, label = example
        flip = tf.random.stateless_uniform([], tf.stack([tf.constant(0, tf.int64), index])) < 0.5
        return tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])), lambda: (image, label))

    def jitter(index, example):
        image, label = example
        return augment._jitter_colors(image, tf.stack([tf.constant(0, tf.int64), index])), label

    def normalise(index, example):  # as `augment_train` does it, and the textbook broadcast for comparison
        image, label = example
        return augment._normalize_on_cpu(image), tf.cast(label[:, :, 0], tf.int32)

    def normalise_broadcast(index, example):
        image, label = example
        return augment.normalize_image(image), tf.cast(label[:, :, 0], tf.int32)

    def round_to_uint8(index, image):  # what the device path adds: the crop handed over as uint8
        return tf.cast(image + 0.5, tf.uint8)

    return {
        "pass-through": crops.map(lambda image, label: (image, label)).batch(2),
        "pass-through, image only": float_crops.enumerate().map(lambda index, image: image).batch(2),
        "crop-and-resize (+ pad)": decoded.enumerate().map(crop_and_resize).batch(2),
        "flip": crops.enumerate().map(flip).batch(2),
        "colour jitter": crops.enumerate().map(jitter).batch(2),
        "normalisation": crops.enumerate().map(normalise).batch(2),
        "normalisation, broadcast": crops.enumerate().map(normalise_broadcast).batch(2),
        "round the crop to uint8 (device path)": float_crops.enumerate().map(round_to_uint8).batch(2),
    }


def one_core(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def measure(datasets: dict, num_examples: int, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """Per dataset: images per CPU-second of this process (= images/s per core, and unaffected by
    other processes sharing the machine) and images per wall-clock second, best of `rounds` rounds
    that take turns. Each round opens a fresh iterator (its warm-up batches untimed: one, or the
    number given as `(dataset, warm-up batches)`) and drops it afterwards, so no pipeline works
    ahead in the background while another is timed."""
    rates = {name: (0.0, 0.0) for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            dataset, warm_up = dataset if isinstance(dataset, tuple) else (dataset, 1)
            iterator = iter(dataset)
            for _ in range(warm_up):  # shuffle buffer, first reads; decode once: its first epoch
                next(iterator)
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
