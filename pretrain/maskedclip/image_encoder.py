"""E: the image encoder, a timm ViT that encodes only the visible patches (MAE-style)."""

from __future__ import annotations

from typing import NamedTuple

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint


class VisibleTokens(NamedTuple):
    """Encoder tokens of the visible patches: prefix tokens (class token) first, then up to L visible patches
    per image in grid order, right-padded where images keep fewer patches than the batch's most.

    `stream_btc` is the residual stream after the last block (what the bridge continues), `features_btc` the
    same after the encoder's final norm (what the decoders read); `ids_bl` the grid index of each visible slot
    and `valid_bl` whether the slot holds a patch or padding.
    """

    stream_btc: torch.Tensor
    features_btc: torch.Tensor
    ids_bl: torch.Tensor
    valid_bl: torch.Tensor


def vit_depth(name: str) -> int:
    """Number of blocks of timm ViT `name` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return len(timm.create_model(name, pretrained=False, num_classes=0).blocks)


class ImageEncoder(nn.Module):
    """The first `depth` blocks of timm ViT `vit` with their own final norm (the ViT's, or for average-pool ViTs,
    which have none, a LayerNorm: `feature_norm`).

    `self.vit` is exactly `timm.create_model(vit, depth=depth, num_classes=0)`: its state dict is the timm export.
    The bridge continues the residual stream *before* this norm with the ViT's remaining blocks, so E followed
    by B is the plain timm ViT `vit` (the open_clip export's vision trunk).

    Args:
        vit: timm VisionTransformer name (class-token or average pooling, learned position embeddings).
        depth: blocks kept for the encoder (the ViT's other blocks form the bridge).
        input_size: square training input; must be the ViT's own size unless it resamples position embeddings
            itself (`dynamic_img_size`, e.g. timm's `test_vit`), because open_clip builds the exported trunk
            from the name alone.
    """

    def __init__(self, vit: str, depth: int, input_size: int) -> None:
        super().__init__()
        self.vit = timm.create_model(vit, pretrained=False, num_classes=0, depth=depth)
        model = self.vit
        if not isinstance(model, VisionTransformer) or model.pos_embed is None or model.attn_pool is not None:
            raise ValueError(f"{vit!r}: MaskedCLIP needs a timm VisionTransformer with learned position embeddings")
        if model.global_pool not in ("token", "avg"):
            raise ValueError(f"{vit!r}: pooling {model.global_pool!r} is not supported; use 'token' or 'avg'")
        self.patch: int = model.patch_embed.patch_size[0]
        native = model.patch_embed.img_size
        if input_size % self.patch or (not model.dynamic_img_size and (input_size, input_size) != tuple(native)):
            raise ValueError(
                f"{vit!r}: input_size {input_size} must be a multiple of the patch ({self.patch}) and, as this ViT "
                f"does not resample its position embeddings, equal to its own size {tuple(native)}"
            )
        self.width: int = model.embed_dim
        self.num_prefix_tokens: int = model.num_prefix_tokens
        # timm's average-pool ViTs norm after pooling (fc_norm) and leave `vit.norm` an Identity; the decoders read
        # per-token features, normed as MAE's encoder output is: such ViTs get a LayerNorm of their own here
        # (outside `vit`, so the timm export is unchanged)
        self.grad_checkpointing = False  # `MaskedCLIP.set_grad_checkpointing`
        self.feature_norm = nn.LayerNorm(self.width, eps=1e-6) if isinstance(model.norm, nn.Identity) else None

    def grid_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return input_hw[0] // self.patch, input_hw[1] // self.patch

    def embed(self, img_b3HW: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position embedding, prefix tokens first -> (B, P+N, C), as the ViT's own forward."""
        model = self.vit
        # _pos_embed is the ViT's own step (class token, resampling for dynamic sizes): reused, not rewritten
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(img_b3HW))))

    def forward(self, img_b3HW: torch.Tensor, visible_bn: torch.Tensor | None = None) -> VisibleTokens:
        """Encode the patches where `visible_bn` (bool (B, N), grid row-major) is True; None = every patch."""
        return self.encode(self.embed(img_b3HW), visible_bn)

    def encode(self, tokens_btc: torch.Tensor, visible_bn: torch.Tensor | None = None) -> VisibleTokens:
        """`forward` from embedded tokens (`embed`), so that passes over the same images embed them once."""
        batch, n_tokens, width = tokens_btc.shape
        n_patches = n_tokens - self.num_prefix_tokens
        attn_mask = None
        if visible_bn is None:
            # the full image: every patch in grid order, nothing to gather or mask
            x_btc = tokens_btc
            ids_bl = torch.arange(n_patches, device=tokens_btc.device).expand(batch, -1)
            valid_bl = torch.ones(batch, n_patches, dtype=torch.bool, device=tokens_btc.device)
        else:
            # 1. gather the visible patches, grid order kept, right-padded to the batch's largest count
            prefix_bpc, patches_bnc = tokens_btc.split([self.num_prefix_tokens, n_patches], dim=1)
            counts_b = visible_bn.sum(1)
            n_slots = int(counts_b.max())
            ids_bl = torch.argsort((~visible_bn).to(torch.int8), dim=1, stable=True)[:, :n_slots]
            valid_bl = torch.arange(n_slots, device=ids_bl.device) < counts_b[:, None]
            visible_blc = patches_bnc.gather(1, ids_bl[..., None].expand(-1, -1, width))
            x_btc = torch.cat([prefix_bpc, visible_blc], dim=1)
            # padded slots are masked out as keys (no mask at all when none is padded)
            if not bool(valid_bl.all()):
                keys_valid_bt = torch.cat([valid_bl.new_ones(batch, self.num_prefix_tokens), valid_bl], dim=1)
                attn_mask = keys_valid_bt[:, None, None, :]
        # 2. transformer blocks
        x_btc = self._blocks(x_btc, attn_mask)
        norm = self.feature_norm if self.feature_norm is not None else self.vit.norm
        return VisibleTokens(x_btc, norm(x_btc), ids_bl, valid_bl)

    def stream(self, tokens_btc: torch.Tensor) -> torch.Tensor:
        """The residual stream after E's blocks over whole images' embedded tokens (B, P+N, C): what the bridge
        continues. `encode(tokens).stream_btc` without the final norm, grid indices and slot flags, which the
        full-image passes (L_CLIP, the teacher) never read."""
        return self._blocks(tokens_btc, None)

    def _blocks(self, x_btc: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        for block in self.vit.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x_btc = checkpoint(block, x_btc, attn_mask=attn_mask, use_reentrant=False)
            else:
                x_btc = block(x_btc, attn_mask=attn_mask)
        return x_btc
