"""Forward speed of every architecture, against this machine's matmul speed, in one run.

For each model: images per second of compiled inference (`predict_on_batch`, after a warm-up
call), and the FLOP/s that achieves (2 × conv/dense multiply-adds per image, as
`segflow.models.complexity` counts them). Right before each model the same run times
`keras.ops.matmul` of two 2048×2048 float32 matrices; the last column is the model's FLOP/s
over that matmul's, i.e. how well the architecture uses the hardware, measured under the same
load (other processes share the CPU).

    .venv/bin/python benchmarks/bench_models.py                 # 512×1024, width 1.0
    .venv/bin/python benchmarks/bench_models.py --quick         # 256×512, one timed run
    .venv/bin/python benchmarks/bench_models.py --size 1024x2048 --models icnet,deeplabv3plus
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # one predict function per model is expected

import keras  # noqa: E402
import numpy as np  # noqa: E402

from segflow.models import ARCHITECTURES, build  # noqa: E402
from segflow.models.complexity import count_macs  # noqa: E402

MATMUL_SIZE = 2048


def matmul_flops_per_second(runs: int = 5) -> float:
    """Median FLOP/s of a 2048×2048 float32 matmul (2·n³ FLOPs), result fetched each run."""
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.normal(size=(MATMUL_SIZE, MATMUL_SIZE)).astype("float32"))
    b = keras.ops.convert_to_tensor(rng.normal(size=(MATMUL_SIZE, MATMUL_SIZE)).astype("float32"))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b))  # warm-up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
        seconds.append(time.perf_counter() - started)
    return 2 * MATMUL_SIZE**3 / statistics.median(seconds)


def time_forward(name: str, input_shape: tuple[int, int, int], width: float, batch_size: int, runs: int) -> dict:
    """Images/s and FLOP/s of compiled inference of one architecture."""
    model = build(name, input_shape=input_shape, width=width)
    flops_per_image = 2 * count_macs(model)
    params = model.count_params()
    images = np.random.default_rng(0).normal(size=(batch_size, *input_shape)).astype("float32")
    model.predict_on_batch(images)  # compile and warm up
    started = time.perf_counter()
    for _ in range(runs):
        model.predict_on_batch(images)
    images_per_second = batch_size * runs / (time.perf_counter() - started)
    keras.backend.clear_session()
    return {
        "params": params,
        "gflops_per_image": flops_per_image / 1e9,
        "images_per_second": images_per_second,
        "flops_per_second": flops_per_image * images_per_second,
    }


def parse_size(text: str) -> tuple[int, int, int]:
    height, width = (int(part) for part in text.lower().split("x"))
    return (height, width, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=None, help="HxW input size [512x1024; --quick: 256x512]")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier [1.0]")
    parser.add_argument("--batch", type=int, default=1, help="images per forward call [1]")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per model [3; --quick: 1]")
    parser.add_argument("--models", default=",".join(ARCHITECTURES), help="comma-separated architectures [all]")
    parser.add_argument("--quick", action="store_true", help="256x512 and one timed call: about a minute on 2 cores")
    args = parser.parse_args()
    input_shape = args.size or ((256, 512, 3) if args.quick else (512, 1024, 3))
    runs = args.runs or (1 if args.quick else 3)

    print(f"backend {keras.backend.backend()}, input {input_shape[0]}x{input_shape[1]}, width {args.width}, "
          f"batch {args.batch}, {runs} timed call(s) per model after one warm-up")
    print(f"{'model':<14} {'params M':>9} {'GFLOPs/img':>11} {'img/s':>8} {'GFLOP/s':>9} "
          f"{'matmul GFLOP/s':>15} {'ratio':>6}")
    for name in args.models.split(","):
        matmul = matmul_flops_per_second()
        row = time_forward(name, input_shape, args.width, args.batch, runs)
        print(f"{name:<14} {row['params'] / 1e6:>9.2f} {row['gflops_per_image']:>11.1f} "
              f"{row['images_per_second']:>8.3f} {row['flops_per_second'] / 1e9:>9.1f} "
              f"{matmul / 1e9:>15.1f} {row['flops_per_second'] / matmul:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
