"""The ROI cache: one Zarr v3 store of per-item ROI masks shared by `localize` (writer) and `pretrain` (reader).

Layout (all arrays have the item index as first axis; row i is manifest row i)::

    CACHE.zarr/                 group attrs: schema_version, provenance, info, mask_size, max_boxes, max_rects,
                                shard_items
      item_id   (N,)       str      pseudonymous id (data.ids.make_item_id)
      path      (N,)       str      file path relative to the corpus root
      frame     (N,)       int32    frame / slice index inside the file
      modality  (N,)       str      'CT' | 'MR' | 'XR' | ...
      size_hw   (N, 2)     int32    original image height, width
      mask      (N, S, S)  uint8    ROI, 0/1, stored at S x S regardless of aspect (nearest resize back)
      saliency  (N, S, S)  uint8    soft saliency scaled to 0..255
      boxes     (N, K, 4)  float32  SAM box prompts, xyxy normalised to [0, 1], NaN-padded
      rects     (N, R, 4)  float32  the expanded ROI's rectangles (data.roi_rects), computed at the image's native
                                    size, xyxy end-exclusive normalised to [0, 1], NaN-padded: exact pixels back
                                    at the native size (for sizes below 2**22)
      score     (N,)       float32  localizer confidence (NaN when not done)
      flags     (N,)       uint8    bit 0: empty ROI (the final mask has no pixel: blank image, nothing over
                                    the threshold, or SAM empty); bit 1: empty expanded ROI; bit 2: absent (the
                                    volume-aware rule found the prompted structure absent from the slice, ROI
                                    emptied); bit 3: the volume-aware series pass has processed the item
      presence  (N,)       float32  the slice's presence score (image-text similarity, `localize.volume`); NaN when
                                    not computed (per-slice rule, or a cache made before the array existed)
      status    (N,)       uint8    0 pending, 1 done, 2 failed
      reason    (N,)       str      failure reason ('' otherwise; a failed read names the corpus-relative path)
      patient_key, study_key, series_key (N,) str, slice_index, n_slices (N,) int32
                                    the manifest's grouping columns (`data.series`), when it had them (schema 3;
                                    a schema-2 cache gets them with `add_grouping_keys`)

`mask`, `saliency` and `rects` hold one item per chunk inside shards of `shard_items` items (read through
`data.shard_reader` without zarr's per-call overhead); every other per-item array uses chunks of `shard_items`
items. The layout, the resumable bookkeeping and the rules for parallel writers are `data.item_store`'s, shared
with the packed image store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
import zarr

from data.item_store import DONE, FAILED, PENDING, STATUS_NAMES, ItemStore
from data.provenance import ProvenanceMismatch, canonical, code_version
from data.roi_rects import expanded_rects, fill_rects

log = logging.getLogger(__name__)

__all__ = ["DONE", "FAILED", "PENDING", "STATUS_NAMES", "CacheGeometry", "ProvenanceMismatch", "RoiCache"]

SCHEMA_VERSION = 3  # 2: + `rects` (the expanded ROI); 3: + the grouping keys when the manifest has them
READABLE_VERSIONS = (2, 3)  # a version-2 cache has no grouping keys: `add_grouping_keys` migrates it
FLAG_EMPTY_ROI, FLAG_EMPTY_RECT = 1, 2
FLAG_ABSENT, FLAG_SERIES_PASS = 4, 8  # set by the volume-aware series pass (localize.volume)
RoiShape = Literal["sam", "rect"]
ROI_SHAPES: tuple[str, ...] = ("sam", "rect")


@dataclass(frozen=True)
class CacheGeometry:
    """Fixed sizes of a cache, chosen at creation: stored mask side S, box prompts K and expanded-ROI rectangles R
    per item, items per shard (the unit of work one writer owns)."""

    mask_size: int = 256
    max_boxes: int = 4
    max_rects: int = 32
    shard_items: int = 256

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if int(value) < 1:
                raise ValueError(f"cache geometry: {name} must be >= 1, got {value}")


class RoiCache(ItemStore):
    """A Zarr v3 ROI cache. Make one with `RoiCache.create`, open one with `RoiCache.open`."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        attrs = group.attrs.asdict()
        if attrs.get("kind"):
            raise ValueError(f"{path}: a {attrs['kind']} store, not a ROI cache")
        version = attrs.get("schema_version")
        if version not in READABLE_VERSIONS:
            before = " (made before the expanded ROI's rectangles were stored)" if version == 1 else ""
            raise ValueError(
                f"{path}: ROI cache schema version {version!r}{before}; this code reads version {SCHEMA_VERSION}. "
                "Write a new cache (localize run / localize import into a new path); an old one cannot be converted "
                "exactly."
            )
        self.geometry = CacheGeometry(**{f.name: attrs[f.name] for f in fields(CacheGeometry)})
        super().__init__(group, path, self.geometry.shard_items)
        self.mask_size, self.max_boxes = self.geometry.mask_size, self.geometry.max_boxes
        self.max_rects = self.geometry.max_rects
        self.provenance: dict[str, Any] = _current_keys(attrs["provenance"])
        self.info: dict[str, Any] = attrs.get("info", {})
        if not self.has_grouping_keys():
            log.warning(
                f"{path}: ROI cache without patient/study/series keys (schema {version}, or made from a manifest "
                "without them): every path counts as its own patient. Add them from a new scan of the corpus: "
                "RoiCache.open(CACHE, 'r+').add_grouping_keys(read_manifest(MANIFEST)) (docs/CORPUS.md)"
            )

    # ---------------------------------------------------------------- creation / opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        manifest: pd.DataFrame,
        provenance: Mapping[str, Any],
        *,
        geometry: CacheGeometry | None = None,
        info: Mapping[str, Any] | None = None,
        **sizes: int,
    ) -> RoiCache:
        """Create an empty store (every item pending) for `manifest`; refuses to overwrite an existing one. It is made
        under a temporary name and renamed into place (`ItemStore.building`).

        Sizes: `geometry`, or CacheGeometry's fields as keywords (mask_size=64, ...); CacheGeometry's defaults
        otherwise."""
        geometry = geometry or CacheGeometry()
        try:
            geometry = replace(geometry, **sizes)
        except TypeError as e:
            raise TypeError(f"RoiCache.create: {e}; sizes are CacheGeometry's fields") from e
        n, s, k, r, shard_items = len(manifest), *astuple(geometry)
        attrs = {
            "schema_version": SCHEMA_VERSION,
            **asdict(geometry),
            "provenance": canonical(provenance),
            "info": canonical({"code_version": code_version(), **(info or {})}),
        }
        path = Path(path)
        with cls.building(path) as tmp:  # made under a temporary name, then renamed into place
            group = cls.create_group(tmp, manifest, attrs, shard_items)
            for name in ("mask", "saliency"):
                cls.add_item_array(group, name, (s, s), "uint8", 0, shard_items)
            cls.add_item_array(group, "rects", (r, 4), "float32", np.nan, shard_items)
            rows = (shard_items,)
            group.create_array("boxes", shape=(n, k, 4), dtype="float32", chunks=(shard_items, k, 4), fill_value=np.nan)
            group.create_array("score", shape=(n,), dtype="float32", chunks=rows, fill_value=np.nan)
            group.create_array("flags", shape=(n,), dtype="uint8", chunks=rows, fill_value=0)
            group.create_array("presence", shape=(n,), dtype="float32", chunks=rows, fill_value=np.nan)
        return cls.open(path, mode="r+")

    @classmethod
    def open(
        cls,
        path: str | Path,
        mode: Literal["r", "r+"] = "r",
        provenance: Mapping[str, Any] | None = None,
    ) -> RoiCache:
        """Open a store. With `provenance`, refuse (ProvenanceMismatch) unless it equals the store's."""
        path = Path(path)
        cache = cls(cls.open_group(path, mode, "ROI cache"), path)
        if provenance is not None:
            advice = "Write to a new cache path (--cache NEW.zarr) or delete this cache to start over."
            cls.check_provenance(path, cache.provenance, provenance, "localizer configuration", advice, "cache")
        return cache

    def add_grouping_keys(self, manifest: pd.DataFrame) -> None:
        """Migrate a cache made before the grouping keys: store those of `manifest` (a new scan of the same
        corpus, same items in the same order) and mark the cache schema 3."""
        super().add_grouping_keys(manifest)
        self._group.attrs["schema_version"] = SCHEMA_VERSION

    # ---------------------------------------------------------------- bookkeeping
    def summary(self) -> dict[str, int]:
        counts = self.counts()
        done = self.status() == DONE
        flags = self._group["flags"][:]
        counts["empty_roi"] = int((done & (flags & FLAG_EMPTY_ROI > 0)).sum())
        counts["absent"] = int((done & (flags & FLAG_ABSENT > 0)).sum())
        return counts

    # ---------------------------------------------------------------- writing
    def write(
        self,
        indices: Sequence[int],
        masks: np.ndarray | Sequence[np.ndarray],
        saliency: np.ndarray | Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        scores: Sequence[float],
        flags: Sequence[int] | None = None,
        rects: Sequence[np.ndarray] | None = None,
        presence: Sequence[float] | None = None,
    ) -> None:
        """Store results for `indices` and mark them done.

        masks: per item a 2-D 0/1 (or bool) array at the item's own size, stored resized to S x S (nearest).
        saliency: per item a 2-D float array in [0, 1] or uint8 0..255, any size (bilinear).
        boxes: per item a (k, 4) xyxy array in pixels of the item's original image (k <= max_boxes).
        rects: per item the expanded ROI, (r, 4) xyxy end-exclusive pixels of the original image (r <= max_rects);
               None: `data.roi_rects.expanded_rects(mask)` (the release's rule at ratio 1.0) of each native mask.
        flags: FLAG_EMPTY_ROI, FLAG_ABSENT, FLAG_SERIES_PASS per item (FLAG_EMPTY_RECT is set here from the rectangles).
        presence: per item the presence score (`localize.volume`); None leaves the stored values.
        """
        idx = np.asarray(indices, dtype=np.int64)
        s = self.mask_size
        sizes = self._sizes()[idx]
        if rects is None:
            rects = [expanded_rects(np.asarray(m)) for m in masks]
        masks_nss = np.stack([_to_square(np.asarray(m, dtype=np.uint8), s, cv2.INTER_NEAREST_EXACT) for m in masks])
        sal_nss = np.stack([_to_square(_saliency_u8(x), s, cv2.INTER_LINEAR) for x in saliency])
        boxes_nk4 = self._normalised(idx, sizes, boxes, self.max_boxes, "boxes")
        rects_nr4 = self._normalised(idx, sizes, rects, self.max_rects, "expanded-ROI rectangles")
        flags_n = np.zeros(len(idx), np.uint8) if flags is None else np.asarray(flags, dtype=np.uint8)
        flags_n = flags_n | np.where(np.isnan(rects_nr4[:, 0, 0]), FLAG_EMPTY_RECT, 0).astype(np.uint8)
        self._put("mask", idx, masks_nss)
        self._put("saliency", idx, sal_nss)
        self._put("boxes", idx, boxes_nk4)
        self._put("rects", idx, rects_nr4)
        self._put("score", idx, np.asarray(scores, dtype=np.float32))
        self._put("flags", idx, flags_n)
        if presence is not None and "presence" in self._group:
            self._put("presence", idx, np.asarray(presence, dtype=np.float32))
        self._put("reason", idx, np.full(len(idx), "", dtype=object))
        self._put("status", idx, np.full(len(idx), DONE, dtype=np.uint8))  # last: marks the items complete

    @staticmethod
    def _normalised(
        idx: np.ndarray, sizes: np.ndarray, xyxy: Sequence[np.ndarray], capacity: int, what: str
    ) -> np.ndarray:
        """Per-item (k, 4) pixel xyxy arrays -> (n, capacity, 4) normalised to [0, 1], NaN-padded."""
        out = np.full((len(idx), capacity, 4), np.nan, dtype=np.float32)
        for row, (b, (h, w)) in enumerate(zip(xyxy, sizes, strict=True)):
            b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
            if len(b) > capacity:
                raise ValueError(f"item {idx[row]}: {len(b)} {what}, the cache holds at most {capacity}")
            out[row, : len(b)] = b / np.array([w, h, w, h], dtype=np.float64)
        return out

    # ---------------------------------------------------------------- reading
    def read_mask(self, index: int, size_hw: tuple[int, int] | None = None, shape: RoiShape = "sam") -> np.ndarray:
        """ROI of item `index` as uint8 0/1 at `size_hw` (default: the original image size).

        shape "sam": the refined mask (stored at S x S, resized nearest). "rect": the expanded ROI, each component's
        filled rectangle (`data.roi_rects`) drawn exactly at the original size, then resized nearest to `size_hw`
        (what the release's pretraining does with its `masks_expanded/` PNGs)."""
        target_hw = self._target_size(index, size_hw)
        if shape == "rect":
            native_hw = self._target_size(index, None)
            rect_hw = fill_rects(self.read_rects(index), native_hw)
            return _from_square(rect_hw, target_hw, cv2.INTER_NEAREST_EXACT)
        if shape != "sam":
            raise ValueError(f"ROI shape must be one of {ROI_SHAPES}, got {shape!r}")
        return _from_square(self._read_item("mask", index), target_hw, cv2.INTER_NEAREST_EXACT)

    def read_rects(self, index: int) -> np.ndarray:
        """The expanded ROI's rectangles of item `index`: (r, 4) int64 xyxy end-exclusive pixels of the original
        image."""
        rects_r4 = self._read_item("rects", index)
        rects_r4 = rects_r4[~np.isnan(rects_r4).any(axis=1)].astype(np.float64)
        h, w = self._sizes()[index]
        return np.rint(rects_r4 * np.array([w, h, w, h], dtype=np.float64)).astype(np.int64)

    def read_saliency(self, index: int, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """Soft saliency of item `index` as float32 in [0, 1], resized (bilinear) to `size_hw`."""
        sal_ss = self._read_item("saliency", index)
        return _from_square(sal_ss, self._target_size(index, size_hw), cv2.INTER_LINEAR).astype(np.float32) / 255.0

    def read_boxes(self, index: int) -> np.ndarray:
        """SAM box prompts of item `index`, (k, 4) xyxy in pixels of the original image."""
        boxes_k4 = self._group["boxes"][index]
        boxes_k4 = boxes_k4[~np.isnan(boxes_k4).any(axis=1)]
        h, w = self._sizes()[index]
        return boxes_k4 * np.array([w, h, w, h], dtype=np.float32)

    def read_record(self, index: int) -> dict[str, Any]:
        """Everything known about item `index` except the pixel arrays."""
        g = self._group
        flags = int(g["flags"][index])
        return {
            "index": int(index),
            "item_id": str(g["item_id"][index]),
            "modality": str(g["modality"][index]),
            "status": STATUS_NAMES[int(g["status"][index])],
            "empty_roi": bool(flags & FLAG_EMPTY_ROI),
            "empty_rect": bool(flags & FLAG_EMPTY_RECT),
            "absent": bool(flags & FLAG_ABSENT),
            "score": float(g["score"][index]),
            "reason": str(g["reason"][index]),
            "size_hw": tuple(int(v) for v in self._sizes()[index]),
        }

    def table(self) -> pd.DataFrame:
        """Per-item bookkeeping (no pixels): manifest columns + status, flags, score, reason."""
        g = self._group
        df = self.manifest()
        df["status"] = pd.Categorical.from_codes(g["status"][:], categories=list(STATUS_NAMES.values()))
        flags = g["flags"][:]
        df["empty_roi"], df["empty_rect"] = (flags & FLAG_EMPTY_ROI) > 0, (flags & FLAG_EMPTY_RECT) > 0
        df["absent"] = (flags & FLAG_ABSENT) > 0
        df["series_pass"] = (flags & FLAG_SERIES_PASS) > 0
        df["presence"] = self.presence()
        df["score"] = g["score"][:]
        df["reason"] = g["reason"][:]
        return df

    def presence(self) -> np.ndarray:
        """Every item's presence score (NaN where none was computed, or the cache predates the array)."""
        if "presence" not in self._group:
            return np.full(self.n_items, np.nan, dtype=np.float32)
        return self._group["presence"][:]

    def _target_size(self, index: int, size_hw: tuple[int, int] | None) -> tuple[int, int]:
        if size_hw is not None:
            return int(size_hw[0]), int(size_hw[1])
        h, w = self._sizes()[index]
        return int(h), int(w)

    def __repr__(self) -> str:
        return f"RoiCache({str(self.path)!r}, items={self.n_items}, mask_size={self.mask_size})"


def _saliency_u8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return (np.clip(np.nan_to_num(x.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_square(img_hw: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    if img_hw.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {img_hw.shape}")
    if img_hw.shape == (size, size):
        return img_hw
    return cv2.resize(img_hw, (size, size), interpolation=interpolation)


def _from_square(img_ss: np.ndarray, size_hw: tuple[int, int], interpolation: int) -> np.ndarray:
    if img_ss.shape == size_hw:
        return img_ss.copy()
    return cv2.resize(img_ss, (size_hw[1], size_hw[0]), interpolation=interpolation)


def _current_keys(provenance: dict[str, Any]) -> dict[str, Any]:
    """A provenance with today's key names: caches written before the code version moved to `info` recorded the
    localizer's method version as `code_version` '0.2.0' (now `localizer_version` 2), so they stay resumable."""
    legacy = provenance.get("code_version")
    if isinstance(legacy, str) and "localizer_version" not in provenance and "clip" in provenance:
        provenance = {k: v for k, v in provenance.items() if k != "code_version"}
        provenance["localizer_version"] = int(legacy.split(".")[1]) if legacy.startswith("0.") else legacy
    return provenance
