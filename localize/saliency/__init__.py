"""Saliency of prompts on images, batched over images x prompts: (B,3,H,W) x (P,D) -> (B,P,H,W) in [0,1].

``build_saliency({'method': 'm2ib', 'layer': 7, ...})`` or ``{'method': 'similarity'}`` returns a callable
``method(model, images_b3hw, text_pd)``; ``method.provenance()`` describes it for the ROI cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localize.saliency.common import encode_prompts, image_text_scores, minmax_scale
from localize.saliency.m2ib import M2IBRun, M2IBSaliency
from localize.saliency.similarity import PatchSimilaritySaliency

SaliencyMethod = M2IBSaliency | PatchSimilaritySaliency
METHODS = {"m2ib": M2IBSaliency, "similarity": PatchSimilaritySaliency}

__all__ = [
    "METHODS",
    "M2IBRun",
    "M2IBSaliency",
    "PatchSimilaritySaliency",
    "SaliencyMethod",
    "build_saliency",
    "encode_prompts",
    "image_text_scores",
    "minmax_scale",
]


def build_saliency(config: Mapping[str, Any]) -> SaliencyMethod:
    """A saliency method from its config mapping (``method`` + that method's parameters)."""
    params = dict(config)
    method = params.pop("method", "m2ib")
    if method not in METHODS:
        raise ValueError(f"Unknown saliency method {method!r}: use one of {sorted(METHODS)}.")
    try:
        return METHODS[method](**params)
    except TypeError as e:
        raise ValueError(f"Bad parameters for saliency method {method!r}: {e}") from e
