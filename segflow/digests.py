"""File checksums: one streaming sha256 for the records manifest, checkpoints and evaluated models."""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 8 * 2**20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at `path`, read in 8 MiB chunks. Raises OSError if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
