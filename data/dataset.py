"""Torch datasets over a corpus, its manifest and (optionally) its ROI cache and packed image store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from data.intensity import IntensityConfig
from data.intensity_follow import require_same_intensity
from data.item_store import FAILED, PENDING
from data.manifest import manifest_sha256, read_manifest
from data.packed_store import PackedStore
from data.readers import load_image
from data.roi_cache import DONE, ROI_SHAPES, RoiCache, RoiShape
from data.slice_neighbours import InputChannels, check_input_channels, neighbour_rows

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class RoiDataset(Dataset):
    """Images of a corpus with their cached ROI masks.

    Item i is a dict: `image` (tv_tensors.Image float32 (C, H, W) in [0, 1], uint8 with `integer_images`; grey
    images repeated to `channels`), `roi` (tv_tensors.Mask uint8 (1, H, W), 0/1; zeros without a cache), `item_id`
    (str) and `index` (int, the item's row in the manifest / cache). `transform` is a torchvision v2 transform called
    as `transform(image, roi)`, so geometric augmentations move the mask with the image.
    `roi_shape`: "sam" (the refined mask) or "rect" (the expanded ROI, each component's filled rectangle, what the
    MWM authors pretrain on; `RoiCache.read_mask`). Grey images are repeated to `channels` after `transform`
    (geometric transforms act alike on every copy, at a third of the cost).

    `packed`: a packed image store (`data.packed_store`) of the same items; images are then read from it at their
    stored size (the ROI drawn at that size) instead of decoded from the corpus. Its intensity rules must be
    `intensity`'s (when given), its items the manifest's, and the selected items packed; failed ones are left out.
    A square store's images are already at the input size while the ROI is drawn at the item's native size, as
    from the files, then taken to the image's size as torch's nearest resize would (`nearest_sources`): `transform`
    must resize both to that size (pretraining's `augment: resize`), which is then a no-op for both, and the ROI is
    the raw path's.

    `integer_images` (with a uint8 packed store): images leave as stored, uint8 (C, H, W), a quarter of the bytes
    through the loader's shared memory; `unit_float` turns a batch of them into the float form on the training
    device, equal to what this dataset would have given. Only for a `transform` that does not resample the image
    (a square store at the input size): a uint8 resize would round.

    `input_channels`: "2d" (the release: a grey image repeated to `channels`) or "2.5d" (`data.slice_neighbours`:
    the grey slices z-1, z, z+1 of the item's series as its three channels, the ROI that of slice z; RGB items and
    items without a series stay as "2d" gives them). Needs `channels` 3.

    The manifest defaults to the cache's own (else the store's); row i of the manifest must be item i of the cache
    and of the store.
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
        packed: PackedStore | str | Path | None = None,
        integer_images: bool = False,
        input_channels: InputChannels = "2d",
    ) -> None:
        if check_input_channels(input_channels) == "2.5d" and channels != 3:
            raise ValueError(
                f"input_channels '2.5d' feeds three slices as the channels: channels must be 3, not {channels}"
            )
        if roi_shape not in ROI_SHAPES:
            raise ValueError(f"roi_shape must be one of {ROI_SHAPES}, got {roi_shape!r}")
        self.roi_shape = roi_shape
        self.corpus = Path(corpus)
        self.cache = RoiCache.open(cache) if isinstance(cache, str | Path) else cache
        self.packed = PackedStore.open(packed) if isinstance(packed, str | Path) else packed
        if integer_images and (self.packed is None or self.packed.dtype != "uint8" or channels == 1):
            raise ValueError("integer_images needs a packed store of uint8 images and channels 3 (no grey conversion)")
        self.integer_images = integer_images
        if manifest is None:
            if self.cache is None and self.packed is None:
                raise ValueError("RoiDataset needs a manifest, a cache or a packed store")
            manifest = (self.cache or self.packed).manifest()
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
        if self.packed is not None:
            keep &= _packed_items(self.manifest, self.packed, intensity, keep)
        self.indices = np.flatnonzero(keep)
        self.transform = transform
        self.intensity = intensity
        self.channels = channels
        # plain arrays: a pandas row lookup per item costs more than reading a packed image
        self._paths, self._frames = self.manifest["path"].to_numpy(), self.manifest["frame"].to_numpy()
        self._modalities, self._ids = self.manifest["modality"].to_numpy(), self.manifest["item_id"].to_numpy()
        self._native_hw = self.manifest[["height", "width"]].to_numpy()
        self._roi_native = self.packed is not None and self.packed.square is not None
        self.input_channels = input_channels
        self._neighbours = None
        if input_channels == "2.5d":  # slices a store failed to pack are no one's neighbour
            usable = None if self.packed is None else self.packed.status() == DONE
            self._neighbours = neighbour_rows(self.manifest, usable)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = int(self.indices[i])
        image_chw = self._image_chw(index)
        h, w = self._native_hw[index] if self._roi_native else image_chw.shape[-2:]
        if self.cache is not None:
            roi_hw = self.cache.read_mask(index, (int(h), int(w)), self.roi_shape)
            if self._roi_native:  # as the transform's nearest resize to the image's size would: it is then a no-op
                rows, cols = (nearest_sources(n, m) for n, m in zip(roi_hw.shape, image_chw.shape[-2:], strict=True))
                roi_hw = roi_hw[rows][:, cols]
            roi_hw = torch.from_numpy(roi_hw)
        else:
            roi_hw = torch.zeros((int(h), int(w)), dtype=torch.uint8)
        image, roi = tv_tensors.Image(image_chw), tv_tensors.Mask(roi_hw[None])
        if self.transform is not None:
            image, roi = self.transform(image, roi)
        if image.shape[0] == 1 and self.channels != 1:
            image = tv_tensors.Image(image.expand(self.channels, -1, -1))  # a view: the collate copies it once
        return {"image": image, "roi": roi, "item_id": str(self._ids[index]), "index": index}

    def _image_chw(self, index: int) -> torch.Tensor:
        """The item's image, float32 (1 or 3, H, W) in [0, 1]: grey stays one channel (three neighbouring slices with
        2.5-D input), RGB becomes grey when `channels` is 1."""
        x = self._pixels(index)
        if x.ndim == 3:  # RGB, (H, W, 3)
            x = x.permute(2, 0, 1)
        elif self._neighbours is not None:  # grey with 2.5-D input: slices z-1, z, z+1
            x = torch.stack([x if j == index else self._neighbour(int(j), x) for j in self._neighbours[index]])
        else:
            x = x[None]
        if x.shape[0] == 3 and self.channels == 1:  # RGB -> grey, ITU-R 601 luma
            return (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        if x.shape[0] not in (1, self.channels):
            raise ValueError(f"cannot turn a {x.shape[0]}-channel image into {self.channels} channels")
        return x.contiguous()

    def _pixels(self, index: int) -> torch.Tensor:
        """Item `index` as read: (H, W) or (H, W, 3); float32 in [0, 1], or as stored with `integer_images`."""
        if self.packed is not None:
            x = torch.from_numpy(self.packed.read_pixels(index))
            return x if self.integer_images else unit_float(x)
        path, frame, modality = self._paths[index], int(self._frames[index]), self._modalities[index]
        return torch.from_numpy(load_image(self.corpus, path, frame, modality, self.intensity))

    def _neighbour(self, index: int, centre_hw: torch.Tensor) -> torch.Tensor:
        """Slice `index` next to a grey item `centre_hw`; the centre itself where the two do not stack (another
        stored size or an RGB image in the series)."""
        x = self._pixels(index)
        return x if x.shape == centre_hw.shape else centre_hw


def nearest_sources(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index of torch's "nearest" resize (torchvision's for masks), computed as its CPU
    kernel does: min(floor(i * float32(in / out)), in - 1) in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale), in_size - 1).astype(np.intp)


