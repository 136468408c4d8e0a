"""The `localize.yaml` of the small models: `python -m localize run --config DIR/localize.yaml` takes it as is."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from localize.prompts import DEFAULT_PROMPTS_PATH, PromptConfig
from localize.refine import RefineConfig

MODELS_LABEL = "small models trained on synthetic data (smallmodels): meaningful on the sample corpus only"
# M2IB as released (preset release: 10 steps, beta 0.1, 10 noise copies) at block 5 of test_vit2's 8: the
# release's block 7 of 12 sits at the same relative depth.
SMALL_SALIENCY: dict[str, Any] = {"method": "m2ib", "preset": "release", "layer": 5}


def write_localize_config(
    path: Path, clip_dir: Path, sam_checkpoint: Path, seed: int = 0, saliency: dict[str, Any] | None = None
) -> Path:
    """Write the config that runs the small CLIP (`local-dir:`) and SAM (`custom`) with the release's refinement."""
    folder = Path(path).resolve().parent
    config = {
        # relative to this file's folder (config files anchor their paths there): the folder can move
        "clip": f"local-dir:{os.path.relpath(Path(clip_dir).resolve(), folder)}",
        "sam": {"arch": "custom", "checkpoint": os.path.relpath(Path(sam_checkpoint).resolve(), folder)},
        "saliency": dict(saliency or SMALL_SALIENCY),
        "refine": asdict(RefineConfig()),
        "precision": "fp32",
        "prompts": PromptConfig.load(DEFAULT_PROMPTS_PATH).to_dict(),
        "untrained": False,
        "models_label": MODELS_LABEL,
        "seed": seed,
    }
    header = (
        f"# {MODELS_LABEL}.\n"
        "# Not BiomedCLIP, not SAM's released weights: a tiny CLIP and a tiny SAM that know the synthetic lesions\n"
        "# and lungs of `python -m data sample`, nothing else. Written by `python -m smallmodels train`.\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
