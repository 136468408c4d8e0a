"""Intensity settings follow the stores: a run takes the rules recorded with the data it reads, and says so when
it is told otherwise.

The localize run records its intensity rules in the ROI cache's provenance; a packed image store records the
rules its pixels were normalised with; an exported backbone's sidecar records its pretraining's. Pretraining and
fine-tuning use those by default (`follow_intensity`), warn when a run sets different ones (`IntensityOverride`),
and refuse a packed store whose pixels were made with rules other than the run's (`require_same_intensity`):
its pixels cannot be re-normalised.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from data.intensity import IntensityConfig


class IntensityOverride(UserWarning):
    """A run's intensity settings differ from those recorded with its data."""


class IntensityMismatch(ValueError):
    """A packed store's pixels were normalised with other intensity settings than the run's."""


def recorded_intensity(provenance: Mapping[str, Any] | None) -> IntensityConfig | None:
    """The intensity rules a provenance records under 'intensity' (a derived cache's under 'from', e.g. a shuffled
    control's source); None when it records none (a cache of imported masks)."""
    node = provenance
    while isinstance(node, Mapping):
        if node.get("intensity") is not None:
            return IntensityConfig.from_fields(node["intensity"])
        node = node.get("from")
    return None


def follow_intensity(
    requested: Mapping[str, Any] | None, recorded: IntensityConfig | None, recorded_in: str
) -> IntensityConfig:
    """The rules a run uses: its own (`requested`, IntensityConfig fields) when set, else the `recorded` ones, else
    the defaults. Own settings that differ from recorded ones are warned about (IntensityOverride), naming the
    fields and `recorded_in` (where the recorded ones come from)."""
    if requested is None:
        return recorded if recorded is not None else IntensityConfig()
    config = IntensityConfig.from_fields(requested)
    differences = config.differences(recorded) if recorded is not None else []
    if differences:
        warnings.warn(
            f"this run's intensity settings differ from those recorded in {recorded_in} "
            f"(this run's vs recorded): {'; '.join(differences)}. The images will not look like the ones its "
            "data was made from; leave the run's intensity unset to follow the recorded settings.",
            IntensityOverride,
            stacklevel=2,
        )
    return config


def require_same_intensity(run: IntensityConfig, stored: IntensityConfig, store: str) -> None:
    """Refuse (IntensityMismatch) a packed store at `store` whose pixels were normalised with other rules."""
    differences = run.differences(stored)
    if differences:
        raise IntensityMismatch(
            f"{store}: the packed images were normalised with other intensity settings than this run's "
            f"(this run's vs the store's): {'; '.join(differences)}. Pack a new store with this run's settings "
            "(python -m data pack ... --intensity ...), or leave the run's intensity unset to use the store's."
        )
