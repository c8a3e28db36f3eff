"""Training slots: Prefect's global concurrency limit says how many trainings run at once on this
machine; `segflow.gpus` says which GPUs each one gets."""

from __future__ import annotations

import contextlib
import re
import socket
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

from segflow import gpus


def limit_name() -> str:
    """The global concurrency limit of this machine's trainings: `segflow-training-<host>`."""
    return "segflow-training-" + re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())


def size_training_limit(cpu_slots: int) -> int:
    """Create or resize this machine's limit: one slot per GPU (a training occupies
    `gpus.gpus_per_training()` of them), or `cpu_slots` trainings on a machine without GPUs."""
    owned = gpus.worker_gpu_ids()
    slots = len(owned) if owned else cpu_slots
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(limit_name(), slots)
    return slots


@contextlib.contextmanager
def training_slot() -> Iterator[list[str]]:
    """Wait for a training slot on this machine; yields the GPU ids this training owns ([] on a
    CPU machine). The slot and the ids are free again as soon as the block ends."""
    count = gpus.gpus_per_training()
    with concurrency(limit_name(), occupy=max(count, 1), strict=True, lease_duration=300):
        with gpus.lease(count) as gpu_ids:
            yield gpu_ids
