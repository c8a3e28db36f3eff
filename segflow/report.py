"""The run report: one self-contained HTML page that compares the architectures of a run, plus
`report.json` (every number) and `report.md` (the summary the Prefect run shows).

Input is a run folder, local or `s3://`, as the pipeline writes it:

    run.json                  parameters, data, code version, hardware, times, failures, champions
    {arch}/metrics.json       from `segflow.evaluate.evaluate_model` (missing when {arch} failed)
    {arch}/history.json       one entry per epoch (maybe partial when {arch} failed)
    {arch}/config.json        the TrainConfig
    {arch}/model.keras        the exported model, run on a few val images for the samples

A folder without `run.json` works too: a `segflow train` output folder (its files at the top) or a
folder of several; each is named after its folder, and the run section says what is unknown (data
source, fingerprint, times), so the comparability note errs on the side of showing.

Sample predictions need the val images: the records folder (`--records`, or run.json's
`data.records_dir`) or the Cityscapes folder (`data.data_root`). A run read back on another
machine usually has neither; then the section says so and the rest of the report is unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import html
import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from segflow import plots, storage
from segflow.cityscapes import (
    CATEGORY_NAMES,
    CITYSCAPES_VAL_EXAMPLES,
    CLASS_NAMES,
    IMAGE_DIR,
    IMAGE_HEIGHT,
    IMAGE_SUFFIX,
    IMAGE_WIDTH,
    LABEL_DIR,
    LABEL_IDS_SUFFIX,
    TRAIN_LABELS,
    colorize,
    to_train_ids,
)
from segflow.errors import SegflowError
from segflow.evaluate import METRICS_FILE

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"  # segflow.train.HISTORY_FILE (not imported: it loads Keras)
CONFIG_FILE = "config.json"  # segflow.train.CONFIG_FILE
MODEL_FILE = "model.keras"  # segflow.train.MODEL_FILE
REPORT_FILES = {"html": "report.html", "json": "report.json", "md": "report.md"}
FORMAT_VERSION = 1
NUM_SAMPLES = 3
SAMPLE_WIDTH = 512  # sample tiles wider than this are shrunk (a full Cityscapes frame is 2048)


@dataclasses.dataclass
class ArchitectureResult:
    """What one architecture's folder holds; `status` is completed, failed or incomplete."""

    name: str
    status: str
    error: str | None = None
    metrics: dict | None = None
    history: list[dict] = dataclasses.field(default_factory=list)
    config: dict | None = None
    model_uri: str | None = None


@dataclasses.dataclass
class Run:
    source: str
    record: dict | None  # run.json, None for a folder of `segflow train` outputs
    architectures: list[ArchitectureResult]

    @property
    def completed(self) -> list[ArchitectureResult]:
        return [arch for arch in self.architectures if arch.metrics is not None]


def write_report(
    runs: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    records_dir: str | os.PathLike | None = None,
    num_samples: int = NUM_SAMPLES,
) -> dict[str, Path]:
    """Render `report.html`, `report.json` and `report.md` for the run at `runs` into `out_dir`.

    Args:
        runs: a run folder or URI (see the module docstring).
        out_dir: a local folder; each file is written to a temporary name and renamed into place.
        records_dir: TFRecords to draw the sample images from, instead of the run's own data.
        num_samples: val images shown with every architecture's prediction (0: none).

    Returns `{"html": path, "json": path, "md": path}`.
    """
    with _local_run_folder(runs) as (run_dir, fetch_model):
        run = load_run(run_dir, source=str(runs))
        summary = summarize_run(run)
        samples = sample_predictions(run, records_dir, num_samples, fetch_model)
    summary["samples"] = {key: value for key, value in samples.items() if key != "rows"}
    figures = {}
    histories = {arch.name: arch.history for arch in run.architectures if arch.history}
    if histories:
        figures["curves"] = plots.training_curves(histories)
    best = summary["best_architecture"]
    confusion = best_confusion_matrix(run, best)
    if confusion is not None:
        title = f"{best} (best val mIoU): row-normalised confusion matrix"
        figures["confusion"] = plots.confusion_matrix(confusion, CLASS_NAMES, title)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "html": render_html(summary, run, figures, samples["rows"]),
        "json": json.dumps(_finite(summary), indent=2, allow_nan=False) + "\n",
        "md": render_markdown(summary),
    }
    paths = {}
    for kind, text in contents.items():
        paths[kind] = _write_atomically(out_dir / REPORT_FILES[kind], text)
    return paths


# === Reading a run ===


