"""Every phase that splits keeps a patient on one side; labels reach their slices; per-series metrics; the matched
ratio's calibration sees the arm's training items only and is redone when the grid changes.

Expected values are derived by hand from the rank-quantile rule of data.splits: n groups of one stratum, permuted,
rank r goes to test when (r + 0.5) / n < test_share, to val below test_share + val_share, else train.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from data.ids import make_item_id
from data.manifest import MANIFEST_COLUMNS, scan_corpus
from data.series import SERIES_COLUMNS
from data.splits import assign_group_splits, check_groups_disjoint, patient_groups
from finetune.classify import ClassificationData, classification_metrics, series_metrics
from finetune.data import read_label_csv
from finetune.detect import DetectionData
from finetune.segment import SegmentationData
from localize.import_masks import import_masks
from pretrain.datamodule import RoiDataModule
from study.arms import Arm
from study.config import ExperimentConfig
from study.matched import GridSetting, TrainingItems, calibrate
from study.runner import ExperimentRunner
from tests.pretrain_lightning_fixtures import write_roi_corpus


def _manifest(rows: list[dict]) -> pd.DataFrame:
    """A manifest (data scan's columns + grouping keys) of the given rows (path, frame, patient_key, series_key)."""
    table = pd.DataFrame(rows)
    table["item_id"] = [make_item_id(p, f) for p, f in zip(table["path"], table["frame"], strict=True)]
    table["modality"], table["height"], table["width"], table["source_format"] = "CT", 16, 16, "png"
    for column in SERIES_COLUMNS:  # a scan gives all grouping columns or none (data.manifest refuses a mix)
        if column not in table.columns:
            table[column] = table["patient_key"] if column.endswith("_key") else None
    return table[[*MANIFEST_COLUMNS, *[c for c in table.columns if c not in MANIFEST_COLUMNS]]]


def _slices_csv(tmp_path, *, patient_column: str = "patient_key", split: list[str] | None = None):
    """10 patients x 3 slices (one file each), p0-p4 label A, p5-p9 label B."""
    rows = [
        {"path": f"p{p}/s{s}.png", patient_column: f"p{p}", "label": "A" if p < 5 else "B"}
        for p in range(10)
        for s in range(3)
    ]
    table = pd.DataFrame(rows)
    if split is not None:
        table["split"] = split
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    return path


def _sides(table: pd.DataFrame) -> dict[str, set[str]]:
    return {s: set(patient_groups(table[table["split"] == s])) for s in ("train", "val", "test")}


# ------------------------------------------------------------------------------------------------ fine-tuning
def test_classification_splits_whole_patients_and_records_counts(tmp_path):
    data = ClassificationData(str(tmp_path), str(_slices_csv(tmp_path)), image_size=16)
    table = pd.concat([t.assign(split=s) for s, t in data.tables.items()])
    sides = _sides(table)
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    # per label 5 patients: quantiles 0.1 -> test, 0.3 -> val, 0.5 / 0.7 / 0.9 -> train; 3 slices each
    assert data.split_record == {
        "test": {"patients": 2, "items": 6},
        "train": {"patients": 6, "items": 18},
        "val": {"patients": 2, "items": 6},
    }
    # 20% of the 3 training patients per label: max(1, round(0.6)) = 1 patient, all 3 of its slices
    small = ClassificationData(str(tmp_path), str(_slices_csv(tmp_path)), image_size=16, train_fraction=0.2)
    assert small.split_record["train"] == {"patients": 2, "items": 6}
    assert set(small.tables["train"]["label"]) == {"A", "B"}


def test_a_split_column_with_a_patient_on_two_sides_is_refused(tmp_path):
    split = ["train"] * 30
    split[1] = "test"  # p0's second slice
    csv = _slices_csv(tmp_path, split=split)
    with pytest.raises(ValueError, match="labels.csv: patient group p0 is in both 'train' and 'test'"):
        ClassificationData(str(tmp_path), str(csv), image_size=16)
    split[1] = "train"
    split[3:6] = ["test"] * 3  # p1 whole on the test side: accepted
    ClassificationData(str(tmp_path), str(_slices_csv(tmp_path, split=split)), image_size=16)


def test_a_clear_patient_column_is_hashed_and_still_groups(tmp_path):
    table = read_label_csv(_slices_csv(tmp_path, patient_column="patient"))
    assert "patient" not in table.columns and not table["patient_key"].isin([f"p{p}" for p in range(10)]).any()
    assert table["patient_key"].nunique() == 10 and table.groupby("patient_key").size().eq(3).all()
    (tmp_path / "by_patient.csv").write_text("patient,label\nMRN123,A\n")  # a clear code cannot key labels
    with pytest.raises(ValueError, match="by_patient.csv: missing column.*path \\| item_id"):
        read_label_csv(tmp_path / "by_patient.csv")


def test_series_and_patient_labels_reach_their_slices(tmp_path):
    manifest = _manifest(
        [
            {"path": f"vol{v}.nii.gz", "frame": f, "patient_key": f"P{v // 2}", "series_key": f"S{v}"}
            for v in range(3)
            for f in range(3)
        ]
    )  # series S0, S1 of patient P0; S2 of P1
    manifest_path = tmp_path / "manifest.parquet"
    manifest.to_parquet(manifest_path, index=False)
    csv = tmp_path / "series.csv"
    csv.write_text("series_key,label\nS0,tumour\nS2,normal\n")  # S1 unlabelled: left out
    table = read_label_csv(csv, manifest=manifest_path)
    assert table[["path", "frame", "label"]].values.tolist() == [
        ["vol0.nii.gz", 0, "tumour"],
        ["vol0.nii.gz", 1, "tumour"],
        ["vol0.nii.gz", 2, "tumour"],
        ["vol2.nii.gz", 0, "normal"],
        ["vol2.nii.gz", 1, "normal"],
        ["vol2.nii.gz", 2, "normal"],
    ]
    assert table["patient_key"].tolist() == ["P0"] * 3 + ["P1"] * 3  # the patient comes along for the split
    csv.write_text("patient_key,label,split\nP0,tumour,train\nP1,normal,test\n")
    table = read_label_csv(csv, manifest=manifest_path)
    assert table.groupby("label").size().to_dict() == {"normal": 3, "tumour": 6}
    assert (table["split"] == np.where(table["patient_key"] == "P0", "train", "test")).all()
    with pytest.raises(ValueError, match="need the corpus manifest"):
        read_label_csv(csv)
    csv.write_text("series_key,label\nS9,normal\n")
    with pytest.raises(ValueError, match="1 label row.*match no image"):
        read_label_csv(csv, manifest=manifest_path)
    csv.write_text("series_key,label\nS0,normal\nS0,tumour\n")
    with pytest.raises(ValueError, match="more than one label"):
        read_label_csv(csv, manifest=manifest_path)


def test_segmentation_splits_whole_patients_from_the_manifest(tmp_path):
    manifest = _manifest(
        [{"path": f"p{p}/s{s}.png", "frame": 0, "patient_key": f"p{p}"} for p in range(5) for s in (0, 1)]
    )
    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    (tmp_path / "truth").mkdir()
    for item_id in manifest["item_id"]:
        cv2.imwrite(str(tmp_path / "truth" / f"{item_id}.png"), np.pad(np.full((4, 4), 255, np.uint8), 6))
    manifest[["path", "frame"]].assign(label="fg").to_csv(tmp_path / "labels.csv", index=False)
    data = SegmentationData(str(tmp_path), "labels.csv", manifest="manifest.parquet", image_size=16)
    table = pd.concat([t.assign(split=s) for s, t in data.tables.items()])
    check_groups_disjoint(patient_groups(table), table["split"])
    # 5 patients: quantiles 0.1 -> test, 0.3 -> val, three train; 2 slices each
    assert data.split_record == {
        "test": {"patients": 1, "items": 2},
        "train": {"patients": 3, "items": 6},
        "val": {"patients": 1, "items": 2},
    }


def test_detection_splits_whole_patients(tmp_path):
    images, annotations = [], []
    for i in range(20):  # 10 patients x 2 images; patient p's images are 2p and 2p + 1
        images.append({"id": i + 1, "file_name": f"img{i}.png", "height": 16, "width": 16})
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 6, 6], "area": 36, "iscrowd": 0}
        )
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "lesion"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    manifest = _manifest([{"path": f"img{i}.png", "frame": 0, "patient_key": f"p{i // 2}"} for i in range(20)])
    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    data = DetectionData(str(tmp_path), "coco.json", manifest="manifest.parquet", filter_empty=False)
    patient_of = {i + 1: i // 2 for i in range(20)}
    sides = {s: {patient_of[i] for i in ids} for s, ids in data.image_ids.items()}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    # 10 patients of one stratum: 0.05, 0.15 -> test; 0.25, 0.35 -> val; six train
    assert data.split_record == {
        "test": {"patients": 2, "items": 4},
        "train": {"patients": 6, "items": 12},
        "val": {"patients": 2, "items": 4},
    }


def test_series_metric_on_a_hand_made_case():
    # series of 3, 3 and 1 slices, rows interleaved; class-1 probabilities
    # series a (label 0): 0.1, 0.2, 0.9 -> mean 0.4 -> predicted 0 (right)
    # series b (label 1): 0.3, 0.6, 0.9 -> mean 0.6 -> predicted 1 (right)
    # series c (label 1): 0.7 -> predicted 1 (right); means 0.4 < 0.6 < 0.7: AUROC 1
    series = ["a", "b", "a", "b", "a", "b", "c"]
    p1 = torch.tensor([0.1, 0.3, 0.2, 0.6, 0.9, 0.9, 0.7])
    target = torch.tensor([0, 1, 0, 1, 0, 1, 1])
    probs = torch.stack([1 - p1, p1], dim=1)
    got = series_metrics(probs, target, series, 2)
    assert got["series_accuracy"] == pytest.approx(1.0) and got["series_auroc"] == pytest.approx(1.0)
    # the slice metric differs: 5 of 7 right; AUROC (4 + 4 + 0.5) / 12 pairs (0.9 vs 0.9 is a tie)
    metrics = classification_metrics(2)
    metrics.update(probs, target)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["accuracy"] == pytest.approx(5 / 7) and values["auroc"] == pytest.approx(8.5 / 12, abs=1e-6)
    # equal means (sums of eighths, exact in binary): a 0.125, 0.25, 0.875 and b 0.375, 0.5, 0.375 both average
    # 1.25 / 3 < 0.5 -> both predicted 0 (a right, b wrong); the two series tie in AUROC
    p1b = torch.tensor([0.125, 0.375, 0.25, 0.5, 0.875, 0.375])
    got = series_metrics(torch.stack([1 - p1b, p1b], dim=1), target[:6], series[:6], 2)
    assert got["series_accuracy"] == pytest.approx(0.5) and got["series_auroc"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ pretraining
def test_pretraining_validation_holds_out_whole_patients(tmp_path):
    corpus, cache = write_roi_corpus(tmp_path, n=16)
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)
    manifest["patient_key"] = [f"p{i // 4}" for i in range(16)]  # 4 patients x 4 images (item 15 is pending)
    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    dm = RoiDataModule(
        corpus, cache, tmp_path / "manifest.parquet", input_size=32, batch_size=2, num_workers=0, val_fraction=0.25
    )
    dm.setup("fit")
    patient = dict(zip(manifest.index, manifest["patient_key"], strict=True))
    train = {patient[dm.train_set[i]["index"]] for i in range(len(dm.train_set))}
    val = {patient[dm.val_set[i]["index"]] for i in range(len(dm.val_set))}
    assert not train & val
    counts = dm.hparams["split_counts"]
    # 4 patients: quantile 0.125 < 0.25 -> one validation patient, three training
    assert counts["val"]["patients"] == 1 and counts["train"]["patients"] == 3
    assert counts["val"]["items"] + counts["train"]["items"] == 15


# ------------------------------------------------------------------------------------------------ the study
def _calibration_corpus(tmp_path, val_fraction: float, seed: int):
    """4 patients x 2 images (32 px); the validation patients' ROI is the whole image (modality MR), the others'
    empty (CT)."""
    corpus = tmp_path / "corpus"
    (corpus / "img").mkdir(parents=True)
    for i in range(8):
        cv2.imwrite(str(corpus / "img" / f"i{i}.png"), np.full((32, 32), 30 * i, np.uint8))
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)
    manifest["patient_key"] = [f"p{int(p[5]) // 2}" for p in manifest["path"]]
    groups = manifest["patient_key"].tolist()
    is_val = assign_group_splits(groups, seed=seed, val_share=val_fraction, test_share=0.0) == "val"
    manifest["modality"] = np.where(is_val, "MR", "CT")  # for the modality filter: MR = the full-ROI images
    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    (tmp_path / "masks").mkdir()
    for item_id, val in zip(manifest["item_id"], is_val, strict=True):
        cv2.imwrite(str(tmp_path / "masks" / f"{item_id}.png"), np.full((32, 32), 255 if val else 0, np.uint8))
    cache = tmp_path / "gt.zarr"
    import_masks(tmp_path / "masks", cache, manifest_path=tmp_path / "manifest.parquet", progress=False)
    return corpus, cache, int(is_val.sum())


