"""Intensity normalisation: physical pixel values -> float32 in [0, 1], per modality.

CT is windowed in Hounsfield units (a fixed level/width, so the same tissue maps to the same value in every
image); other grey modalities are scaled per image between two percentiles (MR and X-ray intensities have no
absolute meaning); RGB images in the 8-bit range are divided by 255 (their values are already display values).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

# Images above this many values take the chunked, copy-free path of `percentiles` (4096 x 4096).
LARGE_IMAGE_PIXELS = 1 << 24
_CHUNK = 1 << 22

CT_WINDOWS: dict[str, tuple[float, float]] = {
    # name -> (level, width) in HU
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}


@dataclass(frozen=True)
class IntensityRule:
    """How one modality's values map to [0, 1]; set exactly one field.

    window:      a CT window, by name (see CT_WINDOWS) or (level, width) in physical units.
    percentiles: (low, high) percentiles of the image's finite values map to 0 and 1.
    value_range: fixed (low, high) values map to 0 and 1 (e.g. (0, 255) for display-ready 8-bit images).
    Values outside the mapped interval are clipped.
    """

    window: str | tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = None
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        chosen = [name for name in ("window", "percentiles", "value_range") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"IntensityRule needs exactly one of window, percentiles, value_range; got {chosen}")
        if self.window is not None:
            level, width = window_level_width(self.window)
            if width <= 0:
                raise ValueError(f"CT window width must be positive, got {width}")
        if self.percentiles is not None:
            low, high = self.percentiles
            if not 0 <= low < high <= 100:
                raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"value_range must satisfy low < high, got {self.value_range}")

    def bounds(self, finite_values: np.ndarray) -> tuple[float, float]:
        """The (low, high) values that map to 0 and 1 for an image with these finite values."""
        if self.window is not None:
            level, width = window_level_width(self.window)
            return level - width / 2, level + width / 2
        if self.value_range is not None:
            return float(self.value_range[0]), float(self.value_range[1])
        if finite_values.size == 0:
            return 0.0, 1.0
        low, high = percentiles(finite_values, self.percentiles)
        if high <= low:  # a mostly flat image (e.g. 99.5% background): fall back to its full range
            low, high = finite_values.min(), finite_values.max()
        return float(low), float(high)


@dataclass(frozen=True)
class IntensityConfig:
    """Per-modality intensity rules.

    ct_window:    the CT window, a CT_WINDOWS name or (level, width) in HU.
    percentiles:  the percentile rule of every other grey modality (MR, XR, MG, US, OT).
    per_modality: overrides keyed by normalised modality ('CT', 'MR', 'XR', 'MG', 'US', 'OT'); values are
                  IntensityRule or a mapping of its fields (YAML-friendly), e.g. {'XR': {'percentiles': [1, 99]},
                  'US': {'value_range': [0, 255]}}.
    An override applies to grey and RGB images of its modality alike. Without one, RGB images whose values lie in
    [0, 255] are divided by 255 and other RGB images get the percentile rule over all channels jointly.
    """

    ct_window: str | tuple[float, float] = "soft_tissue"
    percentiles: tuple[float, float] = (0.5, 99.5)
    per_modality: Mapping[str, IntensityRule | Mapping[str, Any]] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise fields once (YAML gives lists, not tuples), read-only afterwards.
        if not isinstance(self.ct_window, str):
            object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "percentiles", tuple(float(v) for v in self.percentiles))
        IntensityRule(window=self.ct_window)  # validates early, naming the bad value
        IntensityRule(percentiles=self.percentiles)
        rules = {
            str(modality).upper(): rule if isinstance(rule, IntensityRule) else _rule_from_mapping(rule)
            for modality, rule in (self.per_modality or {}).items()
        }
        object.__setattr__(self, "per_modality", MappingProxyType(rules))

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any] | None) -> IntensityConfig:
        """The config of a mapping of its fields (YAML, provenance); None or {} = the defaults."""
        try:
            return cls(**dict(fields or {}))
        except TypeError as e:  # an unknown field: name the ones that exist
            raise ValueError(f"intensity: {e}; fields are ct_window, percentiles, per_modality") from e

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready, CT windows as [level, width]: equal for configs that map images alike (what the
        packed store records)."""
        return {
            "ct_window": list(window_level_width(self.ct_window)),
            "percentiles": list(self.percentiles),
            "per_modality": {m: _rule_to_dict(r) for m, r in sorted(self.per_modality.items())},
        }

    def differences(self, other: IntensityConfig) -> list[str]:
        """The fields whose rules differ (a CT window by name equals the same (level, width)), as
        'field: <self> vs <other>' lines; empty when both map every image alike."""
        lines = []
        if window_level_width(self.ct_window) != window_level_width(other.ct_window):
            lines.append(f"ct_window: {json.dumps(_show(self.ct_window))} vs {json.dumps(_show(other.ct_window))}")
        if self.percentiles != other.percentiles:
            lines.append(f"percentiles: {list(self.percentiles)} vs {list(other.percentiles)}")
        for modality in sorted(set(self.per_modality) | set(other.per_modality)):
            mine, theirs = self.per_modality.get(modality), other.per_modality.get(modality)
            if _rule_key(mine) != _rule_key(theirs):
                lines.append(f"per_modality.{modality}: {_show_rule(mine)} vs {_show_rule(theirs)}")
        return lines

    def rule_for(self, modality: str, rgb: bool = False, max_value: float = 0.0) -> IntensityRule:
        """The rule for an image of `modality`; `rgb` and `max_value` pick the RGB default."""
        modality = modality.upper()
        if modality in self.per_modality:
            return self.per_modality[modality]
        if rgb and max_value <= 255:
            return IntensityRule(value_range=(0.0, 255.0))
        if rgb:
            return IntensityRule(percentiles=self.percentiles)
        if modality == "CT":
            return IntensityRule(window=self.ct_window)
        return IntensityRule(percentiles=self.percentiles)


