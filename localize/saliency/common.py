"""Pieces shared by the saliency methods: prompt encoding, image-text scores, token maps -> image maps.

Nothing here switches precision: callers run these under `localize.precision.autocast` (fp32 unless asked)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def vit_trunk(model: torch.nn.Module) -> torch.nn.Module:
    """The timm ViT inside an open_clip model (``model.visual.trunk``) - the only vision tower supported here."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks") or not hasattr(trunk, "patch_embed"):
        raise TypeError(
            "Saliency needs an open_clip model whose vision tower is a timm ViT (model.visual.trunk "
            "with .blocks and .patch_embed), as BiomedCLIP's is."
        )
    return trunk


@torch.no_grad()
def encode_prompts(model: torch.nn.Module, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text embeddings (P,D) float32, computed once per batch of prompts."""
    device = model_device(model)
    text_pd = model.encode_text(tokenizer(list(prompts)).to(device))
    return F.normalize(text_pd.float(), dim=-1)


@torch.no_grad()
def image_text_scores(model: torch.nn.Module, images_b3hw: torch.Tensor, text_pd: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (B,P) of each image's CLIP embedding with each unit-norm prompt embedding."""
    image_bd = model.encode_image(images_b3hw)
    return F.normalize(image_bd.float(), dim=-1) @ text_pd.float().T


def token_grid(trunk: torch.nn.Module, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch grid (h, w) of the input the trunk ran on: a ViT built for one size that resamples its position
    embeddings (timm's ``dynamic_img_size``) makes as many tokens as *this* input has patches."""
    return tuple(trunk.patch_embed.dynamic_feat_size(tuple(image_hw)))


def minmax_scale(maps_nhw: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0,1]; a constant map becomes all zeros (nothing stands out)."""
    flat = maps_nhw.flatten(1)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.view_as(maps_nhw)


def tokens_to_image(patch_scores_nt: torch.Tensor, grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> torch.Tensor:
    """Per-patch scores (N, h*w) -> (N,H,W) bilinear-upsampled to the image and min-max scaled to [0,1]."""
    grid_n1hw = patch_scores_nt.float().reshape(-1, 1, *grid_hw)
    image_n1hw = F.interpolate(grid_n1hw, size=image_hw, mode="bilinear", align_corners=False)
    return minmax_scale(image_n1hw[:, 0])
