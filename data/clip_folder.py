"""open_clip folders in BiomedCLIP's hub layout (timm ViT + Hugging Face BERT), as `local-dir:` loads them.

Shared by whoever writes such a folder: the localizer's stand-ins, the benchmarks' real-size models and the
MaskedCLIP export. A folder holds::

    open_clip_config.json  open_clip_model.safetensors          the CLIP config and weights
    config.json  vocab.txt  tokenizer.json  tokenizer_config.json  the BERT config and tokenizer files

The config's `text_cfg.hf_model_name` / `hf_tokenizer_name` point at the folder itself, so open_clip finds the
BERT config and tokenizer offline (see FACTS.md, "offline trap").
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CLIP_CONFIG_NAME = "open_clip_config.json"
CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"


def bert_vocabulary(words: Iterable[str] = ()) -> list[str]:
    """A WordPiece vocabulary: BERT's special tokens, letters and digits (alone and as `##` continuations, so
    any lower-case word tokenises) and then `words` (lower-cased, deduplicated, sorted)."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    extra = sorted({w.lower() for w in words} - set(chars))
    return [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *extra]


def bert_tokenizer(vocab: list[str]):
    """A lower-casing `transformers.BertTokenizerFast` over `vocab` (held in memory)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


def write_tokenizer(folder: Path, tokenizer) -> None:
    """The tokenizer's files as the hub repos hold them (tokenizer.json, tokenizer_config.json, vocab.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")


def clip_config(
    folder: Path,
    *,
    embed_dim: int,
    vision_cfg: Mapping[str, Any],
    context_length: int,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
) -> dict[str, Any]:
    """open_clip_config.json of a BiomedCLIP-layout folder: HF BERT text tower (mlp proj, CLS pooler) whose
    config and tokenizer are `folder` itself."""
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": dict(vision_cfg),
            "text_cfg": {
                "hf_model_name": str(folder),
                "hf_tokenizer_name": str(folder),
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": context_length,
            },
        },
        "preprocess_cfg": {"mean": list(mean), "std": list(std)},
    }


def write_clip_config(folder: Path, config: Mapping[str, Any]) -> Path:
    path = folder / CLIP_CONFIG_NAME
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def write_clip_weights(folder: Path, state_dict: Mapping[str, Any]) -> Path:
    """The CLIP state dict as `open_clip_model.safetensors` (the first name open_clip looks for)."""
    from safetensors.torch import save_file

    path = folder / CLIP_WEIGHTS_NAME
    save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, path)
    return path


def write_biomedclip_folder(
    folder: Path,
    vocabulary: list[str],
    *,
    embed_dim: int,
    vision_cfg: dict[str, Any],
    bert: dict[str, Any],
    context_length: int,
) -> Path:
    """A local-dir folder in BiomedCLIP's layout (timm ViT + HF BERT, mlp proj, CLS pooler) with random weights,
    created by open_clip from its own config; the vocabulary is built from `vocabulary`'s words."""
    import open_clip
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocabulary(w for text in vocabulary for w in text.lower().split())
    write_tokenizer(folder, bert_tokenizer(vocab))
    BertConfig(vocab_size=len(vocab), **bert).save_pretrained(folder)
    write_clip_config(
        folder, clip_config(folder, embed_dim=embed_dim, vision_cfg=vision_cfg, context_length=context_length)
    )
    # No weights file yet, so open_clip builds a randomly initialised model from the config (what we want here;
    # its warnings about that are dropped).
    with _without_log_records("no CLIP weights found", "initialized randomly"):
        model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)
    write_clip_weights(folder, model.state_dict())
    return folder


@contextlib.contextmanager
def _without_log_records(*fragments: str) -> Iterator[None]:
    """Drop root-logger records containing any of ``fragments`` (open_clip logs through the root logger)."""
    drop = logging.Filter()
    drop.filter = lambda record: not any(f in record.getMessage() for f in fragments)
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
