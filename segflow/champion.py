"""Champion models: one pointer per architecture in the results store, moved only by a better run.

`{results_uri}/champions/{architecture}.json` holds the run id, val mIoU and model URI of the
best run so far. A nightly run is compared with it (`decide`), the run is published, and only
then is the pointer moved (`promote`), so a champion always points at a published model.
"""

from __future__ import annotations

import datetime

from segflow import storage

CHAMPIONS_DIR = "champions"


def champion_uri(results_uri: str, architecture: str) -> str:
    return storage.join(results_uri, CHAMPIONS_DIR, f"{architecture}.json")


def current_champion(results_uri: str, architecture: str) -> dict | None:
    uri = champion_uri(results_uri, architecture)
    return storage.read_json(uri) if storage.exists(uri) else None


def decide(results_uri: str, architecture: str, run_id: str, val_miou: float | None) -> dict:
    """Whether this run's model should replace the architecture's champion, and why.

    A run without a val mIoU is never promoted; the first run with one always is; after that a
    run must beat the champion's mIoU strictly (a tie keeps the older model).
    The reason gives mIoU in percent with two decimals, the units of the report's tables.
    """
    champion = current_champion(results_uri, architecture)
    previous = champion["val_miou"] if champion else None
    if val_miou is None:
        promote, reason = False, "no val mIoU (training or evaluation failed)"
    elif champion is None:
        promote, reason = True, f"first champion (val mIoU {percent(val_miou)})"
    elif val_miou > previous:
        promote, reason = True, f"val mIoU {percent(val_miou)} beats champion {champion['run_id']} ({percent(previous)})"
    else:
        promote = False
        reason = f"val mIoU {percent(val_miou)} does not beat champion {champion['run_id']} ({percent(previous)})"
    return {
        "architecture": architecture,
        "run_id": run_id,
        "val_miou": val_miou,
        "previous_champion": champion["run_id"] if champion else None,
        "previous_val_miou": previous,
        "promote": promote,
        "reason": reason,
    }


def percent(miou: float) -> str:
    """An mIoU in [0, 1] as the report shows it: "25.00 %"."""
    return f"{100 * miou:.2f} %"


def promote(results_uri: str, decision: dict, model_uri: str) -> dict | None:
    """Move the champion pointer for a decision that says so; returns the new pointer or None."""
    if not decision["promote"]:
        return None
    pointer = {
        "architecture": decision["architecture"],
        "run_id": decision["run_id"],
        "val_miou": decision["val_miou"],
        "model_uri": model_uri,
        "promoted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json(champion_uri(results_uri, decision["architecture"]), pointer)
    return pointer