def test_calibration_ignores_the_validation_items(tmp_path):
    corpus, cache, n_val = _calibration_corpus(tmp_path, val_fraction=0.5, seed=0)
    assert n_val == 4  # 4 patients: quantiles 0.125, 0.375 < 0.5 -> two validation patients, 4 images
    grid = GridSetting(32, (2, 2), "rect", 0.0, "any", 0.0, False)
    arm = Arm("mwm", "differentiated", "d", r_roi=0.75, r_bg=0.25)
    items = TrainingItems(manifest=str(tmp_path / "manifest.parquet"), val_fraction=0.5, seed=0)
    record = calibrate(corpus, cache, arm, grid, items)
    # training images: no ROI cell, 4 background cells, keep int(4 x 0.75) = 3 -> 1/4 masked. A validation image
    # (4 ROI cells, keep int(4 x 0.25) = 1 -> 3/4 masked) would pull the mean to 0.5.
    assert record["target_realised_ratio"] == pytest.approx(0.25) and record["mask_ratio"] == pytest.approx(0.25)
    assert record["items"] == 4 and record["validation_items_left_out"] == 4
    everything = calibrate(corpus, cache, arm, grid, TrainingItems(manifest=items.manifest))
    assert everything["target_realised_ratio"] == pytest.approx(0.5)  # what the bug would give
    # the modality filter: the MR images alone (all ROI) realise 3/4, the CT ones 1/4
    only = {m: TrainingItems(manifest=items.manifest, modalities=(m,)) for m in ("MR", "CT")}
    assert calibrate(corpus, cache, arm, grid, only["MR"])["target_realised_ratio"] == pytest.approx(0.75)
    assert calibrate(corpus, cache, arm, grid, only["CT"])["target_realised_ratio"] == pytest.approx(0.25)