@contextlib.contextmanager
def _local_run_folder(runs: str | os.PathLike) -> Iterator[tuple[Path, Callable[[str], Path]]]:
    """The run as a local folder: itself, or its small files fetched from S3 into a temporary
    folder (models are fetched only when the samples need them, through the function given)."""
    if not storage.is_s3(runs):
        run_dir = storage.local_path(runs)
        if not run_dir.is_dir():
            raise SegflowError(f"run folder {run_dir} does not exist")
        yield run_dir, Path
        return
    names = storage.list_files(str(runs))
    if not names:
        raise SegflowError(f"nothing found at {runs}: expected a run folder holding {RUN_FILE} or metrics.json files")
    wanted = {RUN_FILE, METRICS_FILE, HISTORY_FILE, CONFIG_FILE}
    with tempfile.TemporaryDirectory(prefix="segflow-report-") as temporary:
        run_dir = Path(temporary)
        for name in names:
            if name.count("/") <= 1 and name.rsplit("/", 1)[-1] in wanted:
                storage.download_file(storage.join(str(runs), name), run_dir / name)

        def fetch_model(uri: str) -> Path:
            local = run_dir / ".models" / Path(uri).parent.name / MODEL_FILE
            return storage.download_file(uri, local)

        yield run_dir, fetch_model


def load_run(run_dir: Path, *, source: str | None = None) -> Run:
    """Read run.json (if any) and each architecture's files from a local run folder."""
    run_dir = Path(run_dir)
    remote = source if source and storage.is_s3(source) else None
    record = _read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).is_file() else None
    if record is not None:
        statuses = record.get("architectures") or {}
        folders = {name: run_dir / name for name in statuses}
        # An architecture folder run.json does not list (a rerun by hand) still shows.
        folders.update({path.name: path for path in _architecture_folders(run_dir) if path.name not in folders})
    else:
        statuses = {}
        folders = {path.name: path for path in _architecture_folders(run_dir)}
        if _is_architecture_folder(run_dir):  # a single `segflow train` output folder
            config = _read_json(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else {}
            folders = {config.get("architecture") or run_dir.name: run_dir}
    if not folders:
        raise SegflowError(
            f"{source or run_dir} holds no run: expected {RUN_FILE} or architecture folders with "
            f"{METRICS_FILE}, {HISTORY_FILE} or {CONFIG_FILE}"
        )
    architectures = []
    for name, folder in folders.items():
        result = ArchitectureResult(name=name, status="completed")
        if (folder / METRICS_FILE).is_file():
            result.metrics = _read_json(folder / METRICS_FILE)
        if (folder / HISTORY_FILE).is_file():
            result.history = _read_json(folder / HISTORY_FILE)
        if (folder / CONFIG_FILE).is_file():
            result.config = _read_json(folder / CONFIG_FILE)
        parts = folder.relative_to(run_dir).parts  # () for a single `segflow train` folder
        model_uri = storage.join(remote, *parts, MODEL_FILE) if remote else str(folder / MODEL_FILE)
        result.model_uri = model_uri if remote or Path(model_uri).is_file() else None
        status = statuses.get(name) or {}
        result.error = status.get("error")
        if status.get("status") == "failed" or result.error:
            result.status, result.metrics = "failed", None
            result.error = result.error or "failed (run.json gives no error)"
        elif result.metrics is None:
            result.status = "failed" if record is not None else "incomplete"
            result.error = f"no {METRICS_FILE} in {storage.join(source or str(run_dir), *parts)}"
        architectures.append(result)
    return Run(source=source or str(run_dir), record=record, architectures=architectures)


def run_arch(run: Run, name: str) -> ArchitectureResult:
    return next(arch for arch in run.architectures if arch.name == name)


def _architecture_folders(run_dir: Path) -> list[Path]:
    return sorted(path for path in run_dir.iterdir() if path.is_dir() and _is_architecture_folder(path))


def _is_architecture_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (METRICS_FILE, HISTORY_FILE, CONFIG_FILE))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SegflowError(f"{path} is not valid JSON ({error})") from None
    except OSError as error:
        raise SegflowError(f"cannot read {path}: {error.strerror}") from None


