"""The localization run's configuration: models, saliency method, refinement, precision, prompts, cache geometry.

Loaded from YAML (`python -m localize run --config FILE`, the schema `localize stand-ins` writes);
every field can be overridden on the command line with `--set dotted.key=value` or a dedicated flag.
Defaults are written once, in the classes that use them: saliency methods (`localize.saliency`), `RefineConfig`,
`CacheGeometry`; with nothing set, a run reproduces the release (fp32, M2IB as released, SAM refinement).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from configs import resolve_config
from data.intensity import IntensityConfig
from data.portable import portable_path
from data.roi_cache import CacheGeometry
from localize.clip_loader import BIOMEDCLIP_HUB_SPEC
from localize.precision import PRECISIONS
from localize.prompts import DEFAULT_PROMPTS_PATH
from localize.refine import RefineConfig
from localize.saliency import build_saliency
from localize.volume import VolumeConfig

WORK_MAX_SIDE = 4096  # the default of `work_max_side`; recorded in a cache's provenance only when changed


class ConfigError(ValueError):
    """An invalid localization configuration; the message names the file and the field."""


@dataclass
class LocalizeConfig:
    clip: str = BIOMEDCLIP_HUB_SPEC
    sam: str | dict[str, Any] | None = None
    # `method` (m2ib | similarity), optionally `preset` (m2ib: release | fast), then any parameter of the method.
    saliency: dict[str, Any] = field(default_factory=lambda: {"method": "m2ib"})
    refine: RefineConfig = field(default_factory=RefineConfig)
    precision: str = "fp32"  # fp32 (the release) | bf16 (autocast, GPU only)
    prompts: str | dict[str, Any] = str(DEFAULT_PROMPTS_PATH)
    # data.intensity.IntensityConfig fields, e.g. {ct_window: lung}; {} = its defaults
    intensity: dict[str, Any] = field(default_factory=dict)
    untrained: bool = False
    # what the models are, when neither real weights nor untrained stand-ins (e.g. the small models trained on
    # synthetic data); recorded in the cache's provenance and printed by `localize run`
    models_label: str | None = None
    batch_size: int = 8
    # a batch also closes before its images (at working size) exceed this many megapixels (2**20 pixels); 0: count only
    batch_megapixels: float = 32.0
    # images whose longest side is larger are localized at this longest side (issue 28: bounded memory); 0: native
    work_max_side: int = WORK_MAX_SIDE
    # cap on the decoded frames a worker holds while it reads a shard (data.frame_source); 0: item by item
    volume_cache_mb: int = 1024
    seed: int = 0
    geometry: CacheGeometry = field(default_factory=CacheGeometry)  # of a new cache
    # per-slice (the release) or volume-aware (presence + consistency over each series, `localize.volume`)
    volume: VolumeConfig = field(default_factory=VolumeConfig)

    def __post_init__(self) -> None:
        # YAML and `to_dict()` give the nested sections as mappings.
        if isinstance(self.refine, Mapping):
            self.refine = RefineConfig(**self.refine)
        if isinstance(self.geometry, Mapping):
            self.geometry = CacheGeometry(**self.geometry)
        if isinstance(self.volume, Mapping):
            self.volume = VolumeConfig(**self.volume)

    @classmethod
    def load(cls, path: str | Path | None, overrides: Sequence[str] = ()) -> LocalizeConfig:
        """Read `path` (None: defaults), then apply `key=value` overrides (values parsed as YAML)."""
        raw: dict[str, Any] = {}
        source = "<defaults>"
        if path is not None:
            try:
                path = resolve_config(path)  # as given, else a shipped config (`release.yaml`)
            except ValueError as e:
                raise ConfigError(str(e)) from e
            source = str(path)
            try:
                raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read localize config {source}: {e}") from e
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{source}: expected a mapping at the top level")
            raw = anchor_paths(raw, Path(path).resolve().parent)
        raw = copy.deepcopy(dict(raw))
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. saliency.beta=0.2")
            _set_dotted(raw, key.strip(), yaml.safe_load(value))
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{source}: unknown fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        try:
            config = cls(**raw)
        except (TypeError, ValueError) as e:  # an unknown or invalid refine / geometry / volume field
            raise ConfigError(f"{source}: {e}") from e
        config._validate(source)
        return config

    def _validate(self, source: str) -> None:
        if not isinstance(self.saliency, Mapping):
            raise ConfigError(f"{source}: saliency must be a mapping with a `method`, got {self.saliency!r}")
        try:
            build_saliency(self.saliency)
        except ValueError as e:
            raise ConfigError(f"{source}: saliency: {e}") from e
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{source}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sam is None and self.refine.use_sam:
            raise ConfigError(
                f"{source}: no SAM checkpoint. Set `sam: vit_h:/path/sam_vit_h_4b8939.pth` (or --sam), "
                "or `refine.use_sam: false` to use the binarised saliency alone."
            )
        try:
            IntensityConfig(**self.intensity)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: intensity: {e}") from e
        if int(self.batch_size) < 1:
            raise ConfigError(f"{source}: batch_size must be >= 1")
        if float(self.batch_megapixels) < 0:
            raise ConfigError(f"{source}: batch_megapixels must be >= 0 (0: batches by count only)")
        if int(self.work_max_side) < 0:
            raise ConfigError(f"{source}: work_max_side must be >= 0 (0: every image at its own size)")
        if int(self.volume_cache_mb) < 0:
            raise ConfigError(f"{source}: volume_cache_mb must be >= 0 (0 reads item by item)")
        if self.refine.top_k > self.geometry.max_boxes:
            raise ConfigError(
                f"{source}: refine.top_k ({self.refine.top_k}) exceeds geometry.max_boxes ({self.geometry.max_boxes})"
            )

    @property
    def batch_pixels(self) -> int:
        """The batch's pixel budget (`localize.job.batch_slots`); 0: none."""
        return int(float(self.batch_megapixels) * (1 << 20))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def anchor_paths(raw: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """`raw` with the relative file paths a config file names (prompts file, `local-dir:` / `hf-biomedclip:` CLIP
    folder, SAM checkpoint) made relative to `folder`, the config file's own folder, not the working directory.
    Command-line values (flags, `--set`) are not anchored: they stay relative to the working directory."""

    def anchored(value: str) -> str:
        p = Path(value).expanduser()
        return value if p.is_absolute() else str(folder / p)

    return _map_file_paths(raw, anchored)


def relative_paths(raw: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The inverse of `anchor_paths` for a config written into `folder`: its absolute file paths made relative to
    that folder, so that the written file names no machine's folders and can move with what it names."""
    return _map_file_paths(raw, lambda value: portable_path(value, folder))


def _map_file_paths(raw: Mapping[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    out = dict(raw)
    if isinstance(out.get("prompts"), str):
        out["prompts"] = change(out["prompts"])
    clip = out.get("clip")
    for prefix in ("local-dir:", "hf-biomedclip:"):
        if isinstance(clip, str) and clip.startswith(prefix):
            out["clip"] = prefix + change(clip.removeprefix(prefix))
    sam = out.get("sam")
    if isinstance(sam, Mapping) and isinstance(sam.get("checkpoint"), str):
        out["sam"] = {**sam, "checkpoint": change(sam["checkpoint"])}
    elif isinstance(sam, str) and ":" in sam:
        arch, _, checkpoint = sam.partition(":")
        out["sam"] = f"{arch}:{change(checkpoint)}"
    return out


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
