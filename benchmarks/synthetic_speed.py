"""How fast `segflow synth` makes full-size (1024x2048) Cityscapes frames.

Measured in one run, per image: rendering the arrays (`render_example`), writing its five
files (leftImg8bit PNG, gtFine labelIds/instanceIds/color PNGs and polygons JSON), both on one
thread, and `write_dataset` end to end (threads over the cores). Wall seconds and CPU seconds
are both printed: on a shared machine the CPU figure is the one that does not depend on load.
Goal: < 0.5 s per image with all its files.

    .venv/bin/python benchmarks/synthetic_speed.py            # 8 images, 1024x2048
    .venv/bin/python benchmarks/synthetic_speed.py --quick    # 2 images
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from segflow import synthetic


class Clock:
    """Accumulates wall and process CPU seconds over `with` blocks."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="2 images")
    args = parser.parse_args()
    count = 2 if args.quick else args.images
    size = dict(height=args.height, width=args.width)

    render, write, end_to_end = Clock(), Clock(), Clock()
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(count):
            with render:
                example = synthetic.render_example("train", index, **size)
            with write:
                synthetic._write_example(Path(scratch), "train", "aachen", f"aachen_{index:06d}_000019", example)
        with end_to_end:
            synthetic.write_dataset(Path(scratch) / "data", train=count, val=0, test=0, **size)

    print(f"{count} images of {args.height}x{args.width} on {os.cpu_count()} cores; seconds per image:")
    print(f"  {'':<30} {'wall':>6} {'cpu':>6}")
    for name, clock in (("render_example (1 thread)", render), ("write 5 files (1 thread)", write)):
        print(f"  {name:<30} {clock.wall / count:6.3f} {clock.cpu / count:6.3f}")
    print(f"  {'sum (1 thread)':<30} {(render.wall + write.wall) / count:6.3f} {(render.cpu + write.cpu) / count:6.3f}")
    print(f"  {'write_dataset (threads)':<30} {end_to_end.wall / count:6.3f} {end_to_end.cpu / count:6.3f}")
    print(f"  goal 0.5 s/image: 1-thread CPU {(render.cpu + write.cpu) / count / 0.5:.2f}x the goal, "
          f"write_dataset wall {end_to_end.wall / count / 0.5:.2f}x")


if __name__ == "__main__":
    main()
