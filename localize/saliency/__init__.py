"""Saliency of prompts on images, batched over images x prompts: (B,3,H,W) x (P,D) -> (B,P,H,W) in [0,1].

``build_saliency({'method': 'm2ib'})`` (the release's M2IB; ``'preset': 'fast'`` for the faster one; any of its
parameters on top) or ``{'method': 'similarity'}`` returns a callable ``method(model, images_b3hw, text_pd)``;
``method.provenance()`` describes it for the ROI cache. Defaults live in the methods' dataclasses only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localize.saliency.common import encode_prompts, image_text_scores, minmax_scale
from localize.saliency.m2ib import M2IB_PRESETS, M2IBRun, M2IBSaliency
from localize.saliency.similarity import PatchSimilaritySaliency

SaliencyMethod = M2IBSaliency | PatchSimilaritySaliency
METHODS = {"m2ib": M2IBSaliency, "similarity": PatchSimilaritySaliency}

__all__ = [
    "METHODS",
    "M2IB_PRESETS",
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
        if method == "m2ib":
            return M2IBSaliency.from_preset(**params)
        return METHODS[method](**params)
    except TypeError as e:
        raise ValueError(f"Bad parameters for saliency method {method!r}: {e}") from e
