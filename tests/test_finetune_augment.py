"""Augmentations move boxes and masks with the image: hand-made asymmetric scenes whose object is the only bright
thing, so after any flip / crop / resize the box and the mask must still sit on the bright pixels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from finetune.data import CocoInstances, load_coco
from finetune.detect import DetectionData
from finetune.maskrcnn import MultiScaleTransform
from finetune.segment import SegmentationData

H, W = 24, 40
X0, Y0, X1, Y1 = 4, 6, 14, 18  # the bright object: left half only, so a horizontal flip moves it


@pytest.fixture
def coco_scene(tmp_path):
    """One 24x40 image, dark except the object; one COCO instance (box + polygon mask) on it."""
    image = np.zeros((H, W), np.uint8)
    image[Y0:Y1, X0:X1] = 255
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    polygon = [X0, Y0, X1, Y0, X1, Y1, X0, Y1]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [X0, Y0, X1 - X0, Y1 - Y0], "area": 120, "iscrowd": 0}
    dataset = {
        "images": [{"id": 1, "file_name": "scene.png", "height": H, "width": W, "split": "train"}],
        "annotations": [dict(ann, segmentation=[polygon])],
        "categories": [{"id": 1, "name": "lesion"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(dataset))
    return tmp_path


def _box_on_bright_pixels(image_chw: torch.Tensor, target: dict) -> None:
    bright_hw = image_chw[0] > 0.5
    ys, xs = torch.nonzero(bright_hw, as_tuple=True)
    expected = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    assert target["boxes"][0].tolist() == pytest.approx(expected, abs=1e-4)
    assert torch.equal(target["masks"][0].bool(), bright_hw)


def test_horizontal_flip_moves_box_and_mask_with_the_image(coco_scene):
    coco = load_coco(coco_scene / "coco.json")
    flipped_image, target = CocoInstances(coco_scene, coco, [1], v2.RandomHorizontalFlip(p=1.0))[0]
    # the object's x-range [4, 14) mirrors to [40 - 14, 40 - 4) = [26, 36)
    assert target["boxes"][0].tolist() == pytest.approx([W - X1, Y0, W - X0, Y1])
    assert flipped_image[0, Y0:Y1, W - X1 : W - X0].min() > 0.5 and flipped_image[0, :, :X1].max() < 0.5
    _box_on_bright_pixels(flipped_image, target)


def test_detection_training_pipeline_keeps_boxes_on_the_object(coco_scene):
    """DetectionData's own training transform (a random flip): flipped or not, box and mask follow the image."""
    data = DetectionData(str(coco_scene), "coco.json", split_csv=None, augment=True)
    dataset = data.split_dataset("train")
    torch.manual_seed(0)
    lefts = set()
    for _ in range(12):
        image, target = dataset[0]
        _box_on_bright_pixels(image, target)
        lefts.add(float(target["boxes"][0, 0]))
    assert lefts == {float(X0), float(W - X1)}  # both orientations were drawn


def test_mask_rcnn_resize_scales_boxes_and_masks_with_the_image():
    """MultiScaleTransform: training draws the shorter side from train_sizes, evaluation uses test_size; boxes are
    scaled by the same factor as the image (24 -> 48: x2)."""
    transform = MultiScaleTransform(train_sizes=(36, 60), test_size=48, max_size=1000)
    image = torch.zeros(3, H, W)
    target = {"boxes": torch.tensor([[X0, Y0, X1, Y1]], dtype=torch.float32), "labels": torch.tensor([1])}
    target["masks"] = torch.zeros(1, H, W, dtype=torch.uint8)
    transform.eval()
    batch, (out,) = transform([image], [dict(target)])
    assert batch.image_sizes[0] == (48, 80)
    assert out["boxes"][0].tolist() == pytest.approx([2 * X0, 2 * Y0, 2 * X1, 2 * Y1])
    assert out["masks"].shape[-2:] == (48, 80)
    transform.train()
    torch.manual_seed(0)
    shorter = {transform([image], [dict(target)])[0].image_sizes[0][0] for _ in range(20)}
    assert shorter == {36, 60}


def test_segmentation_training_crop_and_flip_move_the_mask_with_the_image(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    image = np.zeros((48, 48), np.uint8)
    image[8:40, 4:20] = 255  # left-side object
    for i in range(4):
        cv2.imwrite(str(tmp_path / "img" / f"s{i}.png"), image)
        cv2.imwrite(str(tmp_path / "msk" / f"s{i}.png"), image)
    data = SegmentationData(
        str(tmp_path / "img"), masks_dir=str(tmp_path / "msk"), image_size=32, val_share=0.25, test_share=0.25
    )
    dataset = data.split_dataset("train")
    torch.manual_seed(0)
    for _ in range(12):
        image_chw, mask_hw = dataset[0]
        bright = image_chw[0] > 0  # normalised: the object is far above 0, the background far below
        mask = mask_hw.bool()
        iou = (bright & mask).sum() / (bright | mask).sum()
        assert iou > 0.7, iou  # seams of the interpolation differ (IoU 0.8 at worst); a mask left unflipped scores 0


def test_segmentation_evaluation_keeps_masks_at_the_images_own_size(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for i, (h, w) in enumerate([(20, 36), (28, 16), (20, 36), (28, 16)]):
        mask = np.zeros((h, w), np.uint8)
        mask[2:6, 3:9] = 255
        cv2.imwrite(str(tmp_path / "img" / f"s{i}.png"), mask)
        cv2.imwrite(str(tmp_path / "msk" / f"s{i}.png"), mask)
    data = SegmentationData(
        str(tmp_path / "img"),
        masks_dir=str(tmp_path / "msk"),
        image_size=16,
        batch_size=4,
        val_share=0.0,
        test_share=0.5,
    )
    images, masks = next(iter(data.test_dataloader()))
    assert images.shape == (2, 3, 16, 16)  # the network sees the resized image
    originals = [cv2.imread(str(tmp_path / "img" / p)).shape[:2] for p in data.tables["test"]["path"]]
    assert [tuple(m.shape) for m in masks] == originals  # scored against the masks at their own size
    assert all(int(m.sum()) == 24 for m in masks)
