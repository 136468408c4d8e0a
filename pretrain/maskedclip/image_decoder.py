"""D_I: the image decoder, pixel reconstruction of the masked patches (MAE's target)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.maskedclip.image_encoder import VisibleTokens
from pretrain.maskedclip.token_decoder import MaskedTokenDecoder

_PATCH_EPS = 1e-6  # MAE's norm_pix_loss: (x - mean) / sqrt(var + 1e-6)


def patchify(img_bCHW: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): patches in grid row-major order, each flattened channel-major."""
    return F.unfold(img_bCHW, kernel_size=patch, stride=patch).transpose(1, 2)


def unpatchify(patches_bnd: torch.Tensor, patch: int, image_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `patchify`."""
    return F.fold(patches_bnd.transpose(1, 2), output_size=image_hw, kernel_size=patch, stride=patch)


class PatchTarget(NamedTuple):
    """Each patch normalised over its C*p*p values, with the statistics to undo it (B, N, 1)."""

    normalised_bnd: torch.Tensor
    mean_bn1: torch.Tensor
    std_bn1: torch.Tensor


def patch_target(img_bCHW: torch.Tensor, patch: int) -> PatchTarget:
    """MAE's normalised pixel target: per patch, over all its channels and pixels jointly (unbiased variance)."""
    patches_bnd = patchify(img_bCHW.float(), patch)
    mean = patches_bnd.mean(dim=-1, keepdim=True)
    std = (patches_bnd.var(dim=-1, keepdim=True) + _PATCH_EPS).sqrt()
    return PatchTarget((patches_bnd - mean) / std, mean, std)


class ImageDecoder(nn.Module):
    """Predicts every patch's C*p*p normalised pixels from the visible tokens (MAE decoder)."""

    def __init__(
        self, in_dim: int, patch: int, width: int = 512, depth: int = 8, num_heads: int = 16, channels: int = 3
    ) -> None:
        super().__init__()
        self.patch = patch
        self.decoder = MaskedTokenDecoder(in_dim, width, depth, num_heads, out_dim=channels * patch * patch)

    def forward(self, visible: VisibleTokens, grid_hw: tuple[int, int]) -> torch.Tensor:
        """-> predicted normalised pixels (B, N, C*p*p)."""
        return self.decoder(visible, grid_hw)

    def reconstruction(
        self, pred_bnd: torch.Tensor, img_bCHW: torch.Tensor, target: PatchTarget, visible_bn: torch.Tensor
    ) -> torch.Tensor:
        """The prediction in pixel values (each patch's own mean/std restored), visible patches pasted from the
        input (`visible_bn`: True = visible): for panels."""
        pred_bnd = pred_bnd.detach().float() * target.std_bn1 + target.mean_bn1
        patches_bnd = torch.where(visible_bn[..., None], patchify(img_bCHW.float(), self.patch), pred_bnd)
        return unpatchify(patches_bnd, self.patch, tuple(img_bCHW.shape[-2:]))
