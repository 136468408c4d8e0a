"""Provenance as the stores record it: canonical JSON form, the differences between two, the code version."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


class ProvenanceMismatch(RuntimeError):
    """The run's localizer configuration differs from the one the store was made with."""


def diff_provenance(
    stored: Mapping[str, Any], requested: Mapping[str, Any], prefix: str = "", stored_in: str = "cache"
) -> list[str]:
    """Human-readable differences between two provenance mappings, one line per differing dotted key
    ('<key>: <stored_in> has ..., this run has ...')."""
    lines = []
    for key in sorted(set(stored) | set(requested)):
        name = f"{prefix}{key}"
        a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += diff_provenance(a, b, prefix=f"{name}.", stored_in=stored_in)
        elif a != b:
            lines.append(f"{name}: {stored_in} has {json.dumps(a)}, this run has {json.dumps(b)}")
    return lines


def canonical(value: Mapping[str, Any]) -> dict[str, Any]:
    """JSON round trip, so tuples/paths/numpy scalars compare equal to what the store returns."""
    return json.loads(json.dumps(dict(value), sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Iterable):
        return list(obj)
    raise TypeError(f"provenance value {obj!r} is not JSON-serialisable")


DISTRIBUTION = "mask-what-matters"


def code_version() -> str:
    """The code's one version string, recorded in caches, packed stores, checkpoints, exports and results: the
    package's version from its metadata, plus the git commit (and `.dirty` with uncommitted changes) when this code
    runs from a git checkout of the project, e.g. '0.1.0+git.a06e5c4' or '0.1.0+git.a06e5c4.dirty'; the version
    alone for an installed wheel; 'unknown' when neither is known."""
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = None
    commit = _git_commit(Path(__file__).resolve().parents[1])
    if commit is None:
        return version or "unknown"
    return f"{version or 'unknown'}+git.{commit}"


def _git_commit(root: Path) -> str | None:
    """Short commit (+'.dirty') of the git checkout whose top folder is `root`; None elsewhere (an installed package
    inside some other repository, e.g. a venv in a project folder, must not report that repository's commit)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != root:
        return None
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}.dirty" if dirty else commit
