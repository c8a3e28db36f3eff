"""The report's figures as PNG bytes, drawn with matplotlib's object API (`Figure` on the Agg
canvas, never `pyplot`): no global figure state, so reports can render in several threads at
once (Prefect's thread pool) and no display is needed.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

DPI = 100
HEAT_COLORMAP = "YlGn"


def training_curves(histories: dict[str, list[dict]]) -> bytes:
    """Loss and val mIoU (%) per epoch, one line per architecture, side by side (PNG)."""
    return figure_png(training_curves_figure(histories))


def training_curves_figure(histories: dict[str, list[dict]]) -> Figure:
    """The figure of `training_curves`; its one legend sits below both plots, outside the axes,
    so it never covers a line."""
    figure = Figure(figsize=(12, 4.6), dpi=DPI, layout="constrained")
    loss_axes, miou_axes = figure.subplots(1, 2)
    for name, history in histories.items():
        epochs = [entry["epoch"] for entry in history]
        loss_axes.plot(epochs, [entry.get("loss") for entry in history], marker="o", label=name)
        miou = [_percent(entry.get("val_miou")) for entry in history]
        miou_axes.plot(epochs, [math.nan if value is None else value for value in miou], marker="o", label=name)
    for axes, title, label in ((loss_axes, "Training loss", "loss"), (miou_axes, "Validation mIoU", "mIoU (%)")):
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    if histories:
        figure.legend(*loss_axes.get_legend_handles_labels(), loc="outside lower center",
                      ncols=min(len(histories), 6), fontsize="small")  # fmt: skip
    return figure


# Confusion-matrix cell numbers: 8 pt at DPI 100 is ~11 px, readable when the PNG is shown at its
# own size (the report's CSS caps it at CONFUSION_WIDTH_PX, the figure's width).
CONFUSION_FONT_PT = 8
CONFUSION_SIZE_INCHES = (11, 10)
CONFUSION_WIDTH_PX = CONFUSION_SIZE_INCHES[0] * DPI


def confusion_matrix(normalized: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    """A heat map of a row-normalised confusion matrix (rows: ground truth, columns: prediction);
    NaN rows (classes absent from the ground truth) stay blank. PNG of CONFUSION_WIDTH_PX width."""
    return figure_png(confusion_matrix_figure(normalized, class_names, title))


def confusion_matrix_figure(normalized: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """The figure of `confusion_matrix`: cells of 0.005 or more are written as `.NN`."""
    size = len(class_names)
    figure = Figure(figsize=CONFUSION_SIZE_INCHES, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_invalid(normalized), cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(size), class_names, rotation=60, ha="right", rotation_mode="anchor", fontsize=9)
    axes.set_yticks(range(size), class_names, fontsize=9)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("ground-truth class")
    axes.set_title(title)
    for row in range(size):
        for column in range(size):
            value = normalized[row, column]
            if np.isfinite(value) and value >= 0.005:
                axes.text(column, row, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center",
                          fontsize=CONFUSION_FONT_PT, color="white" if value > 0.6 else "black")  # fmt: skip
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the ground-truth class's pixels")
    return figure


def heat_color(value: float | None) -> tuple[str, str]:
    """(background, text) CSS colours for a score in [0, 1] in a heat-map table cell."""
    if value is None or not math.isfinite(value):
        return "#f2f2f2", "#888888"
    from matplotlib import colormaps

    red, green, blue, _ = colormaps[HEAT_COLORMAP](min(max(value, 0.0), 1.0))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    background = "#{:02x}{:02x}{:02x}".format(*(round(channel * 255) for channel in (red, green, blue)))
    return background, "#000000" if luminance > 0.5 else "#ffffff"


def array_png(pixels: np.ndarray, max_width: int | None = None, *, nearest: bool = False) -> bytes:
    """A uint8 image array as PNG bytes, shrunk to `max_width` (labels: `nearest`, to keep classes)."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if max_width and image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value
