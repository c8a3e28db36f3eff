"""Rendering the report: the summary and figures into `report.html` and `report.md` through the
Jinja2 templates in `templates/` (`report.html.j2` with autoescaping on, so every text from a run
is escaped; `report.md.j2` with the `md` filter for table cells; `report.css` inlined, so the page
is one self-contained file). This module only arranges values for the templates.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from segflow import plots
from segflow.cityscapes import CATEGORY_NAMES, CLASS_NAMES, TRAIN_LABELS
from segflow.report.loading import Run
from segflow.report.summary import (
    MARKDOWN_COLUMNS,
    format_duration,
    format_percent,
    format_spread,
    visible_columns,
)
from segflow.run_files import RUN_FILE

TEMPLATES = Path(__file__).parent / "templates"
COMPARISON_CAPTION = (
    "★ best of each column among the completed architectures: highest scores and throughput; fewest "
    "parameters and GFLOPs, lowest latency, shortest training. Scores are on the val split at full label "
    "resolution. Inference images/s: model + resizes + argmax over the val split, data loading excluded, "
    "range: p25–p75 of the per-batch rates; latency at batch 1, median and p25–p75 of repeated runs. "
    "Training time: wall time of all epochs, validation included; training images/s: median over epochs, "
    "range: slowest–fastest epoch. Speeds depend on the machine's load while they were measured: a speed "
    "gets no ★ when its range overlaps another architecture's. Optimizer steps and images seen: the whole "
    "training (images seen = steps × batch size)."
)
PER_CLASS_CAPTION = (
    "IoU in %, coloured from 0 (light) to 100 (dark green); bold: best of the row. —: the class is in neither "
    "the ground truth nor the predictions, so it has no score and is left out of the mean."
)


def environment(*, html_page: bool) -> jinja2.Environment:
    """The templates' environment: autoescaping for the HTML page (every printed value through
    `html.escape`), none for markdown (its table cells use the `md` filter); undefined names are
    errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=html_page,
        finalize=_escape_html if html_page else None,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=markdown_cell, png=png_data_uri, percent=format_percent, first_line=first_line, json_text=json_text)
    return env


def render_html(summary: dict, run: Run, figures: dict[str, bytes], sample_rows: list[dict]) -> str:
    """The whole page as one self-contained HTML document (images inlined as data URIs)."""
    return environment(html_page=True).get_template("report.html.j2").render(
        css=(TEMPLATES / "report.css").read_text(),
        summary={**summary, "champions": champion_rows(summary)},
        run=run,
        best_miou=run.architecture(summary["best_architecture"]).metrics["miou"] if summary["best_architecture"] else None,
        comparison=comparison_table(summary["comparison"], summary["best"]),
        comparison_caption=COMPARISON_CAPTION,
        per_class=per_class_tables(run),
        per_class_caption=PER_CLASS_CAPTION,
        figures=figures,
        samples=sample_grid(summary, sample_rows),
        facts=run_facts(summary, run),
        no_record=f" (no {RUN_FILE})" if run.record is None else "",
        configs=config_table(run),
    )


def render_markdown(summary: dict) -> str:
    """The summary for the Prefect markdown artifact: table, failures, champion decisions, notes."""
    rows = summary["comparison"]
    columns = [column for column in visible_columns(rows) if column.key in MARKDOWN_COLUMNS]
    best = summary["best_architecture"]
    run = summary["run"] or {}
    return environment(html_page=False).get_template("report.md.j2").render(
        summary={**summary, "champions": champion_rows(summary)},
        best_row=next((row for row in rows if row["architecture"] == best), None),
        headings=[column.heading for column in columns],
        rows=[
            {
                "architecture": row["architecture"],
                "status": row["status"],
                "cells": [
                    (column.format(row.get(column.key)), row["architecture"] in summary["best"].get(column.key, []))
                    for column in columns
                ],
            }
            for row in rows
        ],
        fingerprint=str((run.get("data") or {}).get("fingerprint") or "not recorded").replace("`", ""),
        code_version=run.get("code_version") or "not recorded",
    )


# === What the templates show ===

CHAMPION_KEYS = ("architecture", "val_miou", "previous_champion", "previous_val_miou", "promote", "reason")


def champion_rows(summary: dict) -> list[dict]:
    """The champion decisions with every key the tables show (None where run.json lacks one)."""
    return [{key: decision.get(key) for key in CHAMPION_KEYS} for decision in summary["champions"]]


