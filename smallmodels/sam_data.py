"""Box-prompt training data for the small SAM: the objects of synthetic sample corpora, with SAM's box noise.

An object is a region a box prompt should turn into a mask: each 8-connected component of an item's truth mask
(a tumour; a lung), the whole truth when it has several components (both lungs: one box around both), and each
COCO lesion instance (nodule, opacity) that is not already one of those. Images are read as `localize run` reads
them (`data.readers.load_image` + the same intensity rule) and resized for SAM as `SamBoxPrompter` does.

Box prompt = the object's prompt box (`localize.components.prompt_boxes`, the localizer's own rule), each
coordinate moved by Gaussian noise of ``box_noise`` x the box's side (SAM: 10 %, at most 20 px), clipped to the
image. The draw for sample i comes from a generator seeded by (seed, i) only: the data do not depend on workers,
order of access or earlier draws.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import DataLoader, Dataset

from data.intensity import IntensityConfig
from data.masks import read_mask_image
from data.readers import load_image
from localize.components import prompt_boxes

MAX_NOISE_PX = 20.0  # SAM's cap on the box noise
FOREGROUND = 0.05  # intensity above which a pixel is body, not air (the sample's background is ~0)


@dataclass(frozen=True)
class ImageObjects:
    """One image (float32 [0, 1], (H, W)) and the masks (bool (H, W)) of the objects in it; an image without
    objects (a lesion-free slice, with ``negatives``) has one all-False target, prompted by a box around the
    image's foreground: SAM learns that such a box holds nothing to segment."""

    image_hw: np.ndarray
    masks: tuple[np.ndarray, ...]
    modality: str = ""
    n_foreground: int = 0  # the last n objects are prompted by the foreground's box, whatever their mask

    def box_mask(self, k: int) -> np.ndarray:
        """What the prompt box of object k surrounds: the object, or the foreground for an empty target and for
        the last ``n_foreground`` objects."""
        if self.masks[k].any() and k < len(self.masks) - self.n_foreground:
            return self.masks[k]
        return self.image_hw > FOREGROUND


def object_masks(truth_hw: np.ndarray, lesions: list[np.ndarray]) -> list[np.ndarray]:
    """The objects of one item: truth components, the whole truth if it has several, then new lesions."""
    count, labels_hw = cv2.connectedComponents(truth_hw.astype(np.uint8), connectivity=8)
    masks = [labels_hw == k for k in range(1, count)]
    if count > 2:
        masks.append(truth_hw.astype(bool))
    for lesion in lesions:
        if lesion.any() and not any(np.array_equal(lesion, m) for m in masks):
            masks.append(lesion)
    return masks


def lesion_masks(coco: dict[str, Any]) -> dict[str, list[np.ndarray]]:
    """item_id -> the COCO instance masks of its lesions (polygons filled at the image's size)."""
    sizes = {img["id"]: (img["item_id"], img["height"], img["width"]) for img in coco["images"]}
    found: dict[str, list[np.ndarray]] = {}
    for ann in coco["annotations"]:
        item_id, height, width = sizes[ann["image_id"]]
        mask_hw = np.zeros((height, width), np.uint8)
        for polygon in ann["segmentation"]:
            cv2.fillPoly(mask_hw, [np.round(np.asarray(polygon).reshape(-1, 2)).astype(np.int32)], 1)
        found.setdefault(item_id, []).append(mask_hw.astype(bool))
    return found


def read_corpus_objects(
    corpus: str | Path,
    intensity: IntensityConfig | None = None,
    lesions: bool = False,
    negatives: bool = False,
    foreground_boxes: bool = False,
) -> list[ImageObjects]:
    """Every item of a sample corpus (labels.csv, truth/, coco/instances.json) that holds at least one object;
    COCO lesions are objects only with ``lesions`` (the localizer's target is the truth: the lungs for CT / XR).
    ``foreground_boxes``: every item with a truth also gets the whole truth as an object prompted by the box around
    the image's foreground (a saliency map that spans the image gives the localizer that box); lesion-free slices
    are left to ``negatives`` (trained on as well, they taught SAM to answer "nothing" about as often with a tumour
    as without, docs/MODELS.md)."""
    corpus = Path(corpus)
    labels_path = corpus / "labels.csv"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: not a sample corpus (python -m data sample writes labels.csv)")
    labels = pd.read_csv(labels_path, dtype={"item_id": str, "path": str})
    instances = lesion_masks(json.loads((corpus / "coco" / "instances.json").read_text(encoding="utf-8")))
    found = []
    for row in labels.itertuples():
        truth_hw = read_mask_image(corpus / "truth" / f"{row.item_id}.png")
        masks = object_masks(truth_hw, instances.get(row.item_id, []) if lesions else [])
        if negatives and not masks:
            masks = [np.zeros(truth_hw.shape, bool)]
        if foreground_boxes and truth_hw.any():
            masks.append(truth_hw.astype(bool))
        if masks:
            image_hw = load_image(corpus, row.path, int(row.frame), row.modality, intensity or IntensityConfig())
            image_hw = np.asarray(image_hw, np.float32)
            found.append(ImageObjects(image_hw, tuple(masks), row.modality, int(foreground_boxes and truth_hw.any())))
    return found