def test_a_resumed_study_recalibrates_when_the_grid_changed(tmp_path, capsys):
    corpus, cache, _ = _calibration_corpus(tmp_path, val_fraction=0.5, seed=0)
    pretrain = tmp_path / "pretrain.yaml"
    pretrain.write_text(
        f"model: {{backbone: resnet18, input_size: 64, roi_rule: any}}\n"
        f"data: {{augment: resize, hflip: 0.0, val_fraction: 0.5, manifest: {tmp_path / 'manifest.parquet'}}}\n"
    )
    raw = {
        "out": str(tmp_path / "out"),
        "corpus": str(corpus),
        "pretrain": {"config": str(pretrain)},
        "downstream": [],
        "rois": {"gt": {"kind": "cache", "path": str(cache)}},
        "arms": [
            {"strategy": "differentiated", "rois": "gt", "r_roi": 0.75, "r_bg": 0.25, "name": "mwm"},
            {"strategy": "matched_random", "match": ["mwm"]},
        ],
    }

    def calibrated(args: dict) -> tuple[float, list[int]]:
        config = ExperimentConfig.from_dict({**raw, "pretrain": {"config": str(pretrain), "args": args}})
        arm = next(a for a in config.arms if a.matches)
        ratio = ExperimentRunner(config).matched(arm).mask_ratio
        done = json.loads((tmp_path / "out" / "runs" / arm.name / "calibration" / "done.json").read_text())
        return ratio, done["grid"]

    assert calibrated({}) == (0.25, [2, 2])  # resnet18 stride 32 at 64 px; empty training ROIs -> 1/4
    capsys.readouterr()
    assert calibrated({}) == (0.25, [2, 2])
    assert "recalibrating" not in capsys.readouterr().out  # unchanged settings: the record is reused
    # 128 px: a 4 x 4 grid; the training images still have no ROI cell: keep int(16 x 0.75) = 12 -> 1/4
    assert calibrated({"model.input_size": 128}) == (0.25, [4, 4])
    assert "recalibrating" in capsys.readouterr().out
    # the validation share changed: no item held out now, the full-ROI images count -> (1/4 + 3/4) / 2
    assert calibrated({"model.input_size": 128, "data.val_fraction": 0.0})[0] == pytest.approx(0.5)
