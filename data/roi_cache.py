"""The ROI cache: one Zarr v3 store of per-item ROI masks shared by `localize` (writer) and `pretrain` (reader).

Layout (all arrays have the item index as first axis; row i is manifest row i)::

    CACHE.zarr/                 group attrs: schema_version, provenance, info, mask_size, max_boxes, shard_items
      item_id   (N,)       str      pseudonymous id (data.ids.make_item_id)
      path      (N,)       str      file path relative to the corpus root
      frame     (N,)       int32    frame / slice index inside the file
      modality  (N,)       str      'CT' | 'MR' | 'XR' | ...
      size_hw   (N, 2)     int32    original image height, width
      mask      (N, S, S)  uint8    ROI, 0/1, stored at S x S regardless of aspect (nearest resize back)
      saliency  (N, S, S)  uint8    soft saliency scaled to 0..255
      boxes     (N, K, 4)  float32  SAM box prompts, xyxy normalised to [0, 1], NaN-padded
      score     (N,)       float32  localizer confidence (NaN when not done)
      flags     (N,)       uint8    bit 0: empty ROI (saliency found nothing)
      status    (N,)       uint8    0 pending, 1 done, 2 failed
      reason    (N,)       str      failure reason ('' otherwise)

`mask` and `saliency` hold one item per chunk inside shards of `shard_items` items; every other per-item
array uses chunks of `shard_items` items. A unit of work therefore owns whole files: two writers on
distinct shards never touch the same file. Writes are atomic per file (zarr's LocalStore writes a
temporary file and renames it), and `status` is written last, so an interrupted write leaves its items
pending and a re-run redoes exactly them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import ZstdCodec

from data.shard_reader import ShardReader

SCHEMA_VERSION = 1
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
FLAG_EMPTY_ROI = 1
_MANIFEST_COLUMNS = ("item_id", "path", "frame", "modality", "height", "width")


class ProvenanceMismatch(RuntimeError):
    """The run's localizer configuration differs from the one the store was made with."""


class RoiCache:
    """A Zarr v3 ROI cache. Make one with `RoiCache.create`, open one with `RoiCache.open`."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._group = group
        self.path = path
        attrs = group.attrs.asdict()
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: ROI cache schema version {attrs.get('schema_version')!r}, this code reads {SCHEMA_VERSION}"
            )
        self.mask_size: int = attrs["mask_size"]
        self.max_boxes: int = attrs["max_boxes"]
        self.shard_items: int = attrs["shard_items"]
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
        mask_size: int = 256,
        max_boxes: int = 4,
        shard_items: int = 256,
        info: Mapping[str, Any] | None = None,
    ) -> RoiCache:
        """Create an empty store (every item pending) for `manifest`; refuses to overwrite an existing one."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path}: already exists; open it with RoiCache.open or choose another path")
        missing = [c for c in _MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"manifest lacks columns {missing}")
        n, s, k = len(manifest), mask_size, max_boxes
        if n == 0:
            raise ValueError("manifest is empty: nothing to cache")
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        group.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                "mask_size": s,
                "max_boxes": k,
                "shard_items": shard_items,
                "provenance": _canonical(provenance),
                "info": _canonical(info or {}),
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
            differences = diff_provenance(cache.provenance, _canonical(provenance))
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
    ) -> None:
        """Store results for `indices` and mark them done.

        masks: per item a 2-D 0/1 (or bool) array of any size, resized here to S x S (nearest).
        saliency: per item a 2-D float array in [0, 1] or uint8 0..255, any size (bilinear).
        boxes: per item a (k, 4) xyxy array in pixels of the item's original image (k <= max_boxes).
        """
        idx = np.asarray(indices, dtype=np.int64)
        s, k = self.mask_size, self.max_boxes
        masks_nss = np.stack([_to_square(np.asarray(m, dtype=np.uint8), s, cv2.INTER_NEAREST_EXACT) for m in masks])
        sal_nss = np.stack([_to_square(_saliency_u8(x), s, cv2.INTER_LINEAR) for x in saliency])
        sizes = self._sizes()[idx]
        boxes_nk4 = np.full((len(idx), k, 4), np.nan, dtype=np.float32)
        for row, (b, (h, w)) in enumerate(zip(boxes, sizes, strict=True)):
            b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
            if len(b) > k:
                raise ValueError(f"item {idx[row]}: {len(b)} boxes, the cache holds at most {k}")
            boxes_nk4[row, : len(b)] = b / np.array([w, h, w, h], dtype=np.float32)
        flags_n = np.zeros(len(idx), np.uint8) if flags is None else np.asarray(flags, dtype=np.uint8)
        self._put("mask", idx, masks_nss)
        self._put("saliency", idx, sal_nss)
        self._put("boxes", idx, boxes_nk4)
        self._put("score", idx, np.asarray(scores, dtype=np.float32))
        self._put("flags", idx, flags_n)
        self._put("reason", idx, np.full(len(idx), "", dtype=object))
        self._put("status", idx, np.full(len(idx), DONE, dtype=np.uint8))  # last: marks the items complete

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
    def read_mask(self, index: int, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """ROI of item `index` as uint8 0/1, resized (nearest) to `size_hw` (default: the original image size)."""
        mask_ss = self._read_square("mask", index)
        return _from_square(mask_ss, self._target_size(index, size_hw), cv2.INTER_NEAREST_EXACT)

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
            "score": float(g["score"][index]),
            "reason": str(g["reason"][index]),
            "size_hw": tuple(int(v) for v in self._sizes()[index]),
        }

    def table(self) -> pd.DataFrame:
        """Per-item bookkeeping (no pixels): manifest columns + status, flags, score, reason."""
        g = self._group
        df = self.manifest()
        df["status"] = pd.Categorical.from_codes(g["status"][:], categories=list(STATUS_NAMES.values()))
        df["empty_roi"] = (g["flags"][:] & FLAG_EMPTY_ROI) > 0
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
        return reader.read_chunk((int(index), 0, 0))[0]

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


def diff_provenance(stored: Mapping[str, Any], requested: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two provenance mappings, one line per differing dotted key."""
    lines = []
    for key in sorted(set(stored) | set(requested)):
        name = f"{prefix}{key}"
        a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += diff_provenance(a, b, prefix=f"{name}.")
        elif a != b:
            lines.append(f"{name}: cache has {json.dumps(a)}, this run has {json.dumps(b)}")
    return lines


def _canonical(value: Mapping[str, Any]) -> dict[str, Any]:
    """JSON round trip, so tuples/paths/numpy scalars compare equal to what the store returns."""
    return json.loads(json.dumps(dict(value), sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Iterable):
        return list(obj)
    raise TypeError(f"provenance value {obj!r} is not JSON-serialisable")


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
