"""Training slots: Prefect's global concurrency limit says how many trainings run at once on this
machine; `segflow.gpus` says which GPUs each one gets."""

from __future__ import annotations

import contextlib
import re
import socket
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL

from segflow import gpus

# A holder renews its lease every ~3/4 of this; a server's repossessor frees the slot of a holder
# that died this long after its last renewal.
LEASE_SECONDS = 60


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
        if not PREFECT_API_URL.value():
            # Prefect's temporary API (segflow demo) keeps leases in memory and runs no
            # repossessor: slots a killed earlier demo held would stay taken forever. That server
            # lives only as long as this process, so no other holder can be alive.
            client.update_global_concurrency_limit(limit_name(), GlobalConcurrencyLimitUpdate(active_slots=0))
    return slots


@contextlib.contextmanager
def training_slot() -> Iterator[list[str]]:
    """Wait for a training slot on this machine; yields the GPU ids this training owns ([] on a
    CPU machine). The slot and the ids are free again as soon as the block ends."""
    count = gpus.gpus_per_training()
    with concurrency(limit_name(), occupy=max(count, 1), strict=True, lease_duration=LEASE_SECONDS):
        with gpus.lease(count) as gpu_ids:
            yield gpu_ids
