"""Pseudonymous, stable item ids, and how a corpus-relative path is stored.

An item is one 2-D image: a file (path relative to the corpus root) and a frame/slice index in it.
The id is a BLAKE2b hash of exactly that pair (personalised with a fixed string, not keyed), so it is stable
across runs and machines and carries no DICOM tag value. It is not a secret: whoever can list or guess the
corpus's paths can recompute the ids, so paths that hold names must be pseudonymised before the scan
(docs/CORPUS.md, "Paths and pseudonymity").

File names are bytes on POSIX; Python gives a name that is not valid UTF-8 as a str with lone surrogates
(`os.fsdecode`, 'surrogateescape'), which opens the file but cannot be written to parquet or zarr. Such a path is
hashed over its bytes (the same id as before for every valid name) and held (in manifests, stores, tables) as
`encode_relpath` writes it: '/' (which no relative path starts with) + the path with each undecodable byte written
\\xNN and each backslash doubled. Readers open `root / decode_relpath(path)`, the str that opens the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import PurePosixPath

ID_LENGTH = 16
_ESCAPED_MARK = "/"
_ESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def make_item_id(relpath: str, frame: int) -> str:
    """Return the 16-hex-digit id of frame `frame` of the file at `relpath` (POSIX, corpus-relative)."""
    relpath = decode_relpath(relpath)  # the id hashes the name's bytes, whether given escaped or not
    key = f"{PurePosixPath(relpath).as_posix()}#{int(frame)}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(key, digest_size=ID_LENGTH // 2, person=b"mwm-item").hexdigest()


def encode_relpath(relpath: str) -> str:
    """`relpath` as stored in a manifest or store: unchanged when it is valid UTF-8, else escaped (module doc)."""
    try:
        relpath.encode("utf-8")
        return relpath
    except UnicodeEncodeError:
        raw = os.fsencode(relpath).replace(b"\\", b"\\\\")
        return _ESCAPED_MARK + raw.decode("utf-8", "backslashreplace")


def decode_relpath(stored: str) -> str:
    """The inverse of `encode_relpath`: the str (possibly with surrogates) that opens the file."""
    if not stored.startswith(_ESCAPED_MARK):
        return stored
    raw = stored[len(_ESCAPED_MARK) :].encode("utf-8")
    return os.fsdecode(_ESCAPE.sub(lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1][1:], 16)]), raw))
