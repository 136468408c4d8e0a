"""Arms: the pretraining conditions a study compares, and the kinds of arm a config entry may name.

A config entry `{strategy: KIND, ...}` expands into one or more arms through ARM_KINDS[KIND]. A new kind of arm
is a function `(entry, default_rois) -> [Arm, ...]` (in its own module if it is more than a few lines) added to
ARM_KINDS; the runner and the report need no change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Arm:
    """One condition: `pretrain fit` with `pretrain_flags` on the ROIs of source `rois` (none: downstream from
    scratch). `line` is the plot line it joins; `nominal` and `roi_label` are its cells in the results table."""

    name: str
    strategy: str
    line: str
    pretrains: bool = True
    pretrain_flags: tuple[str, ...] = ()
    rois: str | None = None
    mask_ratio: float | None = None
    r_roi: float | None = None
    r_bg: float | None = None
    nominal: str = "-"
    roi_label: str = "-"
    matches: str | None = None  # random at the realised ratio of this differentiated arm (study.matched)

    def pretrain_args(self) -> list[str]:
        if self.matches is not None and not self.pretrain_flags:
            raise ValueError(f"arm {self.name}: its ratio is set by the calibration against {self.matches}")
        return list(self.pretrain_flags)

    def with_ratio(self, mask_ratio: float) -> Arm:
        """This random arm at `mask_ratio` (a matched arm once its calibration has set the ratio)."""
        flags = ("--model.masking", "random", "--model.mask_ratio", str(float(mask_ratio)))
        return replace(self, mask_ratio=float(mask_ratio), pretrain_flags=flags)


def as_list(value: Any) -> list[Any]:
    """A config value that may be one value or a list of them, as a list."""
    return list(value) if isinstance(value, list | tuple) else [value]


def none_arms(spec: dict[str, Any], default_rois: str | None) -> list[Arm]:
    """No pretraining: the downstream tasks from a randomly initialised backbone."""
    return [Arm(name=spec.get("name", "none"), strategy="none", line="none", pretrains=False)]


def random_arms(spec: dict[str, Any], default_rois: str | None) -> list[Arm]:
    """SparK's random masking, one arm per `mask_ratio` (a value or a list); the ROI cache only lists the items."""
    return [
        Arm(
            name=spec.get("name") or f"random-{r:g}",
            strategy="random",
            line="random",
            pretrain_flags=("--model.masking", "random", "--model.mask_ratio", str(float(r))),
            rois=spec.get("rois", default_rois),
            mask_ratio=float(r),
            nominal=f"{float(r):g}",
        )
        for r in as_list(spec["mask_ratio"])
    ]


def differentiated_arms(spec: dict[str, Any], default_rois: str | None) -> list[Arm]:
    """MWM's differentiated masking, one arm per (r_roi, r_bg) in `pairs` (or the one `r_roi`, `r_bg`)."""
    rois = spec.get("rois", default_rois)
    pairs = spec.get("pairs") or [[spec["r_roi"], spec["r_bg"]]]
    return [
        Arm(
            name=spec.get("name") or f"mwm-{rois}-{a:g}-{b:g}",
            strategy="differentiated",
            line=f"differentiated ({rois})",
            pretrain_flags=(
                "--model.masking",
                "differentiated",
                "--model.r_roi",
                str(float(a)),
                "--model.r_bg",
                str(float(b)),
            ),
            rois=rois,
            r_roi=float(a),
            r_bg=float(b),
            nominal=f"{float(a):g} / {float(b):g}",
            roi_label=str(rois),
        )
        for a, b in pairs
    ]


def matched_random_arms(spec: dict[str, Any], default_rois: str | None) -> list[Arm]:
    """Random masking at the realised ratio of each differentiated arm in `match`, set before training by the
    calibration on that arm's ROIs (study.matched); the ROI cache only lists the items."""
    return [
        Arm(
            name=f"random-matched-{target}",
            strategy="random",
            line="random",
            rois=spec.get("rois", default_rois),
            matches=str(target),
            nominal=f"= {target}",
        )
        for target in as_list(spec["match"])
    ]


ARM_KINDS: MappingProxyType[str, Callable[[dict[str, Any], str | None], list[Arm]]] = MappingProxyType(
    {
        "none": none_arms,
        "random": random_arms,
        "differentiated": differentiated_arms,
        "matched_random": matched_random_arms,
    }
)


def expand_arm(spec: dict[str, Any], default_rois: str | None) -> list[Arm]:
    """One config entry -> its arms, by the entry's `strategy`."""
    kind = ARM_KINDS.get(spec.get("strategy"))
    if kind is None:
        raise ValueError(f"arm strategy must be {' | '.join(ARM_KINDS)}, got {spec.get('strategy')!r}")
    return kind(spec, default_rois)