def comparison_table(rows: list[dict], best: dict[str, list[str]]) -> dict:
    """Headings and cells (text, CSS class) of the comparison table; a speed with a spread gets a
    range column after it."""
    columns = visible_columns(rows)
    headings = ["architecture", "status"]
    for column in columns:
        headings.append(column.heading)
        if column.spread_key:
            headings.append(f"{column.heading} range")
    body = []
    for row in rows:
        cells = [(row["architecture"], "text"), (row["status"], "text")]
        for column in columns:
            cells.append((column.format(row.get(column.key)), "best" if row["architecture"] in best.get(column.key, []) else None))
            if column.spread_key:
                cells.append((format_spread(row.get(column.spread_key), column.format), "spread"))
        body.append({"class": "failed" if row["status"] != "completed" else None, "cells": cells})
    return {"headings": headings, "rows": body}


def per_class_tables(run: Run) -> list[dict]:
    """The class and category IoU tables, one column per completed architecture, as heat maps."""
    completed = run.completed
    tables = []
    for title, row_heading, key, names, mean_key in (
        ("Classes", "class", "class_iou", CLASS_NAMES, "miou"),
        ("Categories", "category", "category_iou", CATEGORY_NAMES, "category_miou"),
    ):
        rows = [(name, [(arch.metrics.get(key) or {}).get(name) for arch in completed]) for name in names]
        rows.append(("mean", [arch.metrics.get(mean_key) for arch in completed]))
        tables.append({
            "title": title,
            "headings": [row_heading, *(arch.name for arch in completed)],
            "rows": [(name, [heat_cell(value, values) for value in values]) for name, values in rows],
        })  # fmt: skip
    return tables


def heat_cell(value: float | None, row_values: list) -> tuple[str, str]:
    """(text, CSS style) of a per-class cell: coloured by the score, bold when best of its row."""
    background, text = plots.heat_color(value)
    present = [other for other in row_values if other is not None]
    bold = value is not None and len(set(present)) > 1 and value == max(present)
    return format_percent(value), f"background:{background};color:{text}" + (";font-weight:700" if bold else "")


def sample_grid(summary: dict, sample_rows: list[dict]) -> dict:
    """The sample section: column headings, tiles (PNG or the text saying why a model failed, and
    a caption), and the colour legend of the trainIds."""
    architectures = list(sample_rows[0]["predictions"]) if sample_rows else []
    tiles = []
    for row in sample_rows:
        tiles += [(row["image"], row["name"]), (row["ground_truth"], "ground truth")]
        tiles += [(row["predictions"][arch], arch) for arch in architectures]
    return {
        "note": summary["samples"]["note"],
        "headings": ["image", "ground truth", *architectures],
        "tiles": [
            {"png": None if isinstance(content, str) else content, "label": content if isinstance(content, str) else caption}
            for content, caption in tiles
        ],
        "count": len(sample_rows),
        "source": summary["samples"]["source"],
        "legend": [(f"rgb{tuple(label.color)}", label.name) for label in TRAIN_LABELS],
    }


def run_facts(summary: dict, run: Run) -> dict[str, Any]:
    """The run section's facts; None or empty values show as "not recorded"."""
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
    return {name: None if value in (None, "", "—") else value for name, value in facts.items()}


def config_table(run: Run) -> dict | None:
    """Each architecture's config.json side by side (None when no architecture has one)."""
    configs = {arch.name: arch.config for arch in run.architectures if arch.config}
    if not configs:
        return None
    keys = dict.fromkeys(key for config in configs.values() for key in config)
    return {
        "headings": ["setting", *configs],
        "rows": [[key, *(json_text(config.get(key)) for config in configs.values())] for key in keys],
    }


# === Filters ===


def _escape_html(value: Any) -> Any:
    """Every value printed into HTML, escaped the way `html.escape` does (quotes too, `'` as
    `&#x27;`); markup the templates made themselves (macros, `safe`) passes unchanged."""
    if isinstance(value, markupsafe.Markup):
        return value
    return markupsafe.Markup(html.escape("" if value is None else str(value), quote=True))


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_cell(value: Any) -> str:
    """Text safe inside a markdown table cell: one line, pipes and markup escaped."""
    text = " ".join(str(value).split())
    for character in "\\`*_[]<>|":
        text = text.replace(character, "\\" + character)
    return text


def json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:300] if lines else "no error recorded"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None
