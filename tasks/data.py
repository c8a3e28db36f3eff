"""Tasks that get the data and turn it into TFRecords; both are cached on their inputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from segflow import convert, dataset
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


def _dataset_key(context, parameters) -> str:
    return f"dataset-{_dataset_fingerprint(parameters)}-{_digest(str(Path(parameters['work_dir']).resolve()))}"


def _dataset_fingerprint(parameters: dict) -> str:
    source = parameters["source"]
    return dataset.fingerprint(
        source,
        synthetic_images=tuple(parameters["synthetic_images"]),
        synthetic_size=tuple(parameters["synthetic_size"]),
        seed=parameters["seed"],
        credentials=cityscapes_credentials() if source.startswith("cityscapes") else None,
    )


def _records_key(context, parameters) -> str:
    fingerprint = convert.input_fingerprint(parameters["data_root"])
    return f"records-{fingerprint}-{_digest(str(Path(parameters['records_dir']).resolve()))}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    cache_key_fn=_dataset_key,
    task_run_name="get data: {source}",
)
def prepare_dataset(source: str, work_dir: str, synthetic_images, synthetic_size, seed: int) -> str:
    """Download and extract (or generate) the dataset; cached on the packages' MD5s."""
    credentials = cityscapes_credentials() if source.startswith("cityscapes") else None
    data_root = dataset.prepare(
        source,
        work_dir,
        synthetic_images=tuple(synthetic_images),
        synthetic_size=tuple(synthetic_size),
        seed=seed,
        credentials=credentials,
    )
    return str(data_root)


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), cache_key_fn=_records_key)
def convert_records(data_root: str, records_dir: str) -> str:
    """Write the TFRecords; cached on the input fingerprint (and a no-op on unchanged inputs anyway)."""
    convert.convert(data_root, records_dir, progress=False)
    return records_dir


# The cache remembers paths; these run the task afresh when its output was deleted since.


def get_dataset(source: str, work_dir: str, synthetic_images, synthetic_size, seed: int) -> str:
    """`prepare_dataset`, cached unless the data it once prepared is gone."""
    arguments = dict(source=source, work_dir=work_dir, synthetic_images=synthetic_images,
                     synthetic_size=synthetic_size, seed=seed)  # fmt: skip
    key = _dataset_fingerprint(arguments)
    ready = dataset.is_prepared(dataset.data_root_for(source, work_dir, key), key)
    return prepare_dataset.with_options(refresh_cache=not ready)(**arguments)


def get_records(data_root: str, records_dir: str) -> str:
    """`convert_records`, cached unless the records it once wrote are gone or no longer match
    their manifest (a shard deleted, cut short or changed)."""
    try:
        convert.verify_records(records_dir)
        ready = True
    except SegflowError:
        ready = False
    return convert_records.with_options(refresh_cache=not ready)(data_root, records_dir)
