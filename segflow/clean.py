"""Retention for a results store: keep the newest published runs, delete the rest.

A results store (a local folder or `s3://bucket/prefix`) holds `runs/{run id}/` folders; run ids
start with their UTC start time (`20261130T062334Z-…`), so their names sort by age. `plan`
chooses what to delete and never chooses:

- the run `latest.json` points at,
- a run that an architecture's champion pointer (`champions/{arch}.json`) names,
- one of the `keep` newest runs.

`clean` deletes the planned runs (or, with `dry_run`, only lists them). Deleting a run removes
its `manifest.json` first, so a run cut short by a crash mid-deletion no longer looks published.
"""

from __future__ import annotations

import shutil
from typing import NamedTuple

from segflow import champion, storage
from segflow.errors import SegflowError

RUNS_DIR = "runs"


class CleanPlan(NamedTuple):
    delete: list[str]  # run folders (run ids), oldest first
    keep: list[str]  # run folders kept, oldest first
    protected: dict[str, str]  # run folder -> why it is kept whatever `keep` says


def list_runs(results_uri: str) -> list[str]:
    """The run ids under `{results_uri}/runs/`, oldest first."""
    names = storage.list_files(storage.join(results_uri, RUNS_DIR))
    return sorted({name.split("/", 1)[0] for name in names if "/" in name})


def protected_runs(results_uri: str) -> dict[str, str]:
    """Run id -> reason, for the run `latest.json` names and every champion's run."""
    protected = {}
    latest = storage.latest_run(results_uri)
    if latest:
        protected[_run_folder(latest["uri"])] = "latest.json points at it"
    champions_uri = storage.join(results_uri, champion.CHAMPIONS_DIR)
    for name in storage.list_files(champions_uri):
        if name.endswith(".json") and "/" not in name:
            pointer = storage.read_json(storage.join(champions_uri, name))
            protected.setdefault(_run_folder(pointer["model_uri"]), f"champion of {pointer['architecture']}")
    return protected


def _run_folder(uri: str) -> str:
    """The folder name under `runs/` that a pointer's URI names (a re-published run's folder
    carries a suffix after its run id, so the pointer's `run_id` alone is not enough)."""
    parts = str(uri).split("/")
    after_runs = max(index for index, part in enumerate(parts) if part == RUNS_DIR) + 1
    return parts[after_runs]


def plan(results_uri: str, keep: int) -> CleanPlan:
    """Which runs `clean(results_uri, keep)` would delete, and which it keeps and why.

    Raises:
        SegflowError: `keep` is negative.
    """
    if keep < 0:
        raise SegflowError(f"--keep must be 0 or more; got {keep}")
    runs = list_runs(results_uri)
    protected = protected_runs(results_uri)
    newest = set(runs[len(runs) - keep :]) if keep else set()
    delete = [run for run in runs if run not in newest and run not in protected]
    return CleanPlan(delete, [run for run in runs if run not in delete], protected)


def clean(results_uri: str, keep: int, *, dry_run: bool = False) -> CleanPlan:
    """Delete the runs `plan` chooses (nothing with `dry_run`); returns the plan."""
    chosen = plan(results_uri, keep)
    if not dry_run:
        for run_id in chosen.delete:
            _delete_run(storage.join(results_uri, RUNS_DIR, run_id))
    return chosen


def _delete_run(run_uri: str) -> None:
    if not storage.is_s3(run_uri):
        path = storage.local_path(run_uri)
        (path / storage.MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(path)
        return
    bucket, key = storage.split_s3(run_uri)
    prefix = key.rstrip("/") + "/"
    client = storage.s3_client()
    client.delete_object(Bucket=bucket, Key=prefix + storage.MANIFEST)
    keys = [prefix + name for name in storage.list_files(run_uri)]
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
