"""Torch datasets over a corpus, its manifest and (optionally) its ROI cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from data.intensity import IntensityConfig
from data.manifest import read_manifest
from data.readers import load_image
from data.roi_cache import DONE, ROI_SHAPES, RoiCache, RoiShape

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class RoiDataset(Dataset):
    """Images of a corpus with their cached ROI masks.

    Item i is a dict: `image` (tv_tensors.Image float32 (C, H, W) in [0, 1]; grey images repeated to
    `channels`), `roi` (tv_tensors.Mask uint8 (1, H, W), 0/1; zeros without a cache), `item_id` (str) and
    `index` (int, the item's row in the manifest / cache). `transform` is a torchvision v2 transform called
    as `transform(image, roi)`, so geometric augmentations move the mask with the image.
    `roi_shape`: "sam" (the refined mask) or "rect" (the expanded ROI, each component's filled rectangle, what the
    MWM authors pretrain on; `RoiCache.read_mask`).

    The manifest defaults to the cache's own; row i of the manifest must be item i of the cache.
    """

    def __init__(
        self,
        corpus: str | Path,
        manifest: pd.DataFrame | str | Path | None = None,
        cache: RoiCache | str | Path | None = None,
        transform: Transform | None = None,
        intensity: IntensityConfig | None = None,
        only_done: bool = True,
        modalities: Sequence[str] | None = None,
        channels: int = 3,
        roi_shape: RoiShape = "sam",
    ) -> None:
        if roi_shape not in ROI_SHAPES:
            raise ValueError(f"roi_shape must be one of {ROI_SHAPES}, got {roi_shape!r}")
        self.roi_shape = roi_shape
        self.corpus = Path(corpus)
        self.cache = RoiCache.open(cache) if isinstance(cache, str | Path) else cache
        if manifest is None:
            if self.cache is None:
                raise ValueError("RoiDataset needs a manifest or a cache")
            manifest = self.cache.manifest()
        elif isinstance(manifest, str | Path):
            manifest = read_manifest(manifest)
        self.manifest = manifest.reset_index(drop=True)
        if self.cache is not None:
            _check_same_items(self.manifest, self.cache)
        keep = np.ones(len(self.manifest), dtype=bool)
        if self.cache is not None and only_done:
            keep &= self.cache.status() == DONE
        if modalities is not None:
            keep &= self.manifest["modality"].isin(list(modalities)).to_numpy()
        self.indices = np.flatnonzero(keep)
        self.transform = transform
        self.intensity = intensity
        self.channels = channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = int(self.indices[i])
        row = self.manifest.iloc[index]
        pixels = load_image(self.corpus, row["path"], int(row["frame"]), row["modality"], self.intensity)
        image_chw = _to_chw(pixels, self.channels)
        h, w = image_chw.shape[-2:]
        if self.cache is not None:
            roi_hw = torch.from_numpy(self.cache.read_mask(index, (h, w), self.roi_shape))
        else:
            roi_hw = torch.zeros((h, w), dtype=torch.uint8)
        image, roi = tv_tensors.Image(image_chw), tv_tensors.Mask(roi_hw[None])
        if self.transform is not None:
            image, roi = self.transform(image, roi)
        return {"image": image, "roi": roi, "item_id": str(row["item_id"]), "index": index}


def _to_chw(pixels: np.ndarray, channels: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] == channels:
        return x
    if x.shape[0] == 1:
        return x.expand(channels, -1, -1).contiguous()
    if channels == 1:  # RGB -> grey, ITU-R 601 luma
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (x * weights).sum(0, keepdim=True)
    raise ValueError(f"cannot turn a {x.shape[0]}-channel image into {channels} channels")


def _check_same_items(manifest: pd.DataFrame, cache: RoiCache) -> None:
    if len(manifest) != cache.n_items:
        raise ValueError(f"{cache.path}: cache has {cache.n_items} items, the manifest {len(manifest)}")
    cached_ids = cache.manifest()["item_id"].to_numpy()
    if not np.array_equal(cached_ids, manifest["item_id"].to_numpy().astype(str)):
        raise ValueError(f"{cache.path}: the manifest's items differ from the cache's (different corpus or scan?)")
