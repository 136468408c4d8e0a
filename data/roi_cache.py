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
      flags     (N,)       uint8    bit 0: empty ROI (the final mask has no pixel); bit 1: empty expanded ROI
      status    (N,)       uint8    0 pending, 1 done, 2 failed
      reason    (N,)       str      failure reason ('' otherwise)

`mask`, `saliency` and `rects` hold one item per chunk inside shards of `shard_items` items (read through
`data.shard_reader` without zarr's per-call overhead); every other per-item
array uses chunks of `shard_items` items. A unit of work therefore owns whole files: two writers on
distinct shards never touch the same file. Writes are atomic per file (zarr's LocalStore writes a
temporary file and renames it), and `status` is written last, so an interrupted write leaves its items
pending and a re-run redoes exactly them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import ZstdCodec

from data.provenance import ProvenanceMismatch, canonical, diff_provenance
from data.roi_rects import expanded_rects, fill_rects
from data.shard_reader import ShardReader

SCHEMA_VERSION = 2  # 2: + `rects` (the expanded ROI)
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
FLAG_EMPTY_ROI, FLAG_EMPTY_RECT = 1, 2
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


_MANIFEST_COLUMNS = ("item_id", "path", "frame", "modality", "height", "width")


class RoiCache:
    """A Zarr v3 ROI cache. Make one with `RoiCache.create`, open one with `RoiCache.open`."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._group = group
        self.path = path
        attrs = group.attrs.asdict()
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            before = " (made before the expanded ROI's rectangles were stored)" if version == 1 else ""
            raise ValueError(
                f"{path}: ROI cache schema version {version!r}{before}; this code reads version {SCHEMA_VERSION}. "
                "Write a new cache (localize run / localize import into a new path); an old one cannot be converted "
                "exactly."
            )
        self.geometry = CacheGeometry(**{f.name: attrs[f.name] for f in fields(CacheGeometry)})
        self.mask_size, self.max_boxes = self.geometry.mask_size, self.geometry.max_boxes
        self.max_rects, self.shard_items = self.geometry.max_rects, self.geometry.shard_items
        self.provenance: dict[str, Any] = attrs["provenance"]
        self.info: dict[str, Any] = attrs.get("info", {})
        self._mask = group["mask"]
        self.n_items: int = self._mask.shape[0]
        self._readers: dict[str, ShardReader | None] = {}
        self._size_hw: np.ndarray | None = None

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
        """Create an empty store (every item pending) for `manifest`; refuses to overwrite an existing one.

        Sizes: `geometry`, or CacheGeometry's fields as keywords (mask_size=64, ...); CacheGeometry's defaults
        otherwise."""
        geometry = geometry or CacheGeometry()
        try:
            geometry = replace(geometry, **sizes)
        except TypeError as e:
            raise TypeError(f"RoiCache.create: {e}; sizes are CacheGeometry's fields") from e
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path}: already exists; open it with RoiCache.open or choose another path")
        missing = [c for c in _MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"manifest lacks columns {missing}")
        n, s, k, r, shard_items = len(manifest), *astuple(geometry)
        if n == 0:
            raise ValueError("manifest is empty: nothing to cache")
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        group.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                **asdict(geometry),
                "provenance": canonical(provenance),
                "info": canonical(info or {}),
            }
        )
        rows = (shard_items,)
        zstd = [ZstdCodec(level=3)]
        for name in ("mask", "saliency"):
            group.create_array(
                name,
                shape=(n, s, s),
                dtype="uint8",
                chunks=(1, s, s),
                shards=(shard_items, s, s),
                compressors=zstd,
                fill_value=0,
            )
        group.create_array("boxes", shape=(n, k, 4), dtype="float32", chunks=(shard_items, k, 4), fill_value=np.nan)
        group.create_array(
            "rects",
            shape=(n, r, 4),
            dtype="float32",
            chunks=(1, r, 4),
            shards=(shard_items, r, 4),
            compressors=zstd,
            fill_value=np.nan,
        )
        group.create_array("score", shape=(n,), dtype="float32", chunks=rows, fill_value=np.nan)
        group.create_array("flags", shape=(n,), dtype="uint8", chunks=rows, fill_value=0)
        group.create_array("status", shape=(n,), dtype="uint8", chunks=rows, fill_value=PENDING)
        group.create_array("reason", shape=(n,), dtype=str, chunks=rows, fill_value="")
        for name in ("item_id", "path", "modality"):
            group.create_array(name, shape=(n,), dtype=str, chunks=rows)[:] = manifest[name].astype(str).to_numpy()
        group.create_array("frame", shape=(n,), dtype="int32", chunks=rows)[:] = manifest["frame"].to_numpy()
        size_hw = manifest[["height", "width"]].to_numpy(dtype="int32")
        group.create_array("size_hw", shape=(n, 2), dtype="int32", chunks=(shard_items, 2))[:] = size_hw
        return cls(group, path)

    @classmethod
    def open(
        cls,
        path: str | Path,
        mode: Literal["r", "r+"] = "r",
        provenance: Mapping[str, Any] | None = None,
    ) -> RoiCache:
        """Open a store. With `provenance`, refuse (ProvenanceMismatch) unless it equals the store's."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"{path}: no ROI cache here (missing zarr.json)")
        cache = cls(zarr.open_group(path, mode=mode, zarr_format=3), path)
        if provenance is not None:
            differences = diff_provenance(cache.provenance, canonical(provenance))
            if differences:
                raise ProvenanceMismatch(
                    f"{path}: this run's localizer configuration differs from the one the cache was made with:\n  "
                    + "\n  ".join(differences)
                    + "\nWrite to a new cache path (--cache NEW.zarr) or delete this cache to start over."
                )
        return cache

    # ---------------------------------------------------------------- bookkeeping
    def manifest(self) -> pd.DataFrame:
        """The items of this cache as a manifest (index = item index)."""
        g = self._group
        size_hw = self._sizes()
        return pd.DataFrame(
            {
                "item_id": g["item_id"][:],
                "path": g["path"][:],
                "frame": g["frame"][:],
                "modality": g["modality"][:],
                "height": size_hw[:, 0],
                "width": size_hw[:, 1],
            }
        )

    def status(self) -> np.ndarray:
        return self._group["status"][:]

    def pending(self, *, include_failed: bool = False) -> np.ndarray:
        """Indices still to do (and failed ones when `include_failed`)."""
        status = self.status()
        todo = status == PENDING
        if include_failed:
            todo |= status == FAILED
        return np.flatnonzero(todo)

    def shards(self) -> list[range]:
        """Item-index ranges, one per shard: the unit of work a single writer owns."""
        return [range(s, min(s + self.shard_items, self.n_items)) for s in range(0, self.n_items, self.shard_items)]

    def summary(self) -> dict[str, int]:
        status = self.status()
        flags = self._group["flags"][:]
        done = status == DONE
        return {
            "items": int(status.size),
            "done": int(done.sum()),
            "empty_roi": int((done & (flags & FLAG_EMPTY_ROI > 0)).sum()),
            "failed": int((status == FAILED).sum()),
            "pending": int((status == PENDING).sum()),
        }

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
    ) -> None:
        """Store results for `indices` and mark them done.

        masks: per item a 2-D 0/1 (or bool) array at the item's own size, stored resized to S x S (nearest).
        saliency: per item a 2-D float array in [0, 1] or uint8 0..255, any size (bilinear).
        boxes: per item a (k, 4) xyxy array in pixels of the item's original image (k <= max_boxes).
        rects: per item the expanded ROI, (r, 4) xyxy end-exclusive pixels of the original image (r <= max_rects);
               None: `data.roi_rects.expanded_rects(mask)` (the release's rule at ratio 1.0) of each native mask.
        flags: FLAG_EMPTY_ROI per item (FLAG_EMPTY_RECT is set here from the rectangles).
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

    def write_failed(self, indices: Sequence[int], reasons: Sequence[str]) -> None:
        """Mark `indices` failed with a human-readable reason each (they are retried with include_failed)."""
        idx = np.asarray(indices, dtype=np.int64)
        self._put("reason", idx, np.asarray([str(r)[:500] for r in reasons], dtype=object))
        self._put("status", idx, np.full(len(idx), FAILED, dtype=np.uint8))

    def _put(self, name: str, idx: np.ndarray, values: np.ndarray) -> None:
        """Write `values` at item indices `idx`, one read-modify-write per touched shard."""
        array = self._group[name]
        shard_of = idx // self.shard_items
        for shard in np.unique(shard_of):
            sel = shard_of == shard
            rows = idx[sel]
            lo, hi = int(rows.min()), int(rows.max()) + 1
            if hi - lo == len(rows) and np.all(np.diff(rows) == 1):
                array[lo:hi] = values[sel]
                continue
            block = array[lo:hi]
            block[rows - lo] = values[sel]
            array[lo:hi] = block

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
        return _from_square(self._read_square("mask", index), target_hw, cv2.INTER_NEAREST_EXACT)

    def read_rects(self, index: int) -> np.ndarray:
        """The expanded ROI's rectangles of item `index`: (r, 4) int64 xyxy end-exclusive pixels of the original
        image."""
        rects_r4 = self._read_square("rects", index)
        rects_r4 = rects_r4[~np.isnan(rects_r4).any(axis=1)].astype(np.float64)
        h, w = self._sizes()[index]
        return np.rint(rects_r4 * np.array([w, h, w, h], dtype=np.float64)).astype(np.int64)

    def read_saliency(self, index: int, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """Soft saliency of item `index` as float32 in [0, 1], resized (bilinear) to `size_hw`."""
        sal_ss = self._read_square("saliency", index)
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
        df["score"] = g["score"][:]
        df["reason"] = g["reason"][:]
        return df

    def _read_square(self, name: str, index: int) -> np.ndarray:
        if not 0 <= index < self.n_items:
            raise IndexError(f"{self.path}: item {index} out of range (0..{self.n_items - 1})")
        if name not in self._readers:
            array = self._group[name]
            self._readers[name] = ShardReader(array) if ShardReader.supports(array) else None
        reader = self._readers[name]
        if reader is None:
            return self._group[name][index]
        return reader.read_chunk((int(index), 0, 0))[0]  # one item per chunk: (1, ...) -> (...)

    def _sizes(self) -> np.ndarray:
        if self._size_hw is None:
            self._size_hw = self._group["size_hw"][:]
        return self._size_hw

    def _target_size(self, index: int, size_hw: tuple[int, int] | None) -> tuple[int, int]:
        if size_hw is not None:
            return int(size_hw[0]), int(size_hw[1])
        h, w = self._sizes()[index]
        return int(h), int(w)

    def __len__(self) -> int:
        return self.n_items

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