def window_level_width(window: str | tuple[float, float]) -> tuple[float, float]:
    """(level, width) of a CT window given by name or as a pair."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; known: {sorted(CT_WINDOWS)}")
        return CT_WINDOWS[window]
    level, width = window
    return float(level), float(width)


def normalize(
    pixels: np.ndarray, modality: str, config: IntensityConfig = IntensityConfig(), *, overwrite: bool = False
) -> np.ndarray:
    """Map physical pixel values (H, W) or (H, W, 3) to float32 in [0, 1] by the modality's rule.

    NaN and -Inf become 0 and +Inf becomes 1; they are ignored when percentiles are computed.
    A flat image maps to zeros under the percentile rule.
    overwrite: a float32 `pixels` the caller gives up is normalised in place (no image-sized copy; the values are
    the same), so a large image costs its own size once (issue 28: a 12000 x 12000 radiograph).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {pixels.shape}")
    in_place = overwrite and pixels.dtype == np.float32 and pixels.flags.writeable and pixels.flags.c_contiguous
    pixels = pixels.astype(np.float32, copy=False)
    all_finite = bool(np.isfinite(pixels).all())
    finite_values = pixels if all_finite else pixels[np.isfinite(pixels)]
    max_value = float(finite_values.max()) if finite_values.size else 0.0
    rule = config.rule_for(modality, rgb=pixels.ndim == 3, max_value=max_value)
    low, high = rule.bounds(finite_values)
    del finite_values

    # high == low only for a flat image: its finite values all equal low and map to 0 with any scale; 1 keeps
    # +Inf at +Inf (then 1, as documented) where 0 would make it NaN (then 0)
    scale = np.float32(1.0 / (high - low)) if high > low else np.float32(1.0)
    out = np.subtract(pixels, np.float32(low), out=pixels if in_place else None)  # then * scale: (x - low) * scale
    np.multiply(out, scale, out=out)
    if not all_finite:
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def percentiles(values: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """`np.percentile(values, q)` (linear method), the same numbers; an array of more than LARGE_IMAGE_PIXELS float32
    values is not copied whole (np.percentile partitions a copy) but read in chunks (`_chunked_percentiles`)."""
    values = np.asarray(values)
    if values.size <= LARGE_IMAGE_PIXELS or values.dtype != np.float32:
        return np.percentile(values, q)
    return _chunked_percentiles(values, q)


def _chunked_percentiles(values: np.ndarray, q: Sequence[float], chunk: int = _CHUNK) -> np.ndarray:
    """np.percentile's linear method from exact order statistics found by a two-pass radix select on the float32 bit
    patterns (a histogram of the high 16 bits, then of the low 16 within the bins that hold the ranks): memory is a
    chunk's, whatever the array's size. No NaN (the caller passes finite values)."""
    flat = values.reshape(-1)
    n = flat.size
    virtual = (n - 1) * np.true_divide(np.asarray(q, dtype=np.float64), 100)
    previous = np.floor(virtual).astype(np.int64)
    following = np.minimum(previous + 1, n - 1)
    ranks = np.unique(np.concatenate([previous, following]))
    found = dict(zip(ranks.tolist(), _order_statistics(flat, ranks, chunk), strict=True))
    a = np.array([found[int(i)] for i in previous], dtype=np.float32)
    b = np.array([found[int(i)] for i in following], dtype=np.float32)
    gamma = virtual - previous
    # numpy's _lerp, with its dtypes: (b - a) in float32, the rest in float64
    diff = b - a
    out = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), out)