def unit_float(image: torch.Tensor) -> torch.Tensor:
    """Images (any shape) in [0, 1] as float32: an integer dtype is divided by its largest value (a packed store's
    scale), a float one is returned as it is. `RoiDataset` batches of `integer_images` go through it on the device."""
    if image.is_floating_point():
        return image
    return image.float().div_(float(torch.iinfo(image.dtype).max))


def _packed_items(
    manifest: pd.DataFrame, packed: PackedStore, intensity: IntensityConfig | None, selected: np.ndarray
) -> np.ndarray:
    """Which items the packed store can serve (its failed items are left out); refuses a store of other items,
    other intensity rules, or with selected items still pending."""
    if packed.manifest_sha256 != manifest_sha256(manifest):
        raise ValueError(f"{packed.path}: packed from other items than this manifest's (different corpus or scan?)")
    if intensity is not None:
        require_same_intensity(intensity, packed.intensity, str(packed.path))
    status = packed.status()
    pending = int((selected & (status == PENDING)).sum())
    if pending:
        raise ValueError(
            f"{packed.path}: {pending} selected items are not packed yet; finish it with `python -m data pack`"
        )
    return status != FAILED


def _check_same_items(manifest: pd.DataFrame, cache: RoiCache) -> None:
    if len(manifest) != cache.n_items:
        raise ValueError(f"{cache.path}: cache has {cache.n_items} items, the manifest {len(manifest)}")
    cached_ids = cache.manifest()["item_id"].to_numpy()
    if not np.array_equal(cached_ids, manifest["item_id"].to_numpy().astype(str)):
        raise ValueError(f"{cache.path}: the manifest's items differ from the cache's (different corpus or scan?)")
