"""Localizer provenance as stored in a ROI cache: canonical JSON form, and the differences between two of them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


class ProvenanceMismatch(RuntimeError):
    """The run's localizer configuration differs from the one the store was made with."""


def diff_provenance(stored: Mapping[str, Any], requested: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two provenance mappings, one line per differing dotted key."""
    lines = []
    for key in sorted(set(stored) | set(requested)):
        name = f"{prefix}{key}"
        a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += diff_provenance(a, b, prefix=f"{name}.")
        elif a != b:
            lines.append(f"{name}: cache has {json.dumps(a)}, this run has {json.dumps(b)}")
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