# === The numbers ===


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of the comparison table: its key in the rows, heading, which end is best, format."""

    key: str
    heading: str
    best: str | None  # "max", "min" or None (not ranked)
    format: Callable[[Any], str]
    optional: bool = False  # shown only when some architecture has a value


def format_percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def format_number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def format_gflops(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def format_millions(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:.3f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def format_text(value: Any) -> str:
    return "—" if value is None else str(value)


COLUMNS: tuple[Column, ...] = (
    Column("val_miou", "val mIoU (%)", "max", format_percent),
    Column("category_miou", "category mIoU (%)", "max", format_percent),
    Column("mean_iiou", "iIoU (%)", "max", format_percent, optional=True),
    Column("mean_category_iiou", "category iIoU (%)", "max", format_percent, optional=True),
    Column("pixel_accuracy", "pixel accuracy (%)", "max", format_percent),
    Column("params", "params (M)", "min", format_millions),
    Column("gflops", "GFLOPs / image", "min", format_gflops),
    Column("inference_images_per_second", "inference images/s", "max", format_number),
    Column("latency_ms_p50", "latency p50 (ms)", "min", lambda value: format_number(value, 2)),
    Column("latency_ms_p95", "latency p95 (ms)", "min", lambda value: format_number(value, 2)),
    Column("train_time_s", "training time", "min", format_duration),
    Column("train_images_per_second", "training images/s", "max", format_number),
    Column("epochs", "epochs", None, format_text),
    Column("image_size", "image size", None, format_text),
)
# The short table of report.md (a Prefect markdown artifact is read in a narrow pane).
MARKDOWN_COLUMNS = (
    "val_miou", "category_miou", "mean_iiou", "pixel_accuracy", "params", "gflops",
    "inference_images_per_second", "latency_ms_p50", "train_time_s", "epochs", "image_size",
)  # fmt: skip


def comparison_row(arch: ArchitectureResult) -> dict:
    """One flat row per architecture (a Prefect table artifact row): raw numbers, not formatted."""
    metrics = arch.metrics or {}
    speed = metrics.get("speed") or {}
    history = arch.history
    train_speeds = [entry["images_per_second"] for entry in history if entry.get("images_per_second")]
    image_size = (arch.config or {}).get("image_size") or speed.get("input_size")
    return {
        "architecture": arch.name,
        "status": arch.status,
        "val_miou": metrics.get("miou"),
        "category_miou": metrics.get("category_miou"),
        "mean_iiou": metrics.get("mean_iiou"),
        "mean_category_iiou": metrics.get("mean_category_iiou"),
        "pixel_accuracy": metrics.get("pixel_accuracy"),
        "params": metrics.get("params", speed.get("params")),
        "gflops": metrics.get("gflops", speed.get("gflops")),
        "inference_images_per_second": speed.get("images_per_second"),
        "latency_ms_p50": speed.get("latency_ms_p50"),
        "latency_ms_p95": speed.get("latency_ms_p95"),
        # Wall time of the epochs (validation included); a resumed run counts only its last session
        # of an interrupted epoch.
        "train_time_s": sum(entry.get("wall_time_s") or 0.0 for entry in history) if history else None,
        # Median over epochs: the first epoch's tracing and a resumed epoch's restart do not skew it.
        "train_images_per_second": statistics.median(train_speeds) if train_speeds else None,
        "epochs": len(history) if history else None,
        "image_size": f"{image_size[0]}x{image_size[1]}" if image_size else None,
    }


def summarize_run(run: Run) -> dict:
    """Everything report.json holds (the sample section is added by `write_report`)."""
    rows = [comparison_row(arch) for arch in run.architectures]
    columns = visible_columns(rows)
    for row in rows:  # optional columns nobody has stay out of the rows (and the Prefect table)
        for column in COLUMNS:
            if column.optional and column not in columns:
                del row[column.key]
    best_per_column = {column.key: best_architectures(rows, column) for column in columns if column.best}
    ranked = [row for row in rows if row["val_miou"] is not None]
    best = max(ranked, key=lambda row: row["val_miou"])["architecture"] if ranked else None
    record = run.record or {}
    comparable, reasons = comparability(run)
    return {
        "format_version": FORMAT_VERSION,
        "generated_at": _now(),
        "source": run.source,
        "run_id": record.get("run_id") or Path(run.source.rstrip("/")).name,
        "run": {key: value for key, value in record.items() if key not in ("architectures", "champions")} or None,
        "comparable": comparable,
        "note": not_comparable_note(reasons),
        "note_reasons": reasons,
        "best_architecture": best,
        "comparison": rows,
        "best": best_per_column,
        "failed": {arch.name: arch.error for arch in run.architectures if arch.status != "completed"},
        "champions": record.get("champions") or [],
        "architectures": {
            arch.name: {
                "status": arch.status,
                "error": arch.error,
                "metrics": arch.metrics,
                "history": arch.history,
                "config": arch.config,
            }
            for arch in run.architectures
        },
        "best_confusion_matrix_normalized": _json_matrix(best_confusion_matrix(run, best)),
    }


def visible_columns(rows: list[dict]) -> list[Column]:
    return [column for column in COLUMNS if not column.optional or any(row.get(column.key) is not None for row in rows)]


def best_architectures(rows: list[dict], column: Column) -> list[str]:
    """The completed architectures holding the best value of `column` (ties all count); none when
    there are fewer than two different values, since nothing stands out. A failed architecture's
    partial training figures are shown but not ranked."""
    values = {
        row["architecture"]: row.get(column.key)
        for row in rows
        if row["status"] == "completed" and row.get(column.key) is not None
    }
    if len(set(values.values())) < 2:  # one value, or all equal: nothing stands out
        return []
    target = max(values.values()) if column.best == "max" else min(values.values())
    return [name for name, value in values.items() if value == target]


def comparability(run: Run) -> tuple[bool, list[str]]:
    """Whether the numbers can be set beside published Cityscapes results, and if not, why."""
    reasons = []
    data = (run.record or {}).get("data") or {}
    if run.record is None:
        reasons.append(f"the run has no {RUN_FILE}, so its data source is unknown")
    elif data.get("synthetic"):
        reasons.append("the data is synthetic (generated street scenes, not Cityscapes)")
    sizes = set()
    for arch in run.architectures:
        speed = (arch.metrics or {}).get("speed") or {}
        for size in ((arch.config or {}).get("image_size"), speed.get("input_size"), speed.get("evaluated_size")):
            if size and (size[0] < IMAGE_HEIGHT or size[1] < IMAGE_WIDTH):
                sizes.add(f"{size[0]}x{size[1]}")
    if sizes:
        reasons.append(
            f"images were {' and '.join(sorted(sizes))}, below Cityscapes' full {IMAGE_HEIGHT}x{IMAGE_WIDTH}"
        )
    counts = {(arch.metrics or {}).get("num_images") for arch in run.completed} - {None}
    if counts and counts != {CITYSCAPES_VAL_EXAMPLES}:
        reasons.append(
            f"scored on {', '.join(str(count) for count in sorted(counts))} val images, "
            f"not Cityscapes' {CITYSCAPES_VAL_EXAMPLES}"
        )
    return not reasons, reasons


def not_comparable_note(reasons: list[str]) -> str | None:
    if not reasons:
        return None
    return "These numbers are not comparable with published Cityscapes results: " + "; ".join(reasons) + "."


def best_confusion_matrix(run: Run, best: str | None) -> np.ndarray | None:
    """The best architecture's 19×19 confusion matrix with each ground-truth row divided by its
    total (NaN where the class has no ground-truth pixel); None if its metrics have none (those
    of `segflow evaluate --predictions` hold a labelId matrix instead)."""
    counts = (run_arch(run, best).metrics or {}).get("confusion_matrix") if best else None
    if counts is None:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)[:, : len(CLASS_NAMES)]


def _json_matrix(matrix: np.ndarray | None) -> list[list[float | None]] | None:
    if matrix is None:
        return None
    return [[float(value) if math.isfinite(value) else None for value in row] for row in matrix]


# === Sample predictions ===


def sample_predictions(
    run: Run, records_dir: str | os.PathLike | None, num_samples: int, fetch_model: Callable[[str], Path]
) -> dict:
    """Run each model on the first `num_samples` val images.

    Returns `{"source": where the images came from or None, "images": names, "note": why some or
    all are missing, "rows": [{"name", "image", "ground_truth", "predictions": {arch: PNG or error}}]}`
    (PNG bytes; `rows` is for the HTML only).
    """
    result = {"source": None, "images": [], "note": None, "rows": []}
    models = [arch for arch in run.completed if arch.model_uri]
    if num_samples < 1:
        result["note"] = "Sample predictions were not asked for."
        return result
    if not models:
        result["note"] = "No architecture has a trained model to show predictions of."
        return result
    data = (run.record or {}).get("data") or {}
    candidates = [records_dir] if records_dir else [data.get("records_dir"), data.get("data_root")]
    located = next((found for found in map(_locate_val_images, filter(None, candidates)) if found), None)
    if located is None:
        searched = ", ".join(str(candidate) for candidate in candidates if candidate) or "none recorded"
        result["note"] = (
            "Sample predictions are skipped: the val images are not on this machine "
            f"(searched: {searched}). Pass --records to render them."
        )
        return result

    kind, folder = located
    examples = _records_examples(folder, num_samples) if kind == "records" else _png_examples(folder, num_samples)
    if not examples:
        result["note"] = f"Sample predictions are skipped: {folder} holds no val images with labels."
        return result
    result["source"] = str(folder)
    result["images"] = [name for name, *_ in examples]
    result["rows"] = [
        {
            "name": name,
            "image": plots.array_png(rgb, SAMPLE_WIDTH),
            "ground_truth": plots.array_png(colorize(label), SAMPLE_WIDTH, nearest=True),
            "predictions": {},
        }
        for name, rgb, label, _ in examples
    ]
    for arch in models:
        for row, prediction in zip(result["rows"], _predict(arch, examples, fetch_model)):
            if not isinstance(prediction, str):  # a text says why the model could not run
                prediction = plots.array_png(colorize(prediction), SAMPLE_WIDTH, nearest=True)
            row["predictions"][arch.name] = prediction
    return result


def _locate_val_images(folder: str | os.PathLike) -> tuple[str, Path] | None:
    """("records", folder) for a folder of val shards, ("pngs", folder) for a Cityscapes folder."""
    from segflow.records import shard_pattern

    path = storage.local_path(folder)
    if storage.is_s3(folder) or not path.is_dir():
        return None
    if any(path.glob(shard_pattern("val"))):
        return "records", path
    if (path / IMAGE_DIR / "val").is_dir() and (path / LABEL_DIR / "val").is_dir():
        return "pngs", path
    return None


def _records_examples(records_dir: Path, count: int) -> list[tuple]:
    """(name, uint8 RGB, trainId label, normalised image batch) of the first val records."""
    import tensorflow as tf

    from segflow.augment import decode_image, parse_eval
    from segflow.data import list_shards
    from segflow.records import FEATURE_KEYS, decode_example

    examples = []
    for serialized in tf.data.TFRecordDataset(list_shards(records_dir, "val")).take(count):
        features = decode_example(serialized)
        image, label = parse_eval(features)
        name = features[FEATURE_KEYS.filename].numpy().decode() or f"val #{len(examples) + 1}"
        examples.append((name, decode_image(features).numpy(), label.numpy(), image[tf.newaxis]))
    return examples


def _png_examples(data_root: Path, count: int) -> list[tuple]:
    """The same as `_records_examples`, from the Cityscapes PNGs."""
    from PIL import Image

    from segflow.predict import normalize, read_rgb

    examples = []
    for image_path in sorted((data_root / IMAGE_DIR / "val").glob(f"*/*{IMAGE_SUFFIX}"))[:count]:
        stem = image_path.name[: -len(IMAGE_SUFFIX)]
        label_path = data_root / LABEL_DIR / "val" / image_path.parent.name / f"{stem}{LABEL_IDS_SUFFIX}"
        if not label_path.is_file():
            continue
        rgb = read_rgb(image_path)
        with Image.open(label_path) as label_image:
            label = to_train_ids(np.asarray(label_image))
        examples.append((image_path.name, rgb, label, normalize(rgb[np.newaxis])))
    return examples


def _predict(arch: ArchitectureResult, examples: list[tuple], fetch_model) -> list:
    """trainId predictions at each label's size, or one error text per example if the model fails."""
    from segflow.evaluate import load_model, make_predictor

    try:
        model = load_model(fetch_model(arch.model_uri))
    except SegflowError as error:
        return [f"no prediction: {error}"] * len(examples)
    predictor = make_predictor(model, compiled=False)  # a few images: no graph to trace
    return [predictor(images, tuple(label.shape))[0] for _, _, label, images in examples]


