"""Text prompts per modality and how the saliency of several prompts is combined.

YAML schema (configs/prompts.yaml)::

    combine: union              # optional default for all modalities: union | best
    modalities:
      MR: [brain tumor, glioma]                     # a list of prompts ...
      XR: {prompts: [left and right lungs], combine: best}   # ... or a mapping
      default: [lesion]         # used for modalities not listed (optional; without it they are an error)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from configs import shipped_dir

DEFAULT_PROMPTS_PATH = shipped_dir() / "prompts.yaml"
COMBINE_MODES = ("union", "best")
DEFAULT_KEY = "default"


class PromptConfigError(ValueError):
    """Invalid prompt configuration; the message names the source and the entry."""


@dataclass(frozen=True)
class ModalityPrompts:
    """The prompts for one modality and how their saliency maps are combined."""

    prompts: tuple[str, ...]
    combine: str = "union"


@dataclass(frozen=True)
class PromptConfig:
    """Prompts for every modality (key ``default`` for the rest)."""

    by_modality: Mapping[str, ModalityPrompts]

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any]) -> PromptConfig:
        """From a YAML path or an already-parsed mapping (e.g. inline in localize.yaml)."""
        name = "<inline prompts>"
        if not isinstance(source, Mapping):
            name = str(source)
            try:
                source = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as e:
                raise PromptConfigError(f"Cannot read prompts file {name}: {e}") from e
        return cls.from_mapping(source, name)

    @classmethod
    def from_mapping(cls, raw: Any, name: str = "<prompts>") -> PromptConfig:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("modalities"), Mapping) or not raw["modalities"]:
            raise PromptConfigError(f"{name}: expected a mapping with a non-empty 'modalities' mapping.")
        default_combine = _check_combine(raw.get("combine", "union"), f"{name}: combine")
        by_modality = {}
        for modality, entry in raw["modalities"].items():
            where = f"{name}: modalities.{modality}"
            if isinstance(entry, Mapping):
                prompts, combine = entry.get("prompts"), _check_combine(entry.get("combine", default_combine), where)
            else:
                prompts, combine = entry, default_combine
            if isinstance(prompts, str) or not isinstance(prompts, list) or not prompts:
                raise PromptConfigError(f"{where}: needs a non-empty list of prompts, got {prompts!r}.")
            if not all(isinstance(p, str) and p.strip() for p in prompts):
                raise PromptConfigError(f"{where}: every prompt must be a non-empty string, got {prompts!r}.")
            if len(set(prompts)) != len(prompts):
                raise PromptConfigError(f"{where}: duplicate prompts in {prompts!r}.")
            by_modality[str(modality)] = ModalityPrompts(tuple(p.strip() for p in prompts), combine)
        return cls(by_modality)

    def for_modality(self, modality: str) -> ModalityPrompts:
        """The prompts for ``modality``, else the ``default`` entry."""
        found = self.by_modality.get(modality) or self.by_modality.get(DEFAULT_KEY)
        if found is None:
            raise PromptConfigError(
                f"No prompts for modality '{modality}' and no '{DEFAULT_KEY}' entry (have {sorted(self.by_modality)})."
            )
        return found

    def all_prompts(self) -> list[str]:
        """Every distinct prompt, in first-seen order."""
        return list(dict.fromkeys(p for entry in self.by_modality.values() for p in entry.prompts))

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping in the YAML schema (for provenance and inline configs)."""
        return {
            "modalities": {m: {"prompts": list(e.prompts), "combine": e.combine} for m, e in self.by_modality.items()}
        }


def _check_combine(mode: Any, where: str) -> str:
    if mode not in COMBINE_MODES:
        raise PromptConfigError(f"{where}: combine must be one of {COMBINE_MODES}, got {mode!r}.")
    return mode


def combine_saliency(saliency_bphw: torch.Tensor, mode: str, scores_bp: torch.Tensor | None = None) -> torch.Tensor:
    """Combine P prompt maps per image -> (B,H,W).

    union: pixelwise max (each map is already min-max scaled to [0,1]); best: the map of the prompt with the
    highest ``scores_bp`` (e.g. image-text cosine similarity) per image.
    """
    if mode == "union":
        return saliency_bphw.amax(dim=1)
    if mode == "best":
        if scores_bp is None or scores_bp.shape != saliency_bphw.shape[:2]:
            raise ValueError(f"combine='best' needs scores of shape {tuple(saliency_bphw.shape[:2])}.")
        best_b = scores_bp.argmax(dim=1)
        return saliency_bphw[torch.arange(len(best_b), device=best_b.device), best_b]
    raise ValueError(f"combine must be one of {COMBINE_MODES}, got {mode!r}.")
