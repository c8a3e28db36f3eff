"""Conversion speed: `segflow.convert` next to only reading the same source bytes.

On full-size (1024x2048) synthetic Cityscapes, in one run: the rate of reading every image and
labelIds file once (sequentially, one process, like `cat`), the rate of converting them (the
whole `convert` call: scan, worker start-up, checks, records, manifest), and the ratio; the goal
is conversion >= 0.8x the read-only rate. Both are measured with the page cache cold (the
source files' pages dropped with posix_fadvise DONTNEED before the run) and warm. Then the work
per image is broken down by stage, in one process, to show what dominates.

    .venv/bin/python benchmarks/bench_convert.py --quick          # 20 images
    .venv/bin/python benchmarks/bench_convert.py --images 100 --data /tmp/cityscapes-1024  # keeps the data
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from segflow import layout
from segflow.convert import _LABEL_ID_TO_TRAIN_ID_LIST, convert
from segflow.records import RecordWriter, encode_example, encode_label_png
from segflow.synthetic import write_dataset

GOAL = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 images")
    parser.add_argument("--images", type=int, default=100, help="train images to convert (default 100)")
    parser.add_argument("--data", type=Path, help="where to keep the synthetic dataset between runs")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="conversion workers (default: cores)")
    parser.add_argument("--shards", type=int, help="shards (default: about 5 images each, min 2 per worker)")
    args = parser.parse_args()
    num_images = 20 if args.quick else args.images
    num_shards = args.shards or max(2 * args.workers, num_images // 5)

    with tempfile.TemporaryDirectory(prefix="bench-convert-") as scratch:
        data_dir = args.data or Path(scratch) / "cityscapes"
        if not data_dir.exists():
            started = time.perf_counter()
            write_dataset(data_dir, train=num_images, val=0, test=0, height=1024, width=2048)
            print(f"wrote {num_images} synthetic 1024x2048 images in {time.perf_counter() - started:.0f} s")
        samples = layout.discover(data_dir, ("train",))["train"][:num_images]
        source_bytes = sum(sample.image.stat().st_size + sample.label_ids.stat().st_size for sample in samples)
        print(
            f"{len(samples)} images, {source_bytes / len(samples) / 1e6:.2f} MB of source per image, "
            f"{args.workers} workers, {num_shards} shards, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
        )
        if len(samples) < num_images:
            raise SystemExit(f"{data_dir} holds only {len(samples)} train images")

        out_dir = Path(scratch) / "records"
        print(f"{'page cache':<11}{'read-only img/s':>17}{'convert img/s':>15}{'ratio':>8}{'convert CPU ms/img':>21}")
        for cache in ("cold", "warm"):
            if cache == "cold":
                _drop_from_page_cache(samples)
            read_seconds, _ = _time(lambda: _read_all(samples))
            shutil.rmtree(out_dir, ignore_errors=True)
            if cache == "cold":
                _drop_from_page_cache(samples)
            seconds, cpu_seconds = _time(lambda: convert(data_dir, out_dir, ("train",), num_shards, args.workers, progress=False))
            read_rate, convert_rate = len(samples) / read_seconds, len(samples) / seconds
            print(
                f"{cache:<11}{read_rate:>17.1f}{convert_rate:>15.1f}{convert_rate / read_rate:>7.2f}x"
                f"{cpu_seconds * 1000 / len(samples):>21.1f}"
            )
        print(
            f"goal: convert >= {GOAL}x read-only. CPU ms/img counts the calling process and its workers, so "
            f"{os.cpu_count()} idle cores convert at most {os.cpu_count() * len(samples) / cpu_seconds:.0f} img/s."
        )

        scan_seconds, _ = _time(lambda: layout.validate(data_dir, ("train",)))
        print(
            f"validate (pairing + PNG header checks): {scan_seconds * 1000:.1f} ms for {len(samples)} images, "
            f"{scan_seconds / len(samples) * 5000:.1f} s for Cityscapes' 5000 (warm cache)"
        )
        print("\nCPU per image by stage, one process, warm cache (ms):")
        for stage, milliseconds in _stages(samples[: min(10, len(samples))], Path(scratch)).items():
            print(f"  {stage:<38}{milliseconds:>7.2f}")


def _read_all(samples) -> int:
    total = 0
    for sample in samples:
        total += len(sample.image.read_bytes()) + len(sample.label_ids.read_bytes())
    return total


def _drop_from_page_cache(samples) -> None:
    for sample in samples:
        for path in (sample.image, sample.label_ids):
            descriptor = os.open(path, os.O_RDONLY)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(descriptor)


def _time(work) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process and the worker processes it waited for)."""
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    work()
    return time.perf_counter() - started, _cpu_seconds() - cpu_started


def _cpu_seconds() -> float:
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def _stages(samples, scratch: Path) -> dict[str, float]:
    """The steps of `segflow.convert._convert_sample` and the shard write, timed one by one."""
    totals: dict[str, float] = {}

    def timed(stage, work):
        started = time.process_time()  # CPU time: other processes on the machine do not inflate it
        result = work()
        totals[stage] = totals.get(stage, 0.0) + time.process_time() - started
        return result

    with RecordWriter(scratch / "stages.tfrecord") as writer:
        for sample in samples:
            image_png, label_png = timed(
                "read image + label files", lambda: (sample.image.read_bytes(), sample.label_ids.read_bytes())
            )
            timed("check PNG chunk CRCs (image, label)", lambda: (layout.check_png_chunks(image_png), layout.check_png_chunks(label_png)))
            header = layout.read_png_header(image_png)
            label = timed("decode label PNG (Pillow)", lambda: _decoded(label_png))
            timed("label histogram (class pixels, values)", label.histogram)
            train_ids = timed("labelIds -> trainIds (lookup table)", lambda: label.point(_LABEL_ID_TO_TRAIN_ID_LIST))
            label_out = timed("encode trainId PNG (zlib level 1)", lambda: encode_label_png(np.asarray(train_ids)))
            record = timed(
                "encode tf.train.Example",
                lambda: encode_example(
                    image_png=image_png, filename=sample.key, height=header.height, width=header.width,
                    channels=header.channels, label_png=label_out,
                ),
            )
            timed("write record (crc32c, sha256, write)", lambda: writer.write(record))
    stages = {stage: seconds * 1000 / len(samples) for stage, seconds in totals.items()}
    stages["total"] = sum(stages.values())
    return stages


def _decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


if __name__ == "__main__":
    main()
