"""Pairs at the level reports exist (issue 25): a report belongs to a study and pairs with that study's images;
pairs of one study or one report text are not each other's negatives; recall@K on the validation pairs."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from data.reports import read_report_table, reports_for_manifest, studies_for_manifest
from pretrain.maskedclip.datamodule import PairedDataModule, PairedItems, report_groups
from pretrain.maskedclip.module import MaskedClipPretraining
from pretrain.maskedclip.retrieval import recall_at_k
from pretrain.maskedclip.tokenizer import ReportTokenizer
from tests.maskedclip_fixtures import tiny_maskedclip, tiny_model_args, write_study_corpus

MANIFEST = pd.DataFrame(
    {
        "path": ["a/vol.nii.gz", "a/vol.nii.gz", "b/x.png", "c/y.png", "d/z.png"],
        "frame": [0, 1, 0, 0, 0],
        "study_key": ["s1", "s1", "s2", "s2", ""],  # d/z.png: no study key
    }
)


def test_a_study_level_table_pairs_every_image_of_its_study(tmp_path):
    table_path = tmp_path / "reports.csv"
    pd.DataFrame({"study_key": ["s2", "s1"], "report": ["two images", "a volume"]}).to_csv(table_path, index=False)
    table = read_report_table(table_path)
    reports = reports_for_manifest(MANIFEST, table, table_path)
    assert reports.tolist() == ["a volume", "a volume", "two images", "two images", None]
    assert studies_for_manifest(MANIFEST, table).tolist() == ["s1", "s1", "s2", "s2", "d/z.png"]
    pd.DataFrame({"study_key": ["s9"], "report": ["x"]}).to_csv(table_path, index=False)
    with pytest.raises(ValueError, match="match no manifest study"):
        reports_for_manifest(MANIFEST, read_report_table(table_path), table_path)
    with pytest.raises(ValueError, match="needs the manifest's study_key"):
        reports_for_manifest(MANIFEST.drop(columns="study_key"), table, table_path)


def test_studies_come_from_the_table_then_the_manifest_then_the_path(tmp_path):
    table_path = tmp_path / "reports.csv"
    rows = {"path": ["b/x.png"], "frame": [0], "report": ["r"], "study_key": ["t7"]}
    pd.DataFrame(rows).to_csv(table_path, index=False)
    table = read_report_table(table_path)
    assert studies_for_manifest(MANIFEST, table).tolist() == ["s1", "s1", "t7", "s2", "d/z.png"]
    # no study keys anywhere: each file is its own study (a volume's slices are one)
    bare = MANIFEST.drop(columns="study_key")
    assert studies_for_manifest(bare, None).tolist() == [
        "a/vol.nii.gz",
        "a/vol.nii.gz",
        "b/x.png",
        "c/y.png",
        "d/z.png",
    ]


def test_items_carry_report_and_study_groups_without_text():
    reports = np.array(["Left  lung mass.", None, "Left lung mass.", "clear", None], dtype=object)
    assert report_groups(reports).tolist()[1::3] == [-1, -1]
    groups = report_groups(reports)
    assert groups[0] == groups[2] != groups[3]  # whitespace as the tokenizer cleans it
    items = [{"index": i} for i in range(5)]
    studies = studies_for_manifest(MANIFEST, None)
    paired = PairedItems(items, reports, ReportTokenizer(None, 32), studies)
    got = [paired[i] for i in range(5)]
    assert [g["study_group"].item() for g in got][:2] == [got[0]["study_group"].item()] * 2
    assert got[2]["study_group"] == got[3]["study_group"] != got[4]["study_group"] != got[0]["study_group"]
    assert all(isinstance(v, torch.Tensor) for g in got for v in g.values() if not isinstance(v, int))


def test_pairs_per_study_keeps_the_first_images_of_each_study():
    model, _ = tiny_maskedclip(pairs_per_study=2)
    paired = torch.tensor([True, True, False, True, True, True])
    groups = torch.tensor([[0, 7], [1, 7], [-1, 7], [2, 7], [3, 8], [3, 8]])  # study 7: rows 0, 1, 3 paired
    assert model.clip_rows(paired, groups).tolist() == [True, True, False, False, True, True]
    model.losses = dataclasses.replace(model.losses, pairs_per_study=None)
    assert model.clip_rows(paired, groups).tolist() == paired.tolist()


def test_recall_at_k_by_hand():
    # 4 pairs in 2-D; cosine of image i (rows) to report j (columns), own report on the diagonal:
    #   img0 (1, 0):     1      0.995   0      -0.0995   own rank 1
    #   img1 (0, 1):     0      0.0995  1       0.995    own rank 3
    #   img2 (1, 0):     1      0.995   0      -0.0995   own rank 3
    #   img3 (.6, .8):   0.6    0.677   0.8     0.736    own rank 2
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-0.1, 1.0]])
    groups = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])  # all unrelated
    out = recall_at_k(img, txt, groups, ks=(1, 2, 4))
    assert (out["i2t_recall@1"], out["i2t_recall@2"], out["i2t_recall@4"]) == (0.25, 0.5, 1.0)
    # report -> image (columns): own image at rank 1 (tie with img2) / 4 / 3 / 2
    assert (out["t2i_recall@2"], out["t2i_recall@4"]) == (0.5, 1.0)
    # the two ways differ: image 1 prefers report 0 (0.9 > 0.436), but report 1 prefers image 1 (0.436 > 0)
    one_way = recall_at_k(torch.tensor([[1.0, 0.0], [0.9, 0.436]]), torch.eye(2), torch.tensor([0, 1]), ks=(1,))
    assert (one_way["i2t_recall@1"], one_way["t2i_recall@1"]) == (0.5, 1.0)
    # reports 2 and 3 of one study: image 3's best report (2) is now a correct answer
    related = torch.tensor([[0, 0], [1, 1], [2, 5], [3, 5]])
    assert recall_at_k(img, txt, related, ks=(1,))["i2t_recall@1"] == 0.5


def test_a_run_with_study_level_pairs_logs_recall_and_masks_same_study_negatives(tmp_path):
    """Images two by two in a study, a report per study; validation pairs give recall@K each epoch, and every
    L_CLIP call receives the study keys, under which two images of one study are never each other's negatives."""
    corpus, cache, manifest, manifest_path, reports = write_study_corpus(tmp_path, phrases=3)
    data = PairedDataModule(
        corpus,
        cache,
        manifest=manifest_path,
        reports=reports,
        input_size=64,
        batch_size=8,
        num_workers=0,
        val_fraction=0.3,
        context_length=48,
        hflip=0,
    )
    module = MaskedClipPretraining(**tiny_model_args(lr=1e-3))
    calls = []
    module.model.clip_loss.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs.get("groups")), with_kwargs=True
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    assert calls and all(g is not None and g.shape[1] == 2 for g in calls)
    # the study column of a batch is the manifest's study: equal numbers exactly for images of one study
    study_of_row = manifest["study_key"].to_numpy()
    for batch in data.train_dataloader():
        keys = study_of_row[batch["index"].numpy()]
        same_key = keys[:, None] == keys[None, :]
        same_group = (batch["study_group"][:, None] == batch["study_group"][None, :]).numpy()
        np.testing.assert_array_equal(same_key, same_group)
    metrics = pd.read_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    recall = metrics.dropna(subset=["val/i2t_recall@1"])
    assert len(recall) == 2  # one row per epoch
    for k in (1, 5, 10):
        for way in ("i2t", "t2i"):
            values = recall[f"val/{way}_recall@{k}"]
            assert values.between(0, 1).all()
    assert (recall["val/i2t_recall@10"] >= recall["val/i2t_recall@1"]).all()
    assert (recall["val/retrieval_pairs"] >= 2).all()
