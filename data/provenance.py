"""Provenance as the stores record it: canonical JSON form, the differences between two, the code version."""

from __future__ import annotations

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


def code_version() -> str:
    """`git describe --always --dirty` of this code's repository, or 'unknown' outside git / without commits."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
