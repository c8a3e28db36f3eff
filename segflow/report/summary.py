"""The report's numbers, without rendering: one comparison row per architecture, the best of each
column, whether the run is comparable with published Cityscapes results, and how far its
training is from a real one. Pure functions of a loaded `Run`; no TensorFlow, no files.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import statistics
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segflow.cityscapes import CITYSCAPES_VAL_EXAMPLES, CLASS_NAMES, IMAGE_HEIGHT, IMAGE_WIDTH
from segflow.report.loading import ArchitectureResult, Run
from segflow.run_files import RUN_FILE

FORMAT_VERSION = 1
# A Cityscapes recipe's length: MMSegmentation's configs/_base_/schedules/schedule_80k.py
# (max_iters=80000) with its Cityscapes configs' batch of 8 (4 GPUs x 2 images,
# configs/_base_/datasets/cityscapes.py).
RECIPE_STEPS = 80_000
RECIPE_BATCH_SIZE = 8
# Training shorter than this share of a recipe gets the "far below a real training" sentence.
SHORT_TRAINING_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of the comparison table: its key in the rows, heading, which end is best, format,
    and for speeds the row key of its spread (`[low, high]` over repeats), shown beside it."""

    key: str
    heading: str
    best: str | None  # "max", "min" or None (not ranked)
    format: Callable[[Any], str]
    optional: bool = False  # shown only when some architecture has a value
    spread_key: str | None = None


def format_percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def format_number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def format_count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


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


def format_spread(spread: list[float] | None, format: Callable[[Any], str]) -> str:
    """`low–high` of a speed's repeats, "—" when it was measured once or not at all."""
    return "—" if not spread else f"{format(spread[0])}–{format(spread[1])}"


def _milliseconds(value: float | None) -> str:
    return format_number(value, 2)


COLUMNS: tuple[Column, ...] = (
    Column("val_miou", "val mIoU (%)", "max", format_percent),
    Column("category_miou", "category mIoU (%)", "max", format_percent),
    Column("mean_iiou", "iIoU (%)", "max", format_percent, optional=True),
    Column("mean_category_iiou", "category iIoU (%)", "max", format_percent, optional=True),
    Column("pixel_accuracy", "pixel accuracy (%)", "max", format_percent),
    Column("params", "params (M)", "min", format_millions),
    Column("gflops", "GFLOPs / image", "min", format_gflops),
    Column("inference_images_per_second", "inference images/s", "max", format_number,
           spread_key="inference_images_per_second_spread"),
    Column("latency_ms_p50", "latency p50 (ms)", "min", _milliseconds, spread_key="latency_ms_spread"),
    Column("latency_ms_p95", "latency p95 (ms)", "min", _milliseconds),
    Column("train_time_s", "training time", "min", format_duration),
    Column("train_images_per_second", "training images/s", "max", format_number,
           spread_key="train_images_per_second_spread"),
    Column("steps", "optimizer steps", None, format_count),
    Column("images_seen", "images seen", None, format_count),
    Column("epochs", "epochs", None, format_text),
    Column("image_size", "image size", None, format_text),
)  # fmt: skip
# The short table of report.md (a Prefect markdown artifact is read in a narrow pane).
MARKDOWN_COLUMNS = (
    "val_miou", "category_miou", "mean_iiou", "pixel_accuracy", "params", "gflops",
    "inference_images_per_second", "latency_ms_p50", "train_time_s", "steps", "epochs", "image_size",
)  # fmt: skip


