"""Convert an extracted Cityscapes folder into TFRecord shards of images and trainId labels.

One pass over the data does everything: worker processes each write whole shards, and while
they read every file they also finish its validation (chunk CRCs, label values, see
`segflow.layout`) and count the pixels of every class. The output folder holds

    {split}-{i:05d}-of-{n:05d}.tfrecord   images assigned round-robin, in key order
    manifest.json                         counts, class pixels, shard sha256s, input fingerprint

Nothing half-done is ever visible: shards go to a hidden staging folder next to the output
(`atomic.staging_dir`), the manifest is written there last, and only then does the staging folder
take the output's place, in one atomic exchange of the two folders. A failed or killed run leaves
the previous output exactly as it was; the next run removes the staging folder a killed run left
and says so. A full disk is one error naming the output, the space needed and free. The worker
processes die with the process that started them (`PR_SET_PDEATHSIG`), so a `kill -9` of the
command leaves none behind.

The fingerprint covers the conversion format version, the options that shape the output, and
the relative path, size and modification time of every image and labelIds file. It is
stat-based on purpose: hashing 11 GB of PNGs would take longer than converting them. Only a
file changed with its size and modification time kept (`touch -r`) goes unnoticed; a copy that
does not keep modification times (`cp` without `-p`) only causes one needless rebuild.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segflow import atomic, layout
from segflow.digests import file_sha256
from segflow.cityscapes import CLASS_NAMES, LABEL_ID_TO_TRAIN_ID, NUM_CLASSES, SPLITS, VALID_LABEL_IDS
from segflow.errors import SegflowError
from segflow.layout import Problem, Sample
from segflow.records import RecordWriter, encode_example, encode_label_png, shard_name

FORMAT_VERSION = 1  # bump when the records or the manifest change meaning: old outputs then rebuild
MANIFEST_NAME = "manifest.json"
HASH_LIMIT_BYTES = 256 * 2**20  # verify_records hashes a split's shards only up to this total
TARGET_SHARD_BYTES = 128 * 2**20  # default shard size: large enough for fast reads, enough shards to interleave
_SHARD_NAME = re.compile(r"^[a-z]+-\d{5}-of-\d{5}\.tfrecord$")
_LABEL_ID_TO_TRAIN_ID_LIST = LABEL_ID_TO_TRAIN_ID.tolist()

logger = logging.getLogger(__name__)


def convert(
    data_dir: str | Path,
    out_dir: str | Path,
    splits: tuple[str, ...] = SPLITS,
    num_shards: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write TFRecords and `manifest.json` for `splits` of the dataset in `data_dir` to `out_dir`.

    Args:
        num_shards: shards per split (at most one per image); None: about 128 MiB each.
        workers: processes writing shards in parallel; None: one per CPU core.
        progress: show a progress bar (only on a terminal).

    Returns the manifest, plus `"up_to_date": True` when the output already matched the inputs
    and nothing was done. Raises one SegflowError listing every problem of the dataset; then
    nothing is written.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    splits = tuple(dict.fromkeys(splits))
    if not splits:
        raise SegflowError("no splits to convert: name at least one of " + ", ".join(SPLITS))
    if num_shards is not None and num_shards < 1:
        raise SegflowError(f"num_shards must be at least 1, got {num_shards}")
    samples, problems, shards_per_split, fingerprint, stats = _plan(data_dir, splits, num_shards)

    if not problems:
        name = glob.escape(out_dir.name)
        atomic.remove_leftovers(out_dir, logger, f".{name}.partial-*", f".{name}.old-*")  # and older versions' names
        previous = read_manifest(out_dir)
        if previous is not None and _is_complete(previous, fingerprint, out_dir):
            logger.info("%s is up to date with %s", out_dir, data_dir)
            return {**previous, "up_to_date": True}
    _check_output_folder(out_dir)

    def tasks(staging: Path | None) -> list[_ShardTask]:
        return [
            _ShardTask(split, index, count, samples[split][index::count], staging)
            for split, count in shards_per_split.items()
            for index in range(count)
        ]

    if problems:  # the workers only check the pixels, to report every problem at once
        problems += [problem for result in _run(tasks(None), workers, progress) for problem in result.problems]
        layout.raise_if_problems(data_dir, problems)
    # Shards go to a staging folder that takes the output's place in one atomic exchange.
    needed = sum(size for stat in stats.values() for size in (stat[0], stat[2]))
    with atomic.staging_dir(out_dir, what="TFRecords", needed_bytes=needed) as staging:
        results = _run(tasks(staging), workers, progress)
        layout.raise_if_problems(data_dir, [problem for result in results for problem in result.problems])
        manifest = _manifest(data_dir, fingerprint, splits, results)
        atomic.write_json(staging / MANIFEST_NAME, manifest)
    logger.info("wrote %d shards to %s", len(results), out_dir)
    return {**manifest, "up_to_date": False}


def input_fingerprint(data_dir: str | Path, splits: tuple[str, ...] = SPLITS, num_shards: int | None = None) -> str:
    """The fingerprint `convert` records for these inputs and options, from file stats alone:
    a cheap cache key for orchestrators (the same value decides "up to date")."""
    return _plan(Path(data_dir), tuple(dict.fromkeys(splits)), num_shards)[3]


def _plan(data_dir: Path, splits: tuple[str, ...], num_shards: int | None):
    """(samples, problems, shards per split, fingerprint, file stats) of a conversion, before any decoding."""
    samples, problems = layout.scan(data_dir, splits)
    stats = {sample: _input_stats(sample) for split_samples in samples.values() for sample in split_samples}
    shards_per_split = {split: _num_shards(samples[split], stats, num_shards) for split in splits}
    return samples, problems, shards_per_split, _fingerprint(data_dir, samples, stats, shards_per_split), stats


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a finished conversion in `out_dir`, or None if there is none."""
    try:
        return json.loads((Path(out_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def verify_records(records_dir: str | os.PathLike, splits: tuple[str, ...] | None = None, *, hash_limit: int = HASH_LIMIT_BYTES) -> dict:
    """Check the shards of `splits` (None: every split) in `records_dir` against its manifest.json
    and return the manifest; raises one SegflowError naming every missing, extra or changed shard.

    Names and sizes are always checked; sha256 too when a split's shards total at most
    `hash_limit` bytes (hashing Cityscapes' 11 GB at every read would cost more than it finds: a
    shard changed in place without changing its size still fails TFRecord's per-record CRC32C
    when it is read).
    """
    records_dir = Path(records_dir)
    manifest = read_manifest(records_dir)
    if manifest is None:
        raise SegflowError(f"{records_dir / MANIFEST_NAME} is missing or unreadable: run `segflow convert` again")
    known = manifest.get("splits", {})
    splits = tuple(known) if splits is None else tuple(splits)
    problems = []
    for split in splits:
        if split not in known:
            problems.append(f"split {split!r} is not in it (it has {', '.join(known) or 'none'})")
            continue
        shards = known[split]["shards"]
        listed = {shard["name"] for shard in shards}
        on_disk = {path.name for path in records_dir.glob(f"{split}-*-of-*.tfrecord")}
        problems += [f"{name} is missing" for name in sorted(listed - on_disk)]
        problems += [f"{name} is not in the manifest" for name in sorted(on_disk - listed)]
        present = [shard for shard in shards if shard["name"] in on_disk]
        hashed = sum(shard["bytes"] for shard in shards) <= hash_limit
        for shard in present:
            path = records_dir / shard["name"]
            size = path.stat().st_size
            if size != shard["bytes"]:
                problems.append(f"{shard['name']} has {size} bytes, the manifest says {shard['bytes']}")
            elif hashed and file_sha256(path) != shard["sha256"]:
                problems.append(f"{shard['name']} has changed (its sha256 differs from the manifest's)")
    if problems:
        raise SegflowError(
            f"the records in {records_dir} no longer match {MANIFEST_NAME}: {'; '.join(problems)};"
            " run `segflow convert` again"
        )
    return manifest


def summary(manifest: dict, out_dir: str | Path) -> str:
    """One line for people: what is in `out_dir` and whether it was just written."""
    counts = ", ".join(f"{split} {info['num_examples']}" for split, info in manifest["splits"].items())
    num_shards = sum(len(info["shards"]) for info in manifest["splits"].values())
    state = "up to date" if manifest.get("up_to_date") else "wrote"
    return f"{state}: {out_dir} ({num_shards} shards; images: {counts})"


# === Work done in the worker processes ===


@dataclass(frozen=True)
class _ShardTask:
    split: str
    index: int
    num_shards: int
    samples: list[Sample]
    staging: Path | None  # None: only check the samples, because the dataset already has problems


@dataclass
class _ShardResult:
    split: str
    name: str
    num_examples: int
    num_bytes: int
    sha256: str
    label_id_pixels: np.ndarray  # pixels per labelId 0..255 over the shard
    problems: list[Problem]


def _write_shard(task: _ShardTask) -> _ShardResult:
    """Convert one shard's samples into `{name}.tmp` in the staging folder, then rename it.

    After a sample with a problem the shard is abandoned, but its other samples are still
    checked, so that one run reports every problem of the dataset.
    """
    name = shard_name(task.split, task.index, task.num_shards)
    result = _ShardResult(task.split, name, len(task.samples), 0, "", np.zeros(256, np.int64), [])
    partial = task.staging / f"{name}.tmp" if task.staging else None
    writer = RecordWriter(partial) if partial else None
    try:
        for sample in task.samples:
            record, label_id_pixels, problems = _convert_sample(sample)
            result.problems += problems
            if not result.problems:
                result.label_id_pixels += label_id_pixels
                if writer:
                    writer.write(record)
    finally:
        if writer:
            writer.close()
    if writer and not result.problems:
        os.replace(partial, task.staging / name)
        result.num_bytes, result.sha256 = writer.num_bytes, writer.sha256()
    return result


def _convert_sample(sample: Sample) -> tuple[bytes | None, np.ndarray | None, list[Problem]]:
    """The serialized Example of one sample and its labelId histogram, or else its problems."""
    try:
        image_png, label_png = sample.image.read_bytes(), sample.label_ids.read_bytes()
    except OSError as error:
        return None, None, [Problem(Path(error.filename or sample.image), f"unreadable: {error.strerror or error}")]
    problems = [
        Problem(path, problem)
        for path, data in ((sample.image, image_png), (sample.label_ids, label_png))
        if (problem := layout.check_png_chunks(data))
    ]
    if problems:
        return None, None, problems
    header = layout.read_png_header(image_png)
    try:
        label = Image.open(io.BytesIO(label_png))
        label.load()
    except Exception as error:  # Pillow raises many types for damaged data
        return None, None, [Problem(sample.label_ids, f"corrupt PNG: {error}")]
    if label.mode != "L" or label.size != (header.width, header.height):
        return None, None, [Problem(sample.label_ids, f"decodes to mode {label.mode} size {label.size}")]
    histogram = label.histogram()
    unknown = [value for value, count in enumerate(histogram) if count and value not in VALID_LABEL_IDS]
    if unknown:
        values = ", ".join(map(str, unknown))
        return None, None, [Problem(sample.label_ids, f"label values not in the Cityscapes table: {values}")]
    train_ids = label.point(_LABEL_ID_TO_TRAIN_ID_LIST)
    record = encode_example(
        image_png=image_png,
        filename=sample.key,
        height=header.height,
        width=header.width,
        channels=header.channels,
        label_png=encode_label_png(np.asarray(train_ids)),
    )
    return record, np.array(histogram, np.int64), []


# === Coordination in the calling process ===


def _run(tasks: list[_ShardTask], workers: int | None, progress: bool) -> list[_ShardResult]:
    """Run the shard tasks, in worker processes unless one is enough; results in task order.

    Workers are spawned, not forked: the caller may hold threads (TensorFlow, Prefect) whose
    locks a fork would copy in a locked state. Spawning needs the caller's main module to be
    importable (a file or `-m` module, not a script piped to stdin). A worker that dies (out
    of memory, killed) fails the run with BrokenProcessPool instead of hanging it.
    """
    from tqdm import tqdm

    workers = min(workers or os.cpu_count() or 1, len(tasks))
    results: list[_ShardResult | None] = [None] * len(tasks)
    total = sum(len(task.samples) for task in tasks)
    with tqdm(total=total, unit="img", desc="convert", disable=None if progress else True) as bar:
        if workers <= 1:
            for index, task in enumerate(tasks):
                results[index] = _write_shard(task)
                bar.update(len(task.samples))
            return results
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),))
        with pool:
            futures = {pool.submit(_write_shard, task): index for index, task in enumerate(tasks)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(results[futures[future]].num_examples)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return results


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: have Linux SIGKILL this worker when its parent dies
    (`lifeline.die_with_parent`), and exit now if the parent is already gone."""
    from segflow.lifeline import die_with_parent

    die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(1)


def _input_stats(sample: Sample) -> tuple[int, ...]:
    """(size, mtime_ns) of the image and labelIds file: what the fingerprint and shard sizing use."""
    image, label = sample.image.stat(), sample.label_ids.stat()
    return image.st_size, image.st_mtime_ns, label.st_size, label.st_mtime_ns


def _num_shards(samples: list[Sample], stats: dict, requested: int | None) -> int:
    if not samples:
        return 0
    if requested is None:
        total_bytes = sum(stats[sample][0] + stats[sample][2] for sample in samples)
        requested = math.ceil(total_bytes / TARGET_SHARD_BYTES)
    return max(1, min(requested, len(samples)))


def _fingerprint(data_dir: Path, samples: dict, stats: dict, shards_per_split: dict) -> str:
    files = [
        [sample.split, str(path.relative_to(data_dir)), size, mtime_ns]
        for split_samples in samples.values()
        for sample in split_samples
        for path, size, mtime_ns in (
            (sample.image, *stats[sample][:2]),
            (sample.label_ids, *stats[sample][2:]),
        )
    ]
    description = {"format_version": FORMAT_VERSION, "shards": shards_per_split, "files": sorted(files)}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _is_complete(manifest: dict, fingerprint: str, out_dir: Path) -> bool:
    """Same inputs, same format, and every shard still there with its size (sizes, not hashes: cheap)."""
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("fingerprint") != fingerprint:
        return False
    shards = [shard for info in manifest.get("splits", {}).values() for shard in info.get("shards", [])]
    try:
        return all((out_dir / shard["name"]).stat().st_size == shard["bytes"] for shard in shards)
    except (OSError, KeyError, TypeError):
        return False


def _check_output_folder(out_dir: Path) -> None:
    """The output folder is replaced as a whole, so it may hold only what a conversion wrote."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SegflowError(f"output {out_dir} exists and is not a folder")
    if out_dir.is_dir():
        foreign = sorted(
            entry.name
            for entry in out_dir.iterdir()
            if not (entry.is_file() and (entry.name == MANIFEST_NAME or _SHARD_NAME.match(entry.name)))
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise SegflowError(
                f"output folder {out_dir} holds files that conversion did not write ({shown}); "
                "choose a new or empty folder"
            )


def _manifest(data_dir: Path, fingerprint: str, splits: tuple[str, ...], results: list[_ShardResult]) -> dict:
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "source": str(data_dir.resolve()),
        "splits": {},
    }
    for split in splits:
        split_results = [result for result in results if result.split == split]
        label_id_pixels = sum((result.label_id_pixels for result in split_results), np.zeros(256, np.int64))
        train_id_pixels = np.zeros(256, np.int64)
        np.add.at(train_id_pixels, LABEL_ID_TO_TRAIN_ID, label_id_pixels)
        class_pixels = {name: int(count) for name, count in zip(CLASS_NAMES, train_id_pixels)}
        class_pixels["ignore"] = int(train_id_pixels[NUM_CLASSES:].sum())
        manifest["splits"][split] = {
            "num_examples": sum(result.num_examples for result in split_results),
            "class_pixels": class_pixels,
            "shards": [
                {"name": result.name, "num_examples": result.num_examples, "bytes": result.num_bytes, "sha256": result.sha256}
                for result in split_results
            ],
        }
    return manifest
