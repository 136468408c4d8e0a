"""Gradient-free saliency: cosine of each projected patch token with the prompt embedding (fast, coarser)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from localize.saliency.common import token_grid, tokens_to_image, vit_trunk


@dataclass(frozen=True)
class PatchSimilaritySaliency:
    """Dense patch tokens (final norm) -> the CLIP image projection -> cosine with each prompt -> image map.

    Gradient-free and one forward pass; raw CLIP patch tokens localise worse than M2IB, so results carry
    ``gradient_free: True`` in their provenance.
    """

    def provenance(self, model: nn.Module | None = None) -> dict:
        return {"method": "similarity", "gradient_free": True}

    @torch.no_grad()
    def __call__(self, model: nn.Module, images_b3hw: torch.Tensor, text_pd: torch.Tensor) -> torch.Tensor:
        """Saliency (B,P,H,W) in [0,1] for CLIP-preprocessed images and unit-norm prompt embeddings (P,D)."""
        trunk = vit_trunk(model)
        tokens_btc = trunk.forward_features(images_b3hw)
        patches_btd = model.visual.head(tokens_btc[:, trunk.num_prefix_tokens :])
        cos_bpt = torch.einsum("btd,pd->bpt", F.normalize(patches_btd.float(), dim=-1), text_pd.float())
        n_img, n_txt, _ = cos_bpt.shape
        saliency_nhw = tokens_to_image(
            cos_bpt.flatten(0, 1), token_grid(trunk, images_b3hw.shape[-2:]), images_b3hw.shape[-2:]
        )
        return saliency_nhw.view(n_img, n_txt, *saliency_nhw.shape[-2:])
