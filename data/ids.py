"""Pseudonymous, stable item ids.

An item is one 2-D image: a file (path relative to the corpus root) and a frame/slice index in it.
The id is a BLAKE2b hash of exactly that pair (personalised with a fixed string, not keyed), so it is stable
across runs and machines and carries no DICOM tag value. It is not a secret: whoever can list or guess the
corpus's paths can recompute the ids, so paths that hold names must be pseudonymised before the scan
(docs/CORPUS.md, "Paths and pseudonymity").
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

ID_LENGTH = 16


def make_item_id(relpath: str, frame: int) -> str:
    """Return the 16-hex-digit id of frame `frame` of the file at `relpath` (POSIX, corpus-relative)."""
    key = f"{PurePosixPath(relpath).as_posix()}#{int(frame)}".encode()
    return hashlib.blake2b(key, digest_size=ID_LENGTH // 2, person=b"mwm-item").hexdigest()
