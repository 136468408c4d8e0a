"""The part of a CLIP ViT tower after one block, as M2IB's optimisation loop runs it at every step.

The blocks up to the bottleneck do not depend on the mask being learnt, so M2IB runs them once and each step runs
only this suffix. With 'token' pooling the embedding reads only the class token, so the last block computes only
the class token's row: its attention queries with that token alone (keys and values still come from every token)
and its MLP sees one token. Both shortcuts are exact; `VisionSuffix.reproduces` checks a suffix against the
model's own embedding before it is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn


class ClassTokenBlock(nn.Module):
    """A timm ViT `Block` that returns only the class token's output (N,1,C) for tokens (N,T,C)."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    @staticmethod
    def supports(block: nn.Module) -> bool:
        """Plain timm blocks only (subclasses and other attention types may compute something else)."""
        attn = getattr(block, "attn", None)
        return type(block) is Block and type(attn) is Attention and getattr(attn, "gate", None) is None

    def forward(self, x_ntc: torch.Tensor) -> torch.Tensor:
        block, attn = self.block, self.block.attn
        n, t, _ = x_ntc.shape
        qkv_3nhtd = attn.qkv(block.norm1(x_ntc)).reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q_nhtd, k_nhtd, v_nhtd = qkv_3nhtd.unbind(0)
        q_nh1d, k_nhtd = attn.q_norm(q_nhtd[:, :, :1]), attn.k_norm(k_nhtd)
        # 1. Attention with the class token as the only query.
        out_nh1d = F.scaled_dot_product_attention(q_nh1d, k_nhtd, v_nhtd)
        out_n1c = attn.proj(attn.norm(out_nh1d.transpose(1, 2).reshape(n, 1, attn.attn_dim)))
        x_n1c = x_ntc[:, :1] + block.drop_path1(block.ls1(out_n1c))
        # 2. The MLP on that one token.
        return x_n1c + block.drop_path2(block.ls2(block.mlp(block.norm2(x_n1c))))


class VisionSuffix(nn.Module):
    """The vision tower after block `layer`: remaining blocks, final norm, timm head (pooling), open_clip head.

    `bottleneck_site` is an identity module at its entrance where the bottleneck hook attaches. With
    ``class_token_only`` (and 'token' pooling and a plain last block) the last block computes the class token only.
    """

    def __init__(self, model: nn.Module, trunk: nn.Module, layer: int, class_token_only: bool = True) -> None:
        super().__init__()
        self.bottleneck_site = nn.Identity()
        blocks = list(trunk.blocks[layer + 1 :])
        pools_class_token = getattr(trunk, "global_pool", None) == "token" and getattr(trunk, "attn_pool", 1) is None
        if class_token_only and blocks and pools_class_token and ClassTokenBlock.supports(blocks[-1]):
            blocks[-1] = ClassTokenBlock(blocks[-1])
        # A tuple, not submodules: the suffix borrows the model's modules and must not re-register them.
        self._parts = (nn.Sequential(*blocks), trunk.norm, trunk.forward_head, model.visual.head)

    def forward(self, feat_ntc: torch.Tensor) -> torch.Tensor:
        blocks, norm, trunk_head, clip_head = self._parts
        return clip_head(trunk_head(norm(blocks(self.bottleneck_site(feat_ntc)))))

    @torch.no_grad()
    def reproduces(self, feat_ntc: torch.Tensor, embedding_nd: torch.Tensor) -> bool:
        """Whether this suffix on block `layer`'s clean output gives the model's own embedding, to the precision
        it runs at: a wrong suffix is off by the embedding's own size, bf16 rounding by about 1%."""
        out_nd = self(feat_ntc)
        low_precision = any(t.dtype in (torch.bfloat16, torch.float16) for t in (out_nd, embedding_nd))
        error = (out_nd.float() - embedding_nd.float()).abs().max() / embedding_nd.float().abs().max().clamp_min(1e-12)
        return bool(error <= (3e-2 if low_precision else 1e-3))
