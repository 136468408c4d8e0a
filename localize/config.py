"""The localization run's configuration: models, saliency method, refinement, prompts, batching.

Loaded from YAML (`python -m localize run --config FILE`, the schema `localize stand-ins` writes);
every field can be overridden on the command line with `--set dotted.key=value` or a dedicated flag.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.intensity import IntensityConfig
from localize.clip_loader import BIOMEDCLIP_HUB_SPEC
from localize.prompts import DEFAULT_PROMPTS_PATH

SALIENCY_DEFAULTS: dict[str, dict[str, Any]] = {
    # The paper's M2IB defaults (layer 7 of 12, beta 0.1, noise variance 1.0, 10 steps).
    "m2ib": {"method": "m2ib", "layer": 7, "beta": 0.1, "noise_var": 1.0, "steps": 10, "lr": 1.0},
    # Gradient-free dense patch/text similarity: fast, coarser.
    "similarity": {"method": "similarity"},
}


class ConfigError(ValueError):
    """An invalid localization configuration; the message names the file and the field."""


@dataclass
class LocalizeConfig:
    clip: str = BIOMEDCLIP_HUB_SPEC
    sam: str | dict[str, Any] | None = None
    saliency: dict[str, Any] = field(default_factory=lambda: dict(SALIENCY_DEFAULTS["m2ib"]))
    refine: dict[str, Any] = field(
        default_factory=lambda: {"threshold": 0.3, "top_k": 2, "box_expansion": None, "use_sam": True}
    )
    prompts: str | dict[str, Any] = str(DEFAULT_PROMPTS_PATH)
    # data.intensity.IntensityConfig fields, e.g. {ct_window: lung}; {} = its defaults
    intensity: dict[str, Any] = field(default_factory=dict)
    untrained: bool = False
    batch_size: int = 8
    seed: int = 0
    mask_size: int = 256
    max_boxes: int = 4
    shard_items: int = 256

    @classmethod
    def load(cls, path: str | Path | None, overrides: Sequence[str] = ()) -> LocalizeConfig:
        """Read `path` (None: defaults), then apply `key=value` overrides (values parsed as YAML)."""
        raw: dict[str, Any] = {}
        source = "<defaults>"
        if path is not None:
            source = str(path)
            try:
                raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read localize config {source}: {e}") from e
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{source}: expected a mapping at the top level")
        raw = copy.deepcopy(dict(raw))
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. saliency.beta=0.2")
            _set_dotted(raw, key.strip(), yaml.safe_load(value))
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{source}: unknown fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        config = cls(**raw)
        config._validate(source)
        return config

    def _validate(self, source: str) -> None:
        method = self.saliency.get("method")
        if method not in SALIENCY_DEFAULTS:
            raise ConfigError(f"{source}: saliency.method must be one of {sorted(SALIENCY_DEFAULTS)}, got {method!r}")
        self.saliency = {**SALIENCY_DEFAULTS[method], **self.saliency}
        if self.sam is None and self.refine.get("use_sam", True):
            raise ConfigError(
                f"{source}: no SAM checkpoint. Set `sam: vit_b:/path/sam_vit_b_01ec64.pth` (or --sam), "
                "or `refine.use_sam: false` to use the binarised saliency alone."
            )
        try:
            IntensityConfig(**self.intensity)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: intensity: {e}") from e
        for name in ("batch_size", "mask_size", "max_boxes", "shard_items"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{source}: {name} must be >= 1")
        if int(self.refine.get("top_k", 2)) > self.max_boxes:
            raise ConfigError(f"{source}: refine.top_k ({self.refine['top_k']}) exceeds max_boxes ({self.max_boxes})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else {"method": child} if part == "saliency" else None
            if child is None:
                raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
            node[part] = child
        node = child
    node[parts[-1]] = value
