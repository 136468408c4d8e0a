"""Reports -> token ids, exactly as open_clip's HF tokenizer of the exported folder will tokenise them."""

from __future__ import annotations

from pathlib import Path

import torch
from open_clip.tokenizer import get_clean_fn

from data.clip_folder import bert_tokenizer, bert_vocabulary


def load_hf_tokenizer(text_model: str | None):
    """The Hugging Face tokenizer of folder `text_model` (tokenizer.json or vocab.txt + tokenizer_config.json, as
    in a hub repo), or for None the built-in one: BERT's special tokens plus letters and digits, so that any
    text tokenises into characters (for tiny runs and tests; it owes nothing to the reports)."""
    if text_model is None:
        return bert_tokenizer(bert_vocabulary())
    from transformers import AutoTokenizer

    folder = Path(text_model)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: text model folder not found (it must hold the tokenizer files, e.g. a local copy of "
            "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract); text_model: null uses a built-in character "
            "vocabulary"
        )
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: no usable tokenizer files ({type(err).__name__}: {err})") from err


class ReportTokenizer:
    """`tokenizer(texts) -> (len(texts), context_length)` int64 ids, padded and truncated.

    Mirrors `open_clip.tokenizer.HFTokenizer` with its defaults (whitespace cleaning, padding to the context
    length, truncation, [SEP] kept), which is what `open_clip.get_tokenizer` gives for the exported folder; the
    export test checks that the two agree. Picklable, so it runs in data-loader workers.
    """

    def __init__(self, text_model: str | None, context_length: int) -> None:
        self.hf = load_hf_tokenizer(text_model)
        self.context_length = context_length
        self.pad_token_id: int = int(self.hf.pad_token_id)
        self.vocab_size: int = len(self.hf)
        self._clean = get_clean_fn("whitespace")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.hf(
            [self._clean(text) for text in texts],
            return_tensors="pt",
            max_length=self.context_length,
            padding="max_length",
            truncation=True,
        ).input_ids

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts of `texts` untruncated, special tokens included (> context_length: truncated)."""
        ids = self.hf([self._clean(text) for text in texts], truncation=False, padding=False).input_ids
        return [len(row) for row in ids]

    def empty(self) -> torch.Tensor:
        """Ids of an item without a report: padding only (never read by the model)."""
        return torch.full((self.context_length,), self.pad_token_id, dtype=torch.long)
