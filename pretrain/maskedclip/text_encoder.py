"""T + P_T: the text encoder, open_clip's Hugging Face text tower (a transformers BERT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from open_clip.hf_model import HFTextEncoder
from torch import nn

POOLER = "cls_last_hidden_state_pooler"  # BiomedCLIP's: the [CLS] token of the last layer
PROJ = "mlp"  # BiomedCLIP's: Linear -> GELU -> Linear, no biases
UNUSED_TEXT_KEYS = "tower.transformer.pooler."  # key prefix of the unused BERT pooler


class TextEncoder(nn.Module):
    """open_clip's `HFTextEncoder` over a transformers BERT, pooled and projected as in BiomedCLIP.

    Args:
        embed_dim: joint image-text space width.
        vocab_size, pad_token_id: from the tokenizer (`ReportTokenizer`).
        context_length: tokens per report; at most the BERT's `max_position_embeddings`.
        text_model: folder with a BERT `config.json` (and weights when `pretrained`), e.g. a local copy of
            microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract; None builds a BERT from `bert` alone.
        bert: `transformers.BertConfig` fields (hidden_size, num_hidden_layers, ...) overriding the folder's.
        pretrained: start from the folder's BERT weights (as BiomedCLIP started from PubMedBERT).

    BERT's own pooler layer is never used (the CLS pooler reads the last hidden state). open_clip builds the
    text tower of a `local-dir:` model without it; a tower built from a config here has it, frozen, and the
    export leaves it out (`UNUSED_TEXT_KEYS`).
    """

    def __init__(
        self,
        embed_dim: int,
        vocab_size: int,
        pad_token_id: int,
        context_length: int,
        text_model: str | None = None,
        bert: dict[str, Any] | None = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        from transformers import BertConfig

        folder = Path(text_model) if text_model is not None else None
        if pretrained:
            if folder is None or bert:
                raise ValueError("text_pretrained needs text_model (a folder with BERT weights) and no bert overrides")
            self.tower = HFTextEncoder(str(folder), embed_dim, pooler_type=POOLER, proj_type=PROJ, pretrained=True)
        else:
            has_config = folder is not None and (folder / "config.json").is_file()
            config = BertConfig.from_pretrained(folder) if has_config else BertConfig()
            config.update({**(bert or {}), "vocab_size": vocab_size, "pad_token_id": pad_token_id})
            self.tower = HFTextEncoder("bert", embed_dim, config=config, pooler_type=POOLER, proj_type=PROJ)
            if getattr(self.tower.transformer, "pooler", None) is not None:
                self.tower.transformer.pooler.requires_grad_(False)  # never used: see the class docstring
        config = self.tower.config
        # a table with more rows than the tokenizer has tokens is fine (hub checkpoints pad theirs, e.g. to a
        # multiple of 8); fewer rows would leave some ids without an embedding
        if config.vocab_size < vocab_size or config.pad_token_id != pad_token_id:
            raise ValueError(
                f"{folder}: the BERT's vocabulary ({config.vocab_size} rows, pad id {config.pad_token_id}) does not "
                f"cover the tokenizer's ({vocab_size} tokens, pad id {pad_token_id})"
            )
        if context_length > config.max_position_embeddings:
            raise ValueError(
                f"context_length {context_length} exceeds the BERT's max_position_embeddings "
                f"{config.max_position_embeddings}"
            )
        self.context_length = context_length

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's `lock_text_tower` semantics: freeze the BERT (embeddings and layers) but its last
        `unlocked_layers` layers; LayerNorm weights stay trainable when `freeze_layer_norm` is false; the projection
        P_T is never frozen. (open_clip's own `HFTextEncoder.lock` fails for BERT when layers stay unlocked.)"""
        bert = self.tower.transformer
        layers = list(bert.encoder.layer)
        frozen = [bert.embeddings, *layers][: len(layers) + 1 - unlocked_layers]
        for module in frozen:
            for name, param in module.named_parameters():
                param.requires_grad = (not freeze_layer_norm) if "LayerNorm" in name.split(".") else False

    @property
    def config(self):
        return self.tower.config

    def forward(self, text_ids_bl: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> text embeddings (B, embed_dim) (unnormalised).

        Trailing columns that are padding in every row are dropped first: padded keys are masked out and the
        position embeddings are absolute, so the embeddings are those of the full-length ids, for less work.
        """
        is_text_l = (text_ids_bl != self.tower.config.pad_token_id).any(0)
        length = int(is_text_l.nonzero().max()) + 1 if bool(is_text_l.any()) else text_ids_bl.shape[1]
        return self.tower(text_ids_bl[:, :length])
