"""Tiny MaskedCLIP inputs: the pretraining test corpus + ROI cache and a table of image-report pairs.

Reports describe where the bright disk of each image lies (tests/pretrain_lightning_fixtures.py), phrased a few
ways; they carry a marker word, MARKER, that a privacy test looks for in every output of a run.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from tests.pretrain_lightning_fixtures import write_roi_corpus

REPO = Path(__file__).resolve().parents[1]
MARKER = "zyxwvorbital"
PHRASES = ("{v} {h} bright lesion {m}", "lesion in the {v} {h} quadrant {m}", "{m} focal finding {v} {h}")
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def describe(image_path: Path, phrase: int) -> str:
    """A report naming the quadrant of the image's brightest region."""
    img = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE).astype(float)
    r, c = np.unravel_index(np.argmax(cv2.GaussianBlur(img, (9, 9), 3)), img.shape)
    v = "upper" if r < img.shape[0] / 2 else "lower"
    h = "left" if c < img.shape[1] / 2 else "right"
    return PHRASES[phrase % len(PHRASES)].format(v=v, h=h, m=MARKER)


def write_pairs(corpus: Path, out: Path, paired_share: float = 0.5, seed: int = 0) -> Path:
    """A CSV `path, frame, report` for a random `paired_share` of the corpus's PNG images."""
    paths = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.png"))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=round(paired_share * len(paths)), replace=False))
    rows = [{"path": paths[i], "frame": 0, "report": describe(corpus / paths[i], i)} for i in chosen]
    pd.DataFrame(rows, columns=["path", "frame", "report"]).to_csv(out, index=False)
    return out


def write_paired_corpus(root: Path, n: int = 16, paired_share: float = 0.5) -> tuple[Path, Path, Path]:
    """-> (corpus, cache, pairs CSV) under `root`."""
    corpus, cache = write_roi_corpus(root, n=n)
    return corpus, cache, write_pairs(corpus, root / "pairs.csv", paired_share)


def write_study_corpus(
    root: Path, n: int = 16, phrases: int | None = None, images_per_patient: int | None = None
) -> tuple[Path, Path, pd.DataFrame, Path, Path]:
    """A paired corpus of n images, two by two in a study, with a study-level report table (report i names finding
    i, or i % `phrases`) and, with `images_per_patient`, patient keys: (corpus, cache, manifest, its parquet,
    reports.csv)."""
    from data.manifest import scan_corpus

    corpus, cache, _ = write_paired_corpus(root / "data", n=n, paired_share=0.0)
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)  # as the cache's, plus the keys of issue 23
    manifest["study_key"] = [f"study{i // 2:02d}" for i in range(len(manifest))]
    if images_per_patient is not None:
        manifest["patient_key"] = [f"patient{i // images_per_patient:02d}" for i in range(len(manifest))]
    manifest_path = root / "manifest.parquet"
    manifest.to_parquet(manifest_path, index=False)
    studies = sorted(set(manifest["study_key"]))
    texts = [f"{MARKER} finding {i if phrases is None else i % phrases}" for i in range(len(studies))]
    pd.DataFrame({"study_key": studies, "report": texts}).to_csv(root / "reports.csv", index=False)
    return corpus, cache, manifest, manifest_path, root / "reports.csv"


def tiny_model_args(**overrides) -> dict:
    """MaskedClipPretraining arguments of a tiny model (test_vit: 6 blocks of width 64, 2 of them the bridge),
    grouped (`vision`, `text`, ...) from flat names (`pretrain.maskedclip.config.FLAT_KEYS`: vit, lambda_clip, ...)."""
    from pretrain.maskedclip.config import nest_flat_args

    args = dict(
        vit="test_vit",
        bridge_depth=2,
        embed_dim=32,
        input_size=64,
        bert=TINY_BERT,
        context_length=48,
        decoder_width=32,
        decoder_depth=1,
        decoder_heads=2,
        feature_decoder_depth=1,
        warmup_epochs=0.5,
    )
    return nest_flat_args({**args, **overrides})


def tiny_maskedclip(**overrides):
    """The bare `MaskedCLIP` of `tiny_model_args`, with its tokenizer."""
    from pretrain.maskedclip.module import MaskedClipPretraining

    module = MaskedClipPretraining(**tiny_model_args(**overrides))
    from pretrain.maskedclip.tokenizer import ReportTokenizer

    return module.model, ReportTokenizer(None, module.text_cfg.context_length)


def cpu_preset_fit_args(corpus: Path, cache: Path, reports: Path, *extra: str) -> list[str]:
    """`maskedclip fit` arguments of the CPU preset on these data (no loader workers), then `extra` overrides."""
    return [
        "maskedclip",
        "fit",
        "--config",
        str(REPO / "configs/maskedclip/cpu_tiny.yaml"),
        f"--data.corpus={corpus}",
        f"--data.cache={cache}",
        f"--data.reports={reports}",
        "--data.num_workers=0",
        *extra,
    ]


def write_tiny_bert_folder(folder: Path, words: list[str], table_size: int | None = None, **config) -> Path:
    """A tiny WordPiece BERT in the Hugging Face on-disk layout (as a hub snapshot of BiomedBERT is):
    `config.json`, `model.safetensors`, `vocab.txt`, `tokenizer.json`, `tokenizer_config.json`,
    `special_tokens_map.json`. The vocabulary is BERT's five special tokens then `words`; the embedding table
    has `table_size` rows (default: the vocabulary's size)."""
    from transformers import BertConfig, BertModel

    from data.clip_folder import bert_tokenizer, write_tokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    write_tokenizer(folder, bert_tokenizer(vocab))
    size = {**TINY_BERT, **config}
    bert = BertConfig(vocab_size=table_size or len(vocab), pad_token_id=0, **size)
    torch.manual_seed(0)
    BertModel(bert).save_pretrained(folder, safe_serialization=True)
    return folder