# === HTML ===

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1340px; margin: 0 auto; padding: 16px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 2px; }
h2 { font-size: 20px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #59636e; margin: 0 0 10px; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
.note { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.failure { background: #ffebe9; border: 1px solid #ff8182; border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.failure pre { margin: 6px 0 0; white-space: pre-wrap; word-break: break-word; font-size: 12px;
               max-height: 16em; overflow: auto; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; text-align: left; }
td.text { text-align: left; }
td.best { background: #dafbe1; font-weight: 700; }
td.best::after { content: " ★"; color: #1a7f37; }
tr.failed td { color: #82071e; background: #fff5f5; }
.scroll { overflow-x: auto; }
.caption { color: #59636e; font-size: 12px; margin: 2px 0 10px; }
table.heat td { min-width: 62px; }
.tables { display: flex; flex-wrap: wrap; gap: 0 40px; align-items: flex-start; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
img.matrix { max-width: min(100%, 780px); }
.samples { display: grid; gap: 6px; align-items: start; }
.samples figure { margin: 0; }
.samples img { width: 100%; height: auto; display: block; image-rendering: pixelated; border: 1px solid #d0d7de; }
.samples figcaption, .samples .head { font-size: 12px; color: #59636e; overflow-wrap: anywhere; }
.samples .head { font-weight: 600; color: #1f2328; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 10px 0; font-size: 12px; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #8c959f; vertical-align: -2px;
          margin-right: 4px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: #59636e; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
code { font-size: 12px; }
"""
COMPARISON_CAPTION = (
    "★ best of each column among the completed architectures: highest scores and throughput; fewest "
    "parameters and GFLOPs, lowest latency, shortest training. Scores are on the val split at full label "
    "resolution. Inference images/s: model + resizes + argmax, data loading excluded; latency at batch 1. "
    "Training time: wall time of all epochs, validation included; training images/s: median over epochs."
)
PER_CLASS_CAPTION = (
    "IoU in %, coloured from 0 (light) to 100 (dark green); bold: best of the row. —: the class is in neither "
    "the ground truth nor the predictions, so it has no score and is left out of the mean."
)


def render_html(summary: dict, run: Run, figures: dict[str, bytes], sample_rows: list[dict]) -> str:
    """The whole page; every piece of text from the run goes through `html.escape`."""
    title = f"segflow report: {summary['run_id']}"
    sections = [
        ("comparison", "Comparison", _html_comparison(summary)),
        ("per-class", "Per-class IoU", _html_per_class(run)),
        ("curves", "Training curves", _html_curves(figures)),
        ("confusion", "Confusion matrix", _html_confusion(summary, figures)),
        ("samples", "Sample predictions", _html_samples(summary, sample_rows)),
        ("run", "Run", _html_run(summary, run)),
    ]
    best = summary["best_architecture"]
    headline = "No architecture finished."
    if best:
        headline = f"Best val mIoU: <strong>{_e(best)}</strong> ({format_percent(run_arch(run, best).metrics['miou'])} %)"
    meta = (
        f"{headline} · {len(run.architectures)} architectures · generated {_e(summary['generated_at'])} "
        f"from <code>{_e(summary['source'])}</code>"
    )
    note = f'<div class="note"><strong>Note.</strong> {_e(summary["note"])}</div>' if summary["note"] else ""
    nav = " ".join(f'<a href="#{anchor}">{_e(heading)}</a>' for anchor, heading, _ in sections)
    body = "\n".join(
        f'<section id="{anchor}">\n<h2>{_e(heading)}</h2>\n{content}\n</section>' for anchor, heading, content in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>{_e(title)}</h1>
<p class="meta">{meta}</p>
<nav>{nav}</nav>
{note}
{body}
</main>
</body>
</html>
"""


def _html_comparison(summary: dict) -> str:
    rows = summary["comparison"]
    columns = visible_columns(rows)
    body = []
    for row in rows:
        cells = [_td(row["architecture"], "text"), _td(row["status"], "text")]
        for column in columns:
            best = row["architecture"] in summary["best"].get(column.key, [])
            cells.append(_td(column.format(row.get(column.key)), "best" if best else None))
        body.append(_tr(cells, "failed" if row["status"] != "completed" else None))
    failures = "".join(
        f'<div class="failure"><strong>{_e(name)}</strong> {_e(status_of(summary, name))}: '
        f"{_e(_first_line(error))}</div>"
        for name, error in summary["failed"].items()
    )
    headings = ["architecture", "status", *(column.heading for column in columns)]
    return _table(headings, body) + _caption(COMPARISON_CAPTION) + failures


def status_of(summary: dict, name: str) -> str:
    return summary["architectures"][name]["status"]


def _html_per_class(run: Run) -> str:
    completed = run.completed
    if not completed:
        return "<p>No architecture has metrics.</p>"
    tables = []
    for title, row_heading, key, names, mean_key in (
        ("Classes", "class", "class_iou", CLASS_NAMES, "miou"),
        ("Categories", "category", "category_iou", CATEGORY_NAMES, "category_miou"),
    ):
        rows = [(name, [(arch.metrics.get(key) or {}).get(name) for arch in completed]) for name in names]
        rows.append(("mean", [arch.metrics.get(mean_key) for arch in completed]))
        body = [_tr([_td(name, "text"), *(_heat_cell(value, values) for value in values)]) for name, values in rows]
        headings = [row_heading, *(arch.name for arch in completed)]
        tables.append(f"<div><h3>{_e(title)}</h3>{_table(headings, body, 'heat')}</div>")
    return f'<div class="tables">{"".join(tables)}</div>' + _caption(PER_CLASS_CAPTION)


def _heat_cell(value: float | None, row_values: list) -> str:
    background, text = plots.heat_color(value)
    present = [other for other in row_values if other is not None]
    bold = value is not None and len(set(present)) > 1 and value == max(present)
    style = f"background:{background};color:{text}" + (";font-weight:700" if bold else "")
    return f'<td style="{style}">{_e(format_percent(value))}</td>'


def _html_curves(figures: dict[str, bytes]) -> str:
    if "curves" not in figures:
        return "<p>No architecture has a training history.</p>"
    alt = "Training loss and validation mIoU per epoch, one line per architecture"
    return _img(figures["curves"], alt, "figure") + _caption(
        "Training loss (mean over each epoch's steps) and val mIoU scored at the end of each epoch."
    )


def _html_confusion(summary: dict, figures: dict[str, bytes]) -> str:
    best = summary["best_architecture"]
    if best is None:
        return "<p>No architecture finished, so there is no confusion matrix.</p>"
    if "confusion" not in figures:
        return f"<p>The metrics of {_e(best)} hold no confusion matrix.</p>"
    return _img(figures["confusion"], f"Row-normalised confusion matrix of {best}", "figure matrix") + _caption(
        f"{best}, the best val mIoU. Each row is a ground-truth class and sums to 1: the diagonal is the class's "
        "recall, the rest of the row shows what it is mistaken for. Blank rows: classes absent from the val "
        "ground truth."
    )


def _html_samples(summary: dict, sample_rows: list[dict]) -> str:
    note = f"<p>{_e(summary['samples']['note'])}</p>" if summary["samples"]["note"] else ""
    if not sample_rows:
        return note
    architectures = list(sample_rows[0]["predictions"])
    headings = ["image", "ground truth", *architectures]
    cells = [f'<div class="head">{_e(heading)}</div>' for heading in headings]
    for row in sample_rows:
        tiles = [(row["image"], row["name"]), (row["ground_truth"], "ground truth")]
        tiles += [(row["predictions"][arch], arch) for arch in architectures]
        for content, caption in tiles:
            picture = "" if isinstance(content, str) else _img(content, caption)  # a text: the model failed
            label = content if isinstance(content, str) else caption
            cells.append(f"<figure>{picture}<figcaption>{_e(label)}</figcaption></figure>")
    columns = f"grid-template-columns: repeat({len(headings)}, minmax(0, 1fr))"
    legend = "".join(
        f'<span><span class="swatch" style="background:rgb{tuple(label.color)}"></span>{_e(label.name)}</span>'
        for label in TRAIN_LABELS
    ) + '<span><span class="swatch" style="background:#000"></span>void (not scored)</span>'
    return (
        note
        + f'<div class="samples" style="{columns}">{"".join(cells)}</div>'
        + _caption(f"The first {len(sample_rows)} val images of {summary['samples']['source']}, at full label resolution.")
        + f'<div class="legend">{legend}</div>'
    )


def _html_run(summary: dict, run: Run) -> str:
    record = run.record or {}
    data = record.get("data") or {}
    hardware = record.get("hardware") or {}
    machine = [
        hardware.get("cpu"),
        hardware.get("machine"),
        f"{hardware['cores']} cores" if hardware.get("cores") else None,
        f"{hardware['memory_gib']} GiB" if hardware.get("memory_gib") else None,
    ]
    facts = {
        "run id": summary["run_id"],
        "flow run id": record.get("flow_run_id"),
        "started": record.get("started_at"),
        "ended": record.get("ended_at"),
        "duration": format_duration(_seconds_between(record.get("started_at"), record.get("ended_at"))),
        "code version": record.get("code_version"),
        "data source": data.get("source"),
        "synthetic data": {True: "yes", False: "no"}.get(data.get("synthetic")),
        "data fingerprint": data.get("fingerprint"),
        "dataset folder": data.get("data_root"),
        "records folder": data.get("records_dir"),
        "machine": " · ".join(str(part) for part in machine if part),
        "GPUs": ", ".join(hardware["gpus"]) if hardware.get("gpus") else ("none" if "gpus" in hardware else None),
    }
    unknown = f"<em>not recorded{'' if run.record else f' (no {RUN_FILE})'}</em>"
    items = "".join(
        f"<dt>{_e(name)}</dt><dd>{_e(value) if value not in (None, '', '—') else unknown}</dd>"
        for name, value in facts.items()
    )
    parts = [f'<dl class="facts">{items}</dl>', "<h3>Architectures</h3>"]
    for arch in run.architectures:
        if arch.status == "completed":
            parts.append(f"<div><strong>{_e(arch.name)}</strong>: completed</div>")
        else:
            parts.append(
                f'<div class="failure"><strong>{_e(arch.name)}</strong>: {_e(arch.status)}<pre>{_e(arch.error)}</pre></div>'
            )

    parts.append("<h3>Champion decisions</h3>")
    if summary["champions"]:
        headings = ["architecture", "this run's val mIoU (%)", "previous champion", "its val mIoU (%)", "promoted", "reason"]
        body = [
            _tr([
                _td(decision.get("architecture"), "text"),
                _td(format_percent(decision.get("val_miou"))),
                _td(decision.get("previous_champion") or "none", "text"),
                _td(format_percent(decision.get("previous_val_miou"))),
                _td("yes" if decision.get("promote") else "no", "text"),
                _td(decision.get("reason"), "text"),
            ])
            for decision in summary["champions"]
        ]  # fmt: skip
        parts.append(_table(headings, body))
    else:
        parts.append("<p>No champion decisions were made in this run.</p>")

    if record.get("parameters"):
        body = [_tr([_td(key, "text"), _td(_json_text(value), "text")]) for key, value in record["parameters"].items()]
        parts.append("<h3>Pipeline parameters</h3>" + _table(["parameter", "value"], body))
    configs = {arch.name: arch.config for arch in run.architectures if arch.config}
    if configs:
        keys = dict.fromkeys(key for config in configs.values() for key in config)
        body = [
            _tr([_td(key, "text"), *(_td(_json_text(config.get(key)), "text") for config in configs.values())])
            for key in keys
        ]
        parts.append(
            "<details><summary>Training settings of each architecture (config.json)</summary>"
            + _table(["setting", *configs], body)
            + "</details>"
        )
    return "\n".join(parts)


def _table(headings: list[str], rows: list[str], css_class: str | None = None) -> str:
    """A scrollable table: `headings` are plain text, `rows` are rendered `<tr>` elements."""
    head = "<tr>" + "".join(f"<th>{_e(heading)}</th>" for heading in headings) + "</tr>"
    table_class = f' class="{css_class}"' if css_class else ""
    return f'<div class="scroll"><table{table_class}>{head}{"".join(rows)}</table></div>'


def _tr(cells: list[str], css_class: str | None = None) -> str:
    return f'<tr class="{css_class}">' + "".join(cells) + "</tr>" if css_class else "<tr>" + "".join(cells) + "</tr>"


def _td(text: Any, css_class: str | None = None) -> str:
    return f'<td class="{css_class}">{_e(text)}</td>' if css_class else f"<td>{_e(text)}</td>"


def _caption(text: str) -> str:
    return f'<p class="caption">{_e(text)}</p>'


def _img(png: bytes, alt: str, css_class: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    image_class = f' class="{css_class}"' if css_class else ""
    return f'<img{image_class} alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:300] if lines else "no error recorded"


# === Markdown ===


def render_markdown(summary: dict) -> str:
    """The summary for the Prefect markdown artifact: table, failures, champion decisions, note."""
    rows = summary["comparison"]
    columns = [column for column in visible_columns(rows) if column.key in MARKDOWN_COLUMNS]
    lines = [f"# segflow run {_md(summary['run_id'])}", ""]
    if summary["note"]:
        lines += [f"> **Note.** {_md(summary['note'])}", ""]
    best = summary["best_architecture"]
    if best:
        best_row = next(row for row in rows if row["architecture"] == best)
        lines += [f"Best val mIoU: **{_md(best)}** ({format_percent(best_row['val_miou'])} %).", ""]
    else:
        lines += ["No architecture finished.", ""]
    lines.append("| architecture | status | " + " | ".join(_md(column.heading) for column in columns) + " |")
    lines.append("|---|---|" + "---:|" * len(columns))
    for row in rows:
        cells = [_md(row["architecture"]), _md(row["status"])]
        for column in columns:
            text = _md(column.format(row.get(column.key)))
            cells.append(f"**{text}**" if row["architecture"] in summary["best"].get(column.key, []) else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bold: best of the column. IoU and accuracy in %, on the val split."]
    if summary["failed"]:
        lines += ["", "## Failed", ""]
        for name, error in summary["failed"].items():
            lines.append(f"- **{_md(name)}** ({_md(status_of(summary, name))}): {_md(_first_line(error))}")
    lines += ["", "## Champion decisions", ""]
    if summary["champions"]:
        lines.append("| architecture | val mIoU (%) | previous champion | its val mIoU (%) | promoted | reason |")
        lines.append("|---|---:|---|---:|---|---|")
        for decision in summary["champions"]:
            cells = [
                _md(decision.get("architecture")),
                format_percent(decision.get("val_miou")),
                _md(decision.get("previous_champion") or "none"),
                format_percent(decision.get("previous_val_miou")),
                "yes" if decision.get("promote") else "no",
                _md(decision.get("reason")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No champion decisions were made in this run.")
    run = summary["run"] or {}
    data = run.get("data") or {}
    fingerprint = str(data.get("fingerprint") or "not recorded").replace("`", "")
    lines += ["", f"Data fingerprint: `{fingerprint}` · code: {_md(run.get('code_version') or 'not recorded')}"]
    return "\n".join(lines) + "\n"


def _md(value: Any) -> str:
    """Text safe inside a markdown table cell: one line, pipes and markup escaped."""
    text = " ".join(str(value).split())
    for character in "\\`*_[]<>|":
        text = text.replace(character, "\\" + character)
    return text


# === Helpers ===


def _write_atomically(path: Path, text: str) -> Path:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a report is for reading
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities (a diverged loss) as None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
