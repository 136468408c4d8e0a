"""SHA-256 of files, for provenance: model weights, exported backbones, imported mask folders.

One helper for every module that records which file it used, so that equal files give equal digests everywhere.
Files are read in chunks: a multi-GB checkpoint is never held in memory.
"""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 22


def update_with_file(digest: hashlib._Hash, path: str | os.PathLike[str]) -> None:
    """Feed the bytes of the file at `path` into `digest` (e.g. to hash several files into one digest)."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)


def file_sha256(path: str | os.PathLike[str], length: int | None = None) -> str:
    """Hex SHA-256 of the file at `path`; its first `length` hex digits when given."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()[:length]