def noisy_box(mask_hw: np.ndarray, noise: float, rng: np.random.Generator, grow: float = 0.0) -> np.ndarray:
    """The prompt box (xyxy pixels) around all of ``mask_hw``, each coordinate moved by N(0, noise x side) capped
    at MAX_NOISE_PX, then each edge pushed outwards by U(0, grow) x the image's side along it, clipped to the image
    and kept at least one pixel wide."""
    boxes_k4 = prompt_boxes(mask_hw)
    box = np.array([*boxes_k4[:, :2].min(0), *boxes_k4[:, 2:].max(0)], dtype=np.float64)
    side = np.tile(box[2:] - box[:2], 2)  # (w, h, w, h)
    box += np.clip(rng.normal(0.0, 1.0, 4) * noise * np.maximum(side, 1.0), -MAX_NOISE_PX, MAX_NOISE_PX)
    image_wh = np.array(mask_hw.shape[::-1], dtype=np.float64)
    box += rng.uniform(0.0, grow, 4) * np.tile(image_wh, 2) * np.array([-1, -1, 1, 1])
    height, width = mask_hw.shape
    box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], dtype=np.float32)


def balanced_pairs(images: list[ImageObjects]) -> list[tuple[int, int]]:
    """Every (image, object) pair, each modality's pairs repeated so that every modality has about as many as the
    one with the most (whole repeats: round(most / count))."""
    by_modality: dict[str, list[tuple[int, int]]] = {}
    for i, item in enumerate(images):
        by_modality.setdefault(item.modality, []).extend((i, k) for k in range(len(item.masks)))
    most = max(len(pairs) for pairs in by_modality.values())
    return [pair for pairs in by_modality.values() for pair in pairs * max(1, round(most / len(pairs)))]


class BoxPromptItems(Dataset):
    """``length`` samples cycling through every (image, object) pair (``balance``: `balanced_pairs`) in a seeded
    order; sample i is a dict of
    ``image_3hw`` (0-255 RGB resized so its longest side is ``img_size``, as SAM's predictor feeds it),
    ``box_4`` (noisy, original pixels), ``truth_hw`` (float, original size)."""

    def __init__(
        self,
        images: list[ImageObjects],
        img_size: int,
        length: int,
        box_noise: float,
        seed: int,
        box_grow: float = 0.0,
        balance: bool = False,
    ) -> None:
        pairs = [(i, k) for i, item in enumerate(images) for k in range(len(item.masks))]
        self.pairs = balanced_pairs(images) if balance and pairs else pairs
        if not self.pairs:
            raise ValueError("no objects to train SAM on (the corpus has no truth masks)")
        self.images, self.length, self.box_noise, self.seed, self.box_grow = images, length, box_noise, seed, box_grow
        self.resize = ResizeLongestSide(img_size)
        self._prepared: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def _prepared_image(self, i: int) -> torch.Tensor:
        if i not in self._prepared:  # decoded once; resizing is deterministic
            img_hw = torch.from_numpy(self.images[i].image_hw) * 255.0
            self._prepared[i] = self.resize.apply_image_torch(img_hw.expand(1, 3, *img_hw.shape).contiguous())[0]
        return self._prepared[i]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        cycle, position = divmod(index, len(self.pairs))
        order = np.random.default_rng([self.seed, 0, cycle]).permutation(len(self.pairs))
        i, k = self.pairs[order[position]]
        mask_hw = self.images[i].masks[k]
        box_4 = noisy_box(
            self.images[i].box_mask(k), self.box_noise, np.random.default_rng([self.seed, 1, index]), self.box_grow
        )
        return {
            "image_3hw": self._prepared_image(i),
            "box_4": torch.from_numpy(box_4),
            "truth_hw": torch.from_numpy(mask_hw.astype(np.float32)),
        }


def collate_lists(samples: list[dict[str, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Images and masks differ in size: a batch is a dict of lists."""
    return {key: [s[key] for s in samples] for key in samples[0]}


class BoxPromptData(pl.LightningDataModule):
    """Objects of the sample corpus at ``corpus`` as box-prompt samples for `SamBoxTraining`.

    Args:
        corpus: a folder written by `python -m data sample` (labels.csv, truth/, coco/).
        img_size: SAM's input side (the image encoder's ``img_size``); linked to the model by the CLI.
        steps, batch_size: samples = steps x batch_size, one pass (the object order cycles, box noise is new).
        box_noise: box-coordinate noise as a fraction of the box side (SAM's 0.1).
        box_grow: each box edge also moves outwards by up to this fraction of the image side (SAM: 0). The
            localizer's boxes come from coarse saliency maps and often hold more than the object.
        negatives: images whose truth is empty (lesion-free MR) become one empty target each (see ImageObjects).
        lesions: also train on each COCO lesion instance (nodules, opacities), not only the truth's objects.
        foreground_boxes: also the whole truth of every image, prompted by the foreground's box (see
            `read_corpus_objects`).
        balance: each modality's objects drawn about equally often (`balanced_pairs`); otherwise in proportion to
            their number (the lungs outnumber the tumours).
        intensity: `data.intensity.IntensityConfig` fields, as the localize run's `intensity`.
        seed: seeds the object order and the box noise.
    """

    def __init__(
        self,
        corpus: str,
        img_size: int = 128,
        steps: int = 500,
        batch_size: int = 16,
        box_noise: float = 0.1,
        box_grow: float = 0.0,
        lesions: bool = False,
        negatives: bool = False,
        foreground_boxes: bool = False,
        balance: bool = False,
        intensity: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.items: BoxPromptItems | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.items is None:
            hp = self.hparams
            images = read_corpus_objects(
                hp.corpus, IntensityConfig(**(hp.intensity or {})), hp.lesions, hp.negatives, hp.foreground_boxes
            )
            self.items = BoxPromptItems(
                images, hp.img_size, hp.steps * hp.batch_size, hp.box_noise, hp.seed, hp.box_grow, hp.balance
            )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_lists)
