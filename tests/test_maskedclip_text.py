"""The text side for real reports (issue 25 item 6): a WordPiece BERT in the Hugging Face layout loaded offline
through the user's code path, report sections (IMPRESSION first), the truncated share."""

from __future__ import annotations

import numpy as np
import torch

from data.reports import report_sections
from pretrain.maskedclip.datamodule import truncated_share
from pretrain.maskedclip.tokenizer import ReportTokenizer
from tests.maskedclip_fixtures import tiny_model_args, write_tiny_bert_folder

REPORT = """EXAMINATION: CHEST (PA AND LAT)
INDICATION: cough.
FINDINGS: Small nodule in the left
 upper lobe.  No effusion.
IMPRESSION:  Left upper lobe nodule.
"""
WORDS = ["left", "upper", "lobe", "nodule", "small", "in", "the", "no", "effusion", "."]


def test_sections_are_cut_at_headings_and_impression_comes_first():
    assert report_sections(REPORT) == "Left upper lobe nodule. Small nodule in the left upper lobe. No effusion."
    assert report_sections(REPORT, ("findings",)) == "Small nodule in the left upper lobe. No effusion."
    assert report_sections("no headings: at all", ("impression",)) == "no headings: at all"  # lower case: no heading
    assert report_sections(REPORT, ("history",)) == REPORT  # none of the named sections: the whole report


def test_a_wordpiece_bert_folder_starts_the_text_tower_through_the_module(tmp_path):
    from pretrain.maskedclip.module import MaskedClipPretraining

    folder = write_tiny_bert_folder(tmp_path / "bert", WORDS)
    module = MaskedClipPretraining(
        **tiny_model_args(text_model=str(folder), text_pretrained=True, bert=None, context_length=16)
    )
    from transformers import BertModel

    reference = BertModel.from_pretrained(folder, local_files_only=True)
    # the tower holds the folder's weights (not a fresh initialisation)
    torch.testing.assert_close(
        module.model.text.tower.transformer.embeddings.word_embeddings.weight,
        reference.embeddings.word_embeddings.weight,
    )
    tokenizer = ReportTokenizer(str(folder), 16)
    ids = tokenizer(["Left upper lobe nodule."])
    assert ids[0, :7].tolist() == [2, 5, 6, 7, 8, 14, 3]  # [CLS] left upper lobe nodule . [SEP] (lower-cased)
    assert module.model.text(ids).shape == (1, 32)


def test_the_truncated_share_counts_distinct_reports_longer_than_the_context(tmp_path):
    folder = write_tiny_bert_folder(tmp_path / "bert", WORDS)
    tokenizer = ReportTokenizer(str(folder), 8)
    reports = np.array(["left lobe", "left lobe", "small nodule in the left upper lobe", None], dtype=object)
    # "left lobe" -> 4 tokens with [CLS]/[SEP]; the other -> 9 > 8
    assert truncated_share(tokenizer, reports) == (1, 2)
