"""Paths as outputs record them: never absolute (docs/CORPUS.md, "Paths").

An absolute path names the machine's folders (a user's home, a hospital's share, a patient's folder above the
corpus root) and means nothing on another machine. Manifests and caches hold paths relative to the corpus root;
everything else that a run writes (checkpoint hyper-parameters, config.yaml, results JSON, sidecars, failure
reasons) records a path relative to the working directory of the run that wrote it, where a rerun from that
folder finds it again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def portable_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """`path` relative to `base` (default: the working directory) when it is absolute; unchanged otherwise."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    return os.path.relpath(text, os.fspath(base) if base is not None else os.getcwd())


def portable(value: Any, base: str | os.PathLike[str] | None = None) -> Any:
    """`value` with every absolute path in it (a path object, or a string that is one) made relative by
    `portable_path`, through dicts, lists and tuples; anything else unchanged."""
    if isinstance(value, os.PathLike):
        return portable_path(value, base)
    if isinstance(value, str):
        return portable_path(value, base) if _looks_like_path(value) else value
    if isinstance(value, Mapping):
        return {k: portable(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v, base) for v in value)
    return value


def absolute_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> Path:
    """The inverse of `portable_path` for the same `base`: a recorded relative path made absolute again."""
    given = Path(path)
    return given if given.is_absolute() else Path(base if base is not None else os.getcwd()) / given


def _looks_like_path(text: str) -> bool:
    # A string value is a path when it is absolute and one line; URLs (s3://, gs://) and patterns are not absolute.
    return os.path.isabs(text) and "\n" not in text