def _sort_keys(chunk: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the float32 values' order (sign bit flipped, negatives' bits inverted)."""
    bits = chunk.view(np.uint32)
    return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))


def _order_statistics(flat: np.ndarray, ranks: np.ndarray, chunk: int) -> list[float]:
    """The values of rank `ranks` (0-based, ascending) of a float32 vector, exactly, in chunks."""
    high = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, flat.size, chunk):
        high += np.bincount(_sort_keys(flat[start : start + chunk]) >> 16, minlength=1 << 16)
    cum_high = np.cumsum(high)
    bins = np.searchsorted(cum_high, ranks, side="right")  # the high-16 bin holding each rank
    wanted = np.unique(bins)
    low = {int(b): np.zeros(1 << 16, dtype=np.int64) for b in wanted}
    for start in range(0, flat.size, chunk):
        keys = _sort_keys(flat[start : start + chunk])
        top = keys >> 16
        for b in wanted:
            low[int(b)] += np.bincount(keys[top == b] & 0xFFFF, minlength=1 << 16)
    result = []
    for rank, b in zip(ranks.tolist(), bins.tolist(), strict=True):
        before = int(cum_high[b - 1]) if b > 0 else 0
        low16 = int(np.searchsorted(np.cumsum(low[b]), rank - before, side="right"))
        key = np.uint32((b << 16) | low16)
        bits = key & np.uint32(0x7FFFFFFF) if key >> 31 == 1 else ~key
        result.append(float(np.array([bits], dtype=np.uint32).view(np.float32)[0]))
    return result


def _rule_from_mapping(spec: Mapping[str, Any]) -> IntensityRule:
    fields = {key: tuple(value) if isinstance(value, list | tuple) else value for key, value in spec.items()}
    return IntensityRule(**fields)


def _rule_to_dict(rule: IntensityRule, resolve: bool = True) -> dict[str, Any]:
    fields = asdict(rule)
    if resolve and rule.window is not None:
        fields["window"] = window_level_width(rule.window)
    return {name: _show(value) for name, value in fields.items() if value is not None}


def _rule_key(rule: IntensityRule | None) -> tuple | None:
    """What decides a rule's mapping: CT window names resolved to (level, width)."""
    if rule is None:
        return None
    window = window_level_width(rule.window) if rule.window is not None else None
    return window, rule.percentiles, rule.value_range


def _show(value: Any) -> Any:
    return value if isinstance(value, str) or value is None else [float(v) for v in value]


def _show_rule(rule: IntensityRule | None) -> str:
    return "<none>" if rule is None else json.dumps(_rule_to_dict(rule, resolve=False))
