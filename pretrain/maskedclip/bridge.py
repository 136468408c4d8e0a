"""B: the bridge transformer from the masked feature space to the CLIP space, and the image projection P_I."""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import global_pool_nlc
from torch import nn
from torch.utils.checkpoint import checkpoint


class Bridge(nn.Module):
    """The last `depth` blocks of timm ViT `vit`, its final norm and pooling, then P_I: a bias-free linear map
    to the joint space (open_clip's `timm_proj: linear`).

    It continues the image encoder's residual stream, so P_I(pool(B(E(x)))) is what open_clip's TimmModel
    computes for the whole ViT `vit` with `timm_pool: ''` (the ViT's own pooling) and a linear projection.

    Args:
        vit: the image encoder's timm ViT name.
        depth: bridge blocks (the ViT's last ones); the encoder keeps the others.
        embed_dim: joint image-text space width.
    """

    def __init__(self, vit: str, depth: int, embed_dim: int) -> None:
        super().__init__()
        full = timm.create_model(vit, pretrained=False, num_classes=0)
        if not 1 <= depth < len(full.blocks):
            raise ValueError(f"bridge depth must be in [1, {len(full.blocks) - 1}] for {vit!r}, got {depth}")
        self.first_block = len(full.blocks) - depth  # index of the bridge's first block in the whole ViT
        self.blocks = nn.Sequential(*full.blocks[self.first_block :])
        self.norm = full.norm
        self.fc_norm = full.fc_norm
        self.global_pool: str = full.global_pool
        self.num_prefix_tokens: int = full.num_prefix_tokens
        self.pool_include_prefix: bool = getattr(full, "pool_include_prefix", False)
        self.proj = nn.Linear(full.embed_dim, embed_dim, bias=False)
        self.grad_checkpointing = False  # `MaskedCLIP.set_grad_checkpointing`

    def forward(self, stream_btc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder residual stream (B, P+N, C) -> (CLIP-space tokens (B, P+N, C), image embedding (B, embed_dim))."""
        tokens_btc = self.tokens(stream_btc)
        return tokens_btc, self.embedding(tokens_btc)

    def tokens(self, stream_btc: torch.Tensor) -> torch.Tensor:
        """Encoder residual stream (B, P+N, C) -> CLIP-space tokens (B, P+N, C): the blocks and the final norm."""
        x_btc = stream_btc
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x_btc = checkpoint(block, x_btc, use_reentrant=False)
            else:
                x_btc = block(x_btc)
        return self.norm(x_btc)

    def embedding(self, tokens_btc: torch.Tensor) -> torch.Tensor:
        """CLIP-space tokens -> image embedding (B, embed_dim): the ViT's pooling, then P_I."""
        pooled_bc = global_pool_nlc(
            tokens_btc,
            pool_type=self.global_pool,
            num_prefix_tokens=self.num_prefix_tokens,
            reduce_include_prefix=self.pool_include_prefix,
        )
        return self.proj(self.fc_norm(pooled_bc))
