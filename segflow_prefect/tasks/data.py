"""Tasks that get the data and turn it into TFRecords.

Neither is cached nor retried by Prefect: `data_source.prepare` and `convert.convert` already know
when their output is up to date (and then do nothing), and the downloads retry network failures
themselves (see segflow_prefect/tasks/retry.py).
"""

from __future__ import annotations

import os

from prefect import task

from segflow import convert, data_source
from segflow.download import Credentials
from segflow.errors import SegflowError

CREDENTIALS_BLOCK = "cityscapes-credentials"


def cityscapes_credentials() -> Credentials | None:
    """The account from CITYSCAPES_USERNAME/CITYSCAPES_PASSWORD, else from the Secret block
    `cityscapes-credentials` (JSON `{"username": ..., "password": ...}`), else None."""
    if os.environ.get("CITYSCAPES_USERNAME") and os.environ.get("CITYSCAPES_PASSWORD"):
        return Credentials.from_env()
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(CREDENTIALS_BLOCK).get()
    except ValueError:  # no such block
        return None
    return Credentials(value["username"], value["password"])


@task(task_run_name="get data: {source}")
def prepare_dataset(source: str, work_dir: str, synthetic_images, synthetic_size, seed: int) -> str:
    """Download and extract (or generate) the dataset; nothing to do when it is already there."""
    credentials = cityscapes_credentials() if source.startswith("cityscapes") else None
    data_root = data_source.prepare(
        source,
        work_dir,
        synthetic_images=tuple(synthetic_images),
        synthetic_size=tuple(synthetic_size),
        seed=seed,
        credentials=credentials,
    )
    return str(data_root)


@task(task_run_name="convert records")
def convert_records(data_root: str, records_dir: str) -> str:
    """Write the TFRecords (nothing to do when they are up to date with the data)."""
    convert.convert(data_root, records_dir, progress=False)
    return records_dir
