"""The MAE-style decoder trunk shared by the image and feature decoders."""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from pretrain.maskedclip.image_encoder import VisibleTokens


class MaskedTokenDecoder(nn.Module):
    """Visible encoder tokens -> a prediction of `out_dim` values at every patch of the grid.

    As MAE's decoder: a linear map to `width`, a learned mask token at every masked position, fixed 2-D sin-cos
    position embeddings (prefix tokens get none), `depth` transformer blocks, a norm and a linear head.

    Args:
        in_dim: encoder token width.
        width, depth, num_heads: decoder transformer size (MAE ViT-B: 512, 8, 16).
        out_dim: values predicted per patch.
    """

    def __init__(self, in_dim: int, width: int, depth: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*(Block(width, num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)
        self.width = width
        # the fixed positions of the last grid seen: (grid_hw, device, dtype) -> (N, width); not state (no buffer)
        self._positions: tuple[tuple, torch.Tensor] | None = None

    def forward(self, visible: VisibleTokens, grid_hw: tuple[int, int]) -> torch.Tensor:
        """-> (B, N, out_dim) for the N = h*w grid positions, row-major."""
        tokens_btw = self.embed(visible.features_btc)
        batch, n_tokens, width = tokens_btw.shape
        n_slots = visible.ids_bl.shape[1]
        n_prefix = n_tokens - n_slots
        n_patches = grid_hw[0] * grid_hw[1]
        # 1. every grid position starts as the mask token; visible slots are scattered to their positions
        #    (padding slots go to an extra position n_patches, dropped right after)
        target_bl = torch.where(visible.valid_bl, visible.ids_bl, n_patches)
        grid_bnw = self.mask_token.to(tokens_btw.dtype).expand(batch, n_patches + 1, width)
        grid_bnw = grid_bnw.scatter(1, target_bl[..., None].expand(-1, -1, width), tokens_btw[:, n_prefix:])
        grid_bnw = grid_bnw[:, :n_patches]
        # 2. fixed 2-D sin-cos positions, prefix tokens in front
        pos_nw = self.positions(grid_hw, grid_bnw.device, grid_bnw.dtype)
        x_btw = torch.cat([tokens_btw[:, :n_prefix], grid_bnw + pos_nw], dim=1)
        # 3. transformer, norm, per-patch head; prefix tokens dropped
        return self.head(self.norm(self.blocks(x_btw)))[:, n_prefix:]

    def positions(self, grid_hw: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The fixed 2-D sin-cos position embeddings of the grid (N, width), built once per grid, not every step."""
        key = (tuple(grid_hw), device, dtype)
        if self._positions is None or self._positions[0] != key:
            # a plain tensor even when first built under Lightning's inference mode (validation), for training next
            with torch.inference_mode(False):
                pos_nw = build_sincos2d_pos_embed(list(grid_hw), self.width, device=device).to(dtype)
            self._positions = (key, pos_nw)
        return self._positions[1]
