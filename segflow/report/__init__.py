"""The run report: one self-contained HTML page that compares the architectures of a run, plus
`report.json` (every number) and `report.md` (the summary the Prefect run shows).

Input is a run folder, local or `s3://`, as the pipeline writes it (file names in
`segflow.run_files`):

    run.json                  parameters, data, code version, hardware, times, failures, champions
    {arch}/metrics.json       from `segflow.evaluate.evaluate_model` (missing when {arch} failed)
    {arch}/history.json       one entry per epoch (maybe partial when {arch} failed)
    {arch}/config.json        the TrainConfig
    {arch}/samples/           the exported model's predictions on the first val images, written
                              by evaluation; without them the report runs {arch}/model.keras

A results store root (holding `latest.json`) stands for its latest run. A folder without
`run.json` works too: a `segflow train` output folder (its files at the top) or a folder of
several; each is named after its folder, and the run section says what is unknown (data source,
fingerprint, times), so the comparability note errs on the side of showing.

Sample predictions are the tiles evaluation wrote in each `{arch}/samples/`, so a run read back on
another machine shows them too. Where an architecture has none (or `--records` asks for other
images), every model runs here on the val images: the records folder (`--records`, or run.json's
`data.records_dir`) or the Cityscapes folder (`data.data_root`); when neither is on this machine,
the section says so and the rest of the report is unchanged.

The parts: `loading` (reading a run), `summary` (the numbers: pure), `samples` (the only part
that imports TensorFlow, lazily), `render` (Jinja2 templates in `templates/`), `figures` here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segflow import atomic, plots
from segflow.cityscapes import CLASS_NAMES
from segflow.report.loading import ArchitectureResult, Run, load_run, local_run_folder, resolve_latest
from segflow.report.render import render_html, render_markdown
from segflow.report.samples import NUM_SAMPLES, sample_predictions
from segflow.report.summary import best_confusion_matrix, finite, summarize_run

REPORT_FILES = {"html": "report.html", "json": "report.json", "md": "report.md"}

__all__ = ["ArchitectureResult", "Run", "REPORT_FILES", "load_run", "summarize_run", "write_report"]


def write_report(
    runs: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    records_dir: str | os.PathLike | None = None,
    num_samples: int = NUM_SAMPLES,
) -> dict[str, Path]:
    """Render `report.html`, `report.json` and `report.md` for the run at `runs` into `out_dir`.

    Args:
        runs: a run folder or URI, or a results store root holding `latest.json` (see above).
        out_dir: a local folder; each file is written atomically (`segflow.atomic`).
        records_dir: TFRecords to draw the sample images from, instead of the run's own data.
        num_samples: val images shown with every architecture's prediction (0: none).

    Returns `{"html": path, "json": path, "md": path}`. Raises SegflowError, before writing
    anything, when `runs` holds no run or one of its files is not JSON.
    """
    runs = resolve_latest(runs)
    with local_run_folder(runs) as (run_dir, fetch_model):
        run = load_run(run_dir, source=str(runs))
        summary = summarize_run(run)
        samples = sample_predictions(run, records_dir, num_samples, fetch_model)
    summary["samples"] = {key: value for key, value in samples.items() if key != "rows"}
    contents = {
        "html": render_html(summary, run, figures(run, summary["best_architecture"]), samples["rows"]),
        "json": json.dumps(finite(summary), indent=2, allow_nan=False) + "\n",
        "md": render_markdown(summary),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {kind: atomic.write_text(out_dir / REPORT_FILES[kind], text) for kind, text in contents.items()}


def figures(run: Run, best: str | None) -> dict[str, bytes]:
    """PNGs of the training curves (when any architecture has a history) and of the best
    architecture's row-normalised confusion matrix (when its metrics hold one)."""
    result = {}
    histories = {arch.name: arch.history for arch in run.architectures if arch.history}
    if histories:
        result["curves"] = plots.training_curves(histories)
    confusion = best_confusion_matrix(run, best)
    if confusion is not None:
        result["confusion"] = plots.confusion_matrix(
            confusion, CLASS_NAMES, f"{best} (best val mIoU): row-normalised confusion matrix"
        )
    return result
