"""Champion models: one pointer per architecture in the results store, moved only by a better run.

`{results_uri}/champions/{architecture}.json` holds the run id, val mIoU and model URI (absolute:
`s3://...` or a resolved local path) of the best run so far. A nightly run is compared with it
(`decide`), the run is published, and only then is the pointer moved (`promote`), so a champion
always points at a published model.

Promotion is a compare-and-swap (`storage.write_json_if`: S3 conditional writes, a lock for
local folders): two overlapping runs (a manual run during the nightly one) cannot both replace
the pointer they read. The later writer finds the pointer changed, decides again against the
champion it actually found, and promotes only if it still wins.
"""

from __future__ import annotations

import datetime
import logging
import math

from segflow import storage
from segflow.errors import SegflowError

CHAMPIONS_DIR = "champions"
_MAX_ATTEMPTS = 20  # compare-and-swap rounds before giving up: each lost round means another run promoted

logger = logging.getLogger(__name__)


def champion_uri(results_uri: str, architecture: str) -> str:
    return storage.join(results_uri, CHAMPIONS_DIR, f"{architecture}.json")


def current_champion(results_uri: str, architecture: str) -> dict | None:
    return storage.read_json_tagged(champion_uri(results_uri, architecture))[0]


def decide(results_uri: str, architecture: str, run_id: str, val_miou: float | None) -> dict:
    """Whether this run's model should replace the architecture's champion, and why.

    A run without a val mIoU is never promoted; the first run with one always is; after that a
    run must beat the champion's mIoU strictly (a tie keeps the older model).
    The reason gives mIoU in percent with two decimals, the units of the report's tables.
    """
    return _judge(current_champion(results_uri, architecture), architecture, run_id, val_miou)


def promote(results_uri: str, decision: dict, model_uri: str) -> dict | None:
    """Move the champion pointer for a decision that says so; returns the new pointer or None.

    The decision is taken again against the pointer found at the moment of writing, and the write
    succeeds only if nobody moved the pointer in between (else: read, decide, try again). A retry
    of a promotion that already happened returns the pointer it wrote.
    """
    if not decision["promote"]:
        return None
    architecture, run_id, val_miou = decision["architecture"], decision["run_id"], decision["val_miou"]
    uri = champion_uri(results_uri, architecture)
    model_uri = storage.absolute(model_uri)
    for _ in range(_MAX_ATTEMPTS):
        champion, tag = storage.read_json_tagged(uri)
        if champion is not None and champion["run_id"] == run_id and champion["model_uri"] == model_uri:
            return champion  # this promotion already happened (a retried task)
        verdict = _judge(champion, architecture, run_id, val_miou)
        if not verdict["promote"]:
            logger.warning("not promoting %s for %s after all: %s", run_id, architecture, verdict["reason"])
            return None
        pointer = {
            "architecture": architecture,
            "run_id": run_id,
            "val_miou": val_miou,
            "model_uri": model_uri,
            "promoted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if storage.write_json_if(uri, pointer, tag):
            return pointer
    raise SegflowError(f"could not move {uri}: it changed {_MAX_ATTEMPTS} times while promoting {run_id}")


def _judge(champion: dict | None, architecture: str, run_id: str, val_miou: float | None) -> dict:
    previous = champion["val_miou"] if champion else None
    if val_miou is None:
        promote, reason = False, "no val mIoU (training or evaluation failed)"
    elif not math.isfinite(val_miou) or not 0 <= val_miou <= 1:
        promote, reason = False, f"val mIoU {val_miou!r} is not a number in [0, 1] (a diverged run?)"
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

