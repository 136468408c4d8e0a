"""Fine-tuning data: train-fraction subsets, splits, label tables, ImageFolder trees, mask pairs, COCO instances."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from data.sample import write_sample_corpus
from finetune.classify import ClassificationData
from finetune.data import (
    CocoInstances,
    MaskedImages,
    corpus_mask_table,
    folder_mask_table,
    load_coco,
    primary_category,
    read_label_csv,
    scan_image_folder,
    stratified_subset,
    table_splits,
)
from finetune.detect import DetectionData
from finetune.segment import SegmentationData


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(root, n=6, seed=0, size=64)
    return root


def test_stratified_subset_is_deterministic_stratified_and_nested():
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 3
    subset = stratified_subset(strata, 0.1, seed=3)
    assert np.array_equal(subset, stratified_subset(strata, 0.1, seed=3))
    picked = pd.Series(np.asarray(strata)[subset]).value_counts().to_dict()
    assert picked == {"a": 5, "b": 3, "c": 1}  # round(0.1 * n), at least one per class
    tiny = stratified_subset(strata, 0.01, seed=3)
    assert pd.Series(np.asarray(strata)[tiny]).value_counts().to_dict() == {"a": 1, "b": 1, "c": 1}
    assert set(tiny) <= set(subset)  # the 1% subset lies inside the 10% subset
    assert not np.array_equal(subset, stratified_subset(strata, 0.1, seed=4))
    assert np.array_equal(stratified_subset(strata, 1.0, seed=3), np.arange(len(strata)))
    with pytest.raises(ValueError, match="train fraction"):
        stratified_subset(strata, 0.0, seed=0)


def test_table_splits_is_seeded_and_stratified():
    strata = ["x"] * 10 + ["y"] * 20
    table = pd.DataFrame({"path": [f"{i}.png" for i in range(30)], "label": strata})  # one file = one patient
    splits = table_splits(table.copy(), seed=0, val_share=0.2, test_share=0.2)["split"].to_numpy()
    assert np.array_equal(splits, table_splits(table.copy(), seed=0, val_share=0.2, test_share=0.2)["split"])
    table = pd.crosstab(pd.Series(strata, name="s"), pd.Series(splits, name="split"))
    assert table.loc["x"].to_dict() == {"test": 2, "train": 6, "val": 2}
    assert table.loc["y"].to_dict() == {"test": 4, "train": 12, "val": 4}


def test_classification_data_train_fraction_on_sample_corpus(corpus):
    full = ClassificationData(str(corpus), "labels.csv", image_size=32)
    assert full.class_names == sorted(pd.read_csv(corpus / "labels.csv")["label"].unique())
    small = ClassificationData(str(corpus), "labels.csv", image_size=32, train_fraction=0.01)
    # one patient (here: one file, a volume with all its slices) of every class, by the patient's majority label
    assert small.split_record["train"]["patients"] == full.num_classes
    assert set(small.tables["train"]["label"]) == set(full.class_names)
    again = ClassificationData(str(corpus), "labels.csv", image_size=32, train_fraction=0.01)
    assert small.tables["train"]["item_id"].tolist() == again.tables["train"]["item_id"].tolist()
    image, label = next(iter(small.test_dataloader()))
    assert image.shape[1:] == (3, 32, 32) and image.dtype == torch.float32 and label.dtype == torch.int64
    mr = ClassificationData(str(corpus), "labels.csv", modalities=["MR"])
    assert mr.class_names == ["no_tumor", "tumor"]


def test_label_csv_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,x\n")
    with pytest.raises(ValueError, match="bad.csv: missing column"):
        read_label_csv(bad)
    bad.write_text("path,label,split\na.png,x,training\n")
    with pytest.raises(ValueError, match="bad.csv: split values"):
        read_label_csv(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text("path,label\na.png,x\n")
    table = read_label_csv(ok)
    assert table.loc[0, "frame"] == 0 and table.loc[0, "modality"] == ""


def test_image_folder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("benign", "malignant"):
            for i in range(2):
                path = tmp_path / split / label / f"img{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    table = scan_image_folder(tmp_path)
    assert len(table) == 8 and set(table["split"]) == {"train", "test"}
    data = ClassificationData(str(tmp_path), labels_csv=None, image_size=16, batch_size=4)
    assert data.class_names == ["benign", "malignant"] and data.n_train == 4 and data.n_test == 4
    images, labels = next(iter(data.test_dataloader()))
    assert images.shape == (4, 3, 16, 16) and sorted(labels.tolist()) == [0, 0, 1, 1]


def test_mask_pairs_from_corpus_and_folders(corpus, tmp_path):
    table = corpus_mask_table(corpus, corpus / "labels.csv", modalities=["MR"])
    image, mask = MaskedImages(corpus, table)[int(np.flatnonzero(table["label"] == "tumor")[0])]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 1}

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "case1.png"), np.full((16, 16), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "msk" / "case1.png"), np.pad(np.full((4, 4), 255, np.uint8), 6))
    pairs = folder_mask_table(tmp_path / "img", tmp_path / "msk")
    _, mask = MaskedImages(tmp_path / "img", pairs)[0]
    assert int(mask.sum()) == 16
    cv2.imwrite(str(tmp_path / "img" / "case2.png"), np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="without a mask.*case2.png"):
        folder_mask_table(tmp_path / "img", tmp_path / "msk")


def test_coco_instances_read_sample_json(corpus):
    coco = load_coco(corpus / "coco" / "instances.json")
    dataset = CocoInstances(corpus, coco)
    raw = json.loads((corpus / "coco" / "instances.json").read_text())
    ann = raw["annotations"][0]
    index = dataset.image_ids.index(ann["image_id"])
    image, target = dataset[index]
    info = coco.imgs[ann["image_id"]]
    assert image.shape == (3, info["height"], info["width"])
    first = [a for a in raw["annotations"] if a["image_id"] == ann["image_id"]][0]
    x, y, w, h = first["bbox"]
    assert target["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert target["labels"][0] == dataset.label_of[first["category_id"]]
    mask = target["masks"][0]
    assert mask.shape == image.shape[1:] and abs(int(mask.sum()) - first["area"]) <= 0.3 * first["area"]

    data = DetectionData(str(corpus), "coco/instances.json", split_csv="labels.csv", filter_empty=False)
    labels = pd.read_csv(corpus / "labels.csv")
    test_items = {coco.imgs[i]["item_id"] for i in data.image_ids["test"]}
    assert test_items == set(labels.loc[labels["split"] == "test", "item_id"])
    assert data.num_classes == 4 and data.category_ids == [1, 2, 3]
    # detectron2's FILTER_EMPTY_ANNOTATIONS (the default): training images without an instance are left out
    filtered = DetectionData(str(corpus), "coco/instances.json", split_csv="labels.csv")
    assert filtered.image_ids["train"] == [i for i in data.image_ids["train"] if primary_category(coco, i) != 0]
    assert filtered.image_ids["test"] == data.image_ids["test"]  # evaluation keeps every image
    small = DetectionData(
        str(corpus), "coco/instances.json", split_csv="labels.csv", train_fraction=0.1, filter_empty=False
    )
    strata = {primary_category(coco, i) for i in data.image_ids["train"]}
    assert len(strata) == 4  # three lesion categories + images without lesions
    assert {primary_category(coco, i) for i in small.image_ids["train"]} == strata
    # one patient (here: one file, a volume with all its slices) per stratum of patients (their majority category)
    assert small.split_record["train"]["patients"] == len(strata)
    images, targets = next(iter(data.train_dataloader()))
    assert isinstance(images, list) and {"boxes", "labels", "masks", "image_id"} <= set(targets[0])


def test_plain_coco_dataset_with_ordinary_images(tmp_path):
    """Standard COCO layout: 8-bit JPEG/PNG files, separate train/test json, RLE and polygon masks, no 'frame'."""
    import pycocotools.mask as mask_utils

    (tmp_path / "images").mkdir()
    files = {1: "a.jpg", 2: "b.png", 3: "c.png"}
    for name in files.values():
        cv2.imwrite(str(tmp_path / "images" / name), np.full((24, 32, 3), 90, np.uint8))
    box_mask = np.zeros((24, 32), np.uint8)
    box_mask[4:12, 6:16] = 1
    rle = mask_utils.encode(np.asfortranarray(box_mask))
    rle["counts"] = rle["counts"].decode()
    cats = [{"id": 5, "name": "cyst"}, {"id": 9, "name": "mass"}]

    def write(name, ids):
        anns = [
            {
                "id": i,
                "image_id": i,
                "category_id": 5 if i % 2 else 9,
                "bbox": [6, 4, 10, 8],
                "area": 80,
                "iscrowd": 0,
                "segmentation": rle if i == 1 else [[6, 4, 16, 4, 16, 12, 6, 12]],
            }
            for i in ids
        ]
        images = [{"id": i, "file_name": files[i], "height": 24, "width": 32} for i in ids]
        (tmp_path / name).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))

    write("train.json", [1, 2])
    write("test.json", [3])
    data = DetectionData(
        str(tmp_path / "images"),
        str(tmp_path / "train.json"),
        test_ann_file=str(tmp_path / "test.json"),
        split_csv=None,
        val_share=0.0,
    )
    assert data.image_ids == {"train": [1, 2], "val": [], "test": [3]} and data.num_classes == 3
    dataset = data.test_dataloader().dataset
    image, target = dataset[0]
    assert image.shape == (3, 24, 32) and target["labels"].tolist() == [1]  # category 5 -> label 1
    train_set = CocoInstances(tmp_path / "images", data.coco, [1])
    _, target = train_set[0]
    assert int(target["masks"][0].sum()) == 80 and target["labels"].tolist() == [1]  # RLE decoded
    with pytest.raises(ValueError, match="not a COCO instances file"):
        (tmp_path / "bad.json").write_text("{}")
        load_coco(tmp_path / "bad.json")


def test_segmentation_data_from_image_and_mask_folders(tmp_path):
    from finetune.segment import SegmentationData

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for i in range(10):
        cv2.imwrite(str(tmp_path / "img" / f"s{i}.png"), np.full((20, 20), 10 * i, np.uint8))
        mask = np.zeros((20, 20), np.uint8)
        if i % 2:
            mask[5:10, 5:10] = 255
        cv2.imwrite(str(tmp_path / "msk" / f"s{i}.png"), mask)
    data = SegmentationData(
        str(tmp_path / "img"),
        masks_dir=str(tmp_path / "msk"),
        image_size=16,
        batch_size=4,
        val_share=0.2,
        test_share=0.2,
    )
    assert (data.n_train, data.n_test, len(data.tables["val"])) == (6, 2, 2)
    assert set(data.tables["test"]["label"]) == {"fg", "empty"}  # stratified by empty / non-empty mask
    images, masks = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and masks.shape == (4, 16, 16) and set(masks.unique().tolist()) <= {0, 1}


def test_intensity_settings_reach_every_task_dataset(corpus):
    """A CT window changes CT images and leaves MR alone, in classification, segmentation and detection data."""
    lung, bone = {"ct_window": "lung"}, {"ct_window": "bone"}
    for make in (
        lambda i: ClassificationData(str(corpus), "labels.csv", image_size=32, augment=False, intensity=i),
        lambda i: SegmentationData(str(corpus), "labels.csv", image_size=32, augment=False, intensity=i),
        lambda i: DetectionData(str(corpus), split_csv="labels.csv", augment=False, intensity=i),
    ):
        a, b = make(lung).split_dataset("train"), make(bone).split_dataset("train")
        table = getattr(a, "table", None)
        modalities = list(table["modality"]) if table is not None else [a.coco.imgs[i]["modality"] for i in a.image_ids]
        ct, mr = modalities.index("CT"), modalities.index("MR")
        assert not torch.allclose(a[ct][0], b[ct][0])
        assert torch.allclose(a[mr][0], b[mr][0])
