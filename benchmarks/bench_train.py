"""Training speed per architecture on this machine's CPU: images/s and achieved FLOP/s, as a
fraction of the matmul rate measured in the same run.

Each architecture is built at `--size` and `--width` exactly as `segflow train` builds it (same
loss, SGD + poly schedule, optional XLA), then timed over `--steps` calls of its compiled train
step on a batch held in memory (no input pipeline: that is `bench_input.py`'s job), after two
warm-up steps that include tracing. Achieved FLOP/s counts 3x the forward FLOPs of
`segflow.models.complexity` (convolutions and dense layers; the backward pass costs about two
forwards) per image. Right before each architecture a float32 2048x2048 TF matmul is timed
(best of 5), and "ratio" is the training rate over that matmul rate: once per wall-clock second,
once per CPU second of this process. The CPU-second figures hold up on a machine shared with
other processes (their load slows the wall clock, not the work per CPU second); on an idle
machine both agree.

    .venv/bin/python benchmarks/bench_train.py --quick          # 128x256, 3 steps
    .venv/bin/python benchmarks/bench_train.py                  # 256x512, width 0.25, batch 2, 5 steps
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from segflow.config import TrainConfig, parse_image_size  # noqa: E402
from segflow.models import ARCHITECTURES  # noqa: E402
from segflow.models.complexity import gflops  # noqa: E402
from segflow.train import build_training_model  # noqa: E402

MATMUL_SIZE = 2048


def matmul_rates(repeats: int = 5) -> tuple[float, float]:
    """(GFLOP per wall second, GFLOP per CPU second) of a float32 MATMUL_SIZE² matmul (2n³
    FLOPs), each the best of `repeats`."""
    a = tf.random.normal((MATMUL_SIZE, MATMUL_SIZE))
    b = tf.random.normal((MATMUL_SIZE, MATMUL_SIZE))
    tf.linalg.matmul(a, b).numpy()  # warm-up
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        tf.linalg.matmul(a, b).numpy()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    flops = 2 * MATMUL_SIZE**3 / 1e9
    return flops / best_wall, flops / best_cpu


def time_training(architecture: str, size, width: float, batch_size: int, steps: int, jit: bool) -> dict:
    config = TrainConfig(
        architecture=architecture, width=width, image_size=size, batch_size=batch_size, jit=jit, warmup_steps=0
    )
    model = build_training_model(config, records_dir=None, total_steps=1000)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(batch_size, *size, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 19, size=(batch_size, *size)).astype("int32"))
    targets = (labels,) * len(model.outputs) if len(model.outputs) > 1 else labels

    started = time.perf_counter()
    for _ in range(2):
        model.train_on_batch(images, targets)
    warmup_seconds = time.perf_counter() - started

    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.train_on_batch(images, targets)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    forward_gflops = gflops(model)
    return {
        "params": model.count_params(),
        "forward_gflops": forward_gflops,
        "warmup_seconds": warmup_seconds,
        "images_per_second": steps * batch_size / wall,
        "images_per_cpu_second": steps * batch_size / cpu,
        "gflops_per_second": 3 * forward_gflops * steps * batch_size / wall,
        "gflops_per_cpu_second": 3 * forward_gflops * steps * batch_size / cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128x256 and 3 timed steps")
    parser.add_argument("--size", default="256x512", help="HxW of the training batches")
    parser.add_argument("--width", type=float, default=0.25, help="model width multiplier")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per architecture")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    args = parser.parse_args()
    size = (128, 256) if args.quick else parse_image_size(args.size)
    steps = 3 if args.quick else args.steps

    print(
        f"training at {size[0]}x{size[1]}, width {args.width}, batch {args.batch_size}, {steps} timed steps, "
        f"jit={args.jit}, {os.cpu_count()} CPUs, TF {tf.__version__}\n"
    )
    header = (
        f"{'architecture':<14}{'params':>10}{'fwd GFLOP/img':>14}{'warm-up s':>10}{'images/s':>9}"
        f"{'GFLOP/s':>8}{'matmul':>8}{'ratio':>7}{'img/CPU s':>10}{'GFLOP/CPU s':>12}{'matmul':>8}{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for architecture in args.architectures:
        matmul_wall, matmul_cpu = matmul_rates()
        row = time_training(architecture, size, args.width, args.batch_size, steps, args.jit)
        print(
            f"{architecture:<14}{row['params']:>10,}{row['forward_gflops']:>14.3f}{row['warmup_seconds']:>10.1f}"
            f"{row['images_per_second']:>9.2f}{row['gflops_per_second']:>8.1f}{matmul_wall:>8.1f}"
            f"{row['gflops_per_second'] / matmul_wall:>7.2f}{row['images_per_cpu_second']:>10.2f}"
            f"{row['gflops_per_cpu_second']:>12.1f}{matmul_cpu:>8.1f}{row['gflops_per_cpu_second'] / matmul_cpu:>7.2f}",
            flush=True,
        )
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
