"""tf.data's autotuner on and off, side by side: training batches per second from `make_dataset`,
and how long deleting a training iterator takes after it has been used for a while.

`make_dataset` turns the autotuner off (`segflow.input_pipeline`): in TF 2.21, deleting an
iterator waits out the autotuner's current optimisation period, which doubles up to 60 s, and
`fit` deletes its iterator when it returns. Here "on" re-enables it with `with_options` (later
options win). Makes synthetic records (64 at 64×128, 16 at 512×1024) in a temporary folder.
Rounds alternate on and off; all cores are used. The deletion time depends on where the
autotuner's period stands: a 30-s-old iterator took 10.9 s twice, a 25-s-old one 0.00 s.

    .venv/bin/python benchmarks/bench_autotune.py [--rounds 3] [--use-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def dataset(records: Path, size: tuple[int, int], autotune: bool):
    import tensorflow as tf

    from segflow import input_pipeline

    batches = input_pipeline.make_dataset(
        records, "train", training=True, batch_size=4, crop_size=size, resize=size, seed=0, cache_decoded="off"
    )
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return batches.with_options(options)


def images_per_second(records: Path, size: tuple[int, int], autotune: bool, batches: int) -> float:
    iterator = iter(dataset(records, size, autotune))
    next(iterator)  # the first batch starts the threads
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * 4 / (time.perf_counter() - started)


def deletion_seconds(records: Path, size: tuple[int, int], autotune: bool, use_seconds: float) -> float:
    """Seconds `del iterator` takes after `use_seconds` of slow use (a batch every 50 ms)."""
    iterator = iter(dataset(records, size, autotune))
    started = time.monotonic()
    while time.monotonic() - started < use_seconds:
        next(iterator)
        time.sleep(0.05)
    started = time.perf_counter()
    del iterator
    return time.perf_counter() - started


def make_records(folder: Path, height: int, width: int, count: int) -> Path:
    from segflow import convert, synthetic

    root, records = folder / f"cityscapes-{height}x{width}", folder / f"records-{height}x{width}"
    synthetic.write_dataset(root, train=count, val=0, test=0, height=height, width=width, seed=0)
    convert.convert(root, records, splits=("train",), progress=False)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--use-seconds", type=float, default=30.0, help="Use before deleting (default 30)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="segflow-bench-autotune-") as temporary:
        sizes = [
            (make_records(Path(temporary), 64, 128, 64), (64, 128), 300),
            (make_records(Path(temporary), 512, 1024, 16), (512, 1024), 25),
        ]
        print("| crop | autotuner | images/s per round | ratio off/on per round |\n| --- | --- | --- | --- |")
        for records, size, batches in sizes:
            rates = {True: [], False: []}
            for _ in range(args.rounds):
                for autotune in (True, False):
                    rates[autotune].append(images_per_second(records, size, autotune, batches))
            ratios = " ".join(f"{off / on:.2f}" for on, off in zip(rates[True], rates[False]))
            for autotune in (True, False):
                cells = " ".join(f"{rate:.1f}" for rate in rates[autotune])
                print(f"| {size[0]}x{size[1]} | {'on' if autotune else 'off'} | {cells} | {ratios if not autotune else ''} |")
        records, size, _ = sizes[0]
        for autotune in (True, False):
            seconds = deletion_seconds(records, size, autotune, args.use_seconds)
            print(f"autotuner {'on ' if autotune else 'off'}: deleting a {args.use_seconds:.0f}-s-old iterator took {seconds:.2f} s")


if __name__ == "__main__":
    main()