def comparison_row(arch: ArchitectureResult) -> dict:
    """One flat row per architecture (a Prefect table artifact row): raw numbers, not formatted.

    Speeds are medians with their spread (`*_spread`: `[low, high]` of the repeats, None when
    measured once): inference images/s over the val split with p25–p75 of the per-batch rates,
    latency p50 with p25–p75 of the batch-1 runs, training images/s the median over epochs with
    their min–max.
    """
    metrics = arch.metrics or {}
    speed = metrics.get("speed") or {}
    history = arch.history
    train_speeds = [entry["images_per_second"] for entry in history if entry.get("images_per_second")]
    image_size = (arch.config or {}).get("image_size") or speed.get("input_size")
    steps = history[-1].get("step") if history else None
    batch_size = (arch.config or {}).get("batch_size")
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
        "inference_images_per_second_spread": speed.get("images_per_second_p25_p75"),
        "latency_ms_p50": speed.get("latency_ms_p50"),
        "latency_ms_spread": speed.get("latency_ms_p25_p75"),
        "latency_ms_p95": speed.get("latency_ms_p95"),
        # Wall time of the epochs (validation included); a resumed run counts only its last session
        # of an interrupted epoch.
        "train_time_s": sum(entry.get("wall_time_s") or 0.0 for entry in history) if history else None,
        # Median over epochs: the first epoch's tracing and a resumed epoch's restart do not skew it.
        "train_images_per_second": statistics.median(train_speeds) if train_speeds else None,
        "train_images_per_second_spread": [min(train_speeds), max(train_speeds)] if len(train_speeds) > 1 else None,
        "steps": steps,
        "images_seen": steps * batch_size if steps is not None and batch_size else None,
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
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": run.source,
        "run_id": record.get("run_id") or Path(run.source.rstrip("/")).name,
        "run": {key: value for key, value in record.items() if key not in ("architectures", "champions")} or None,
        "comparable": comparable,
        "note": not_comparable_note(reasons),
        "note_reasons": reasons,
        "training_note": training_note(rows),
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
    """The completed architectures holding the best value of `column` (ties all count).

    None when there are fewer than two different values, since nothing stands out; for a speed
    with a spread, none unless the best one's spread lies clear of every other's (spreads that
    overlap are machine-load noise, not a winner). A failed architecture's partial training
    figures are shown but not ranked.
    """
    completed = [row for row in rows if row["status"] == "completed" and row.get(column.key) is not None]
    values = {row["architecture"]: row[column.key] for row in completed}
    if len(set(values.values())) < 2:  # one value, or all equal: nothing stands out
        return []
    target = max(values.values()) if column.best == "max" else min(values.values())
    winners = [name for name, value in values.items() if value == target]
    if column.spread_key:
        spreads = {row["architecture"]: row.get(column.spread_key) or [row[column.key]] * 2 for row in completed}
        for winner in winners:
            low, high = spreads[winner]
            for name, (other_low, other_high) in spreads.items():
                if name not in winners and low <= other_high and other_low <= high:
                    return []
    return winners


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


def training_note(rows: list[dict]) -> str | None:
    """A sentence when the completed architectures trained far less than a Cityscapes recipe
    (under SHORT_TRAINING_SHARE of RECIPE_STEPS optimizer steps), e.g. "16 steps; a Cityscapes
    recipe runs 80,000"; None when they trained long enough or the steps are unknown."""
    short = {
        row["architecture"]: row
        for row in rows
        if row["status"] == "completed" and row["steps"] is not None and row["steps"] < SHORT_TRAINING_SHARE * RECIPE_STEPS
    }
    if not short:
        return None
    parts = []
    for name, row in short.items():
        seen = f", {row['images_seen']:,} images seen" if row["images_seen"] is not None else ""
        parts.append(f"{name} {row['steps']:,} optimizer steps{seen}")
    return (
        f"Short training: {'; '.join(parts)}; a Cityscapes recipe runs {RECIPE_STEPS:,} steps "
        f"({RECIPE_STEPS * RECIPE_BATCH_SIZE:,} images at batch {RECIPE_BATCH_SIZE}, MMSegmentation's schedule_80k). "
        "These models are far from trained: their scores show that the pipeline works, not how the "
        "architectures compare."
    )


def best_confusion_matrix(run: Run, best: str | None) -> np.ndarray | None:
    """The best architecture's 19×19 confusion matrix with each ground-truth row divided by its
    total (NaN where the class has no ground-truth pixel); None if its metrics have none (those
    of `segflow evaluate --predictions` hold a labelId matrix instead)."""
    counts = (run.architecture(best).metrics or {}).get("confusion_matrix") if best else None
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


def finite(value: Any) -> Any:
    """`value` with NaN and infinities (a diverged loss) as None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value
