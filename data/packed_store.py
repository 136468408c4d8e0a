"""The packed image store: model-ready 2-D images (intensity-normalised, resized, quantised), written once, read fast.

Layout (Zarr v3, the per-item layout of `data.item_store`; row i is manifest row i)::

    STORE.zarr/      group attrs: kind 'packed-images', schema_version, shard_items, provenance, info
      item_id, path, frame, modality, size_hw (original H, W), status, reason      the item table (as the ROI cache)
      stored_hw  (N, 2)        int32   size of the stored image: the original when its longest side <= max_side,
                                       else scaled (cv2 INTER_AREA, aspect kept) to a longest side of max_side;
                                       square stores: square x square (aspect not kept, see `square_resize`)
      channels   (N,)          uint8   1 grey, 3 RGB (0 until the item is done)
      image      (N, L, L)     dtype   grey images at the top left of an L x L chunk, zero-padded; L is the largest
                                       stored side of the manifest's items (at most max_side), so that reading an
                                       image decodes little padding
      image_rgb  (N, L, L, 3)  dtype   RGB images, the same way (only RGB items' chunks exist on disk)

A pixel is round(x * M) of the normalised value x in [0, 1], M = 255 (uint8) or 65535 (uint16); q / M reads it back
(within 0.5 / M). provenance = {intensity (every IntensityConfig field), max_side, square, dtype, manifest_sha256,
pack_version}: a run that would write other pixels is refused (`open(expect=...)`). info = {code_version}.
A store has either `max_side` (aspect kept) or `square` (every image at the pretraining input size, square x square,
resized as pretraining's `augment: resize` does); the other is None. Stores made before `square` existed lack the
key and read as square None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
import torch
import zarr
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resize

from data.intensity import IntensityConfig
from data.intensity_follow import require_same_intensity
from data.item_store import DONE, ItemStore, is_url
from data.manifest import manifest_sha256
from data.provenance import canonical, code_version

KIND = "packed-images"
SCHEMA_VERSION = 1
PACK_VERSION = 1  # bump when the pixels a given provenance produces change (resize rule, rounding)
PACKED_DTYPES: tuple[str, ...] = ("uint8", "uint16")
DEFAULT_MAX_SIDE = 512
ImageSize = Literal["stored", "native"]


def stored_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H, W) an image of `height` x `width` is stored at: itself when its longest side is <= max_side, else scaled
    to a longest side of max_side (aspect kept, rounded, at least 1)."""
    longest = max(height, width)
    if longest <= max_side:
        return int(height), int(width)
    return max(1, int(height * max_side / longest + 0.5)), max(1, int(width * max_side / longest + 0.5))


def square_resize(image: np.ndarray, side: int) -> np.ndarray:
    """A float image (H, W) or (H, W, 3) resized to side x side (aspect not kept) exactly as pretraining's
    `augment: resize` resizes the raw float image (`pretrain.transforms`, its reference resampling): torchvision
    bilinear without antialiasing, the MWM fork's cv2 INTER_LINEAR. Quantising after it keeps the packed image within
    0.5 / M of the raw path's resized one."""
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))
    x_chw = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    out_chw = resize(x_chw, [side, side], interpolation=InterpolationMode.BILINEAR, antialias=False)
    return (out_chw[0] if x.ndim == 2 else out_chw.permute(1, 2, 0)).numpy()


def pack_image(image: np.ndarray, max_side: int | None, dtype: str, square: int | None = None) -> np.ndarray:
    """A normalised float image in [0, 1], (H, W) or (H, W, 3) -> its stored pixels (resized, quantised): to
    `square` x `square` (`square_resize`) when given, else to a longest side of at most `max_side`."""
    h, w = image.shape[:2]
    if square is not None:
        image = square_resize(image, int(square))
    elif stored_size(h, w, max_side) != (h, w):
        target_h, target_w = stored_size(h, w, max_side)
        image = cv2.resize(np.ascontiguousarray(image, np.float32), (target_w, target_h), interpolation=cv2.INTER_AREA)
    top = np.iinfo(dtype).max
    return np.rint(np.clip(image, 0.0, 1.0) * np.float32(top)).astype(dtype)


def packed_provenance(
    intensity: IntensityConfig, max_side: int | None, dtype: str, manifest: pd.DataFrame, square: int | None = None
) -> dict[str, Any]:
    """What decides a packed store's pixels; exactly one of `max_side` and `square` is set."""
    if dtype not in PACKED_DTYPES:
        raise ValueError(f"packed dtype must be one of {PACKED_DTYPES}, got {dtype!r}")
    if (max_side is None) == (square is None):
        raise ValueError(f"set max_side or square, not both nor neither (got max_side {max_side}, square {square})")
    size = int(max_side if square is None else square)
    if size < 1:
        raise ValueError(f"{'max_side' if square is None else 'square'} must be >= 1, got {size}")
    return canonical(
        {
            "intensity": intensity.to_dict(),
            "max_side": None if max_side is None else int(max_side),
            "square": None if square is None else int(square),
            "dtype": dtype,
            "manifest_sha256": manifest_sha256(manifest),
            "pack_version": PACK_VERSION,
        }
    )


class PackedStore(ItemStore):
    """A packed image store. Make one with `create` (or `open_or_create` to resume), read one with `open`."""

    def __init__(self, group: zarr.Group, path: Path | str) -> None:
        attrs = group.attrs.asdict()
        if attrs.get("kind") != KIND or attrs.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: not a packed image store of schema {SCHEMA_VERSION} (kind {attrs.get('kind')!r}, "
                f"schema {attrs.get('schema_version')!r}); pack it again with `python -m data pack`"
            )
        super().__init__(group, path, attrs["shard_items"])
        self.provenance: dict[str, Any] = {"square": None, **attrs["provenance"]}  # stores older than `square`
        self.info: dict[str, Any] = attrs.get("info", {})
        self.square: int | None = self.provenance["square"]
        self.max_side: int | None = self.provenance["max_side"]
        self.dtype: str = self.provenance["dtype"]
        self.intensity = IntensityConfig.from_fields(self.provenance["intensity"])
        self.manifest_sha256: str = self.provenance["manifest_sha256"]
        self.chunk_side: int = int(group["image"].shape[1])
        self._stored_hw: np.ndarray | None = None
        self._channels: np.ndarray | None = None
        self._where: dict[tuple[str, int], int] | None = None

    # ---------------------------------------------------------------- creation / opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        manifest: pd.DataFrame,
        intensity: IntensityConfig,
        *,
        max_side: int | None = None,
        square: int | None = None,
        dtype: str = "uint8",
        shard_items: int = 256,
    ) -> PackedStore:
        """A new store, every item pending (FileExistsError if `path` exists): images scaled to at most `max_side`
        (None: DEFAULT_MAX_SIDE), or to `square` x `square`. It is made under a temporary name and renamed into
        place, so that of processes racing to create it exactly one succeeds (`open_or_create` lets the others join
        its store)."""
        path = Path(path)
        if square is None and max_side is None:
            max_side = DEFAULT_MAX_SIDE
        provenance = packed_provenance(intensity, max_side, dtype, manifest, square)
        attrs = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "shard_items": int(shard_items),
            "provenance": provenance,
            "info": {"code_version": code_version()},
        }
        with cls.building(path) as tmp:
            group = cls.create_group(tmp, manifest, attrs, shard_items)
            n = len(manifest)
            sizes = manifest[["height", "width"]].to_numpy()
            side = int(square) if square else max(max(stored_size(int(h), int(w), int(max_side))) for h, w in sizes)
            group.create_array("stored_hw", shape=(n, 2), dtype="int32", chunks=(int(shard_items), 2), fill_value=0)
            group.create_array("channels", shape=(n,), dtype="uint8", chunks=(int(shard_items),), fill_value=0)
            cls.add_item_array(group, "image", (side, side), dtype, 0, shard_items)
            cls.add_item_array(group, "image_rgb", (side, side, 3), dtype, 0, shard_items)
        return cls.open(path, mode="r+", expect=provenance)

    @classmethod
    def open(
        cls, path: str | Path, mode: Literal["r", "r+"] = "r", expect: Mapping[str, Any] | None = None
    ) -> PackedStore:
        """Open a store (a path, or a URL zarr reads through fsspec). With `expect` (a `packed_provenance`), refuse
        (ProvenanceMismatch) unless it is the store's."""
        path = path if is_url(path) else Path(path)
        store = cls(cls.open_group(path, mode, "packed image store"), path)
        if expect is not None:
            advice = "Pack into a new path (--out NEW.zarr), or delete this store to start over."
            cls.check_provenance(path, store.provenance, expect, "packing configuration", advice, "store")
        return store

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        manifest: pd.DataFrame,
        intensity: IntensityConfig,
        *,
        max_side: int | None = None,
        square: int | None = None,
        dtype: str | None = None,
        shard_items: int | None = None,
    ) -> PackedStore:
        """The store at `path` for these items and intensity rules: created when absent (None settings: the
        defaults), else opened for writing if it was made from the same items with the same rules and the settings
        given (None: whatever the store has; `max_side` and `square` are one setting). IntensityMismatch for other
        rules, ProvenanceMismatch or ValueError for other items or settings."""
        path = Path(path)
        if not path.exists():
            settings = {"max_side": max_side, "square": square, "dtype": dtype or "uint8"}
            try:
                return cls.create(path, manifest, intensity, **settings, shard_items=shard_items or 256)
            except FileExistsError:  # another process created it meanwhile: join it if it has these settings
                pass
        found = cls.open(path)
        require_same_intensity(intensity, found.intensity, str(path))  # the clearest refusal first
        if max_side is None and square is None:
            max_side, square = found.max_side, found.square
        expect = packed_provenance(intensity, max_side, dtype or found.dtype, manifest, square)
        store = cls.open(path, mode="r+", expect=expect)
        if shard_items is not None and int(shard_items) != store.shard_items:
            raise ValueError(f"{path}: holds {store.shard_items} items per shard, this run {shard_items}")
        return store

    # ---------------------------------------------------------------- writing
    def write(self, indices: Sequence[int], images: Sequence[np.ndarray]) -> None:
        """Store normalised float images in [0, 1] ((H, W) or (H, W, 3), original size) for `indices`; mark them
        done (status last)."""
        self.write_packed(indices, [self.pack(image) for image in images])

    def pack(self, image: np.ndarray) -> np.ndarray:
        """The stored pixels of a normalised image, by this store's settings (`pack_image`)."""
        return pack_image(np.asarray(image), self.max_side, self.dtype, self.square)

    def write_packed(self, indices: Sequence[int], packed: Sequence[np.ndarray]) -> None:
        """Store pixels made by `pack` for `indices`; mark them done (status last)."""
        idx = np.asarray(indices, dtype=np.int64)
        channels = np.array([1 if p.ndim == 2 else 3 for p in packed], dtype=np.uint8)
        side = self.chunk_side
        too_large = [int(i) for i, p in zip(idx, packed, strict=True) if max(p.shape[:2]) > side]
        if too_large:
            raise ValueError(f"{self.path}: item {too_large[0]} is larger than its manifest size (file changed?)")
        for name, want in (("image", 1), ("image_rgb", 3)):
            rows = np.flatnonzero(channels == want)
            if len(rows) == 0:
                continue
            block = np.zeros((len(rows), side, side) + ((3,) if want == 3 else ()), dtype=self.dtype)
            for out, row in zip(block, rows, strict=True):
                out[: packed[row].shape[0], : packed[row].shape[1]] = packed[row]
            self._put(name, idx[rows], block)
        self._put("stored_hw", idx, np.array([p.shape[:2] for p in packed], dtype=np.int32).reshape(-1, 2))
        self._put("channels", idx, channels)
        self._put("reason", idx, np.full(len(idx), "", dtype=object))
        self._put("status", idx, np.full(len(idx), DONE, dtype=np.uint8))  # last: marks the items complete

    # ---------------------------------------------------------------- reading
    def read_pixels(self, index: int) -> np.ndarray:
        """The stored pixels of item `index`: (h, w) or (h, w, 3) of the store's dtype, h, w = its stored size."""
        if self._stored_hw is None:  # read once: a store is read once it is complete
            self._stored_hw, self._channels = self._group["stored_hw"][:], self._group["channels"][:]
        h, w = self._stored_hw[index]
        channels = self._channels[index]
        if channels == 0:
            raise ValueError(f"{self.path}: item {index} is not packed (status {self.status()[index]})")
        return np.array(self._read_item("image" if channels == 1 else "image_rgb", int(index))[:h, :w])  # owned

    def read_image(self, index: int, size: ImageSize = "stored") -> np.ndarray:
        """Item `index` as float32 in [0, 1] at its stored size, or resized (bilinear) back to its original size."""
        image = self.read_pixels(index).astype(np.float32) / np.float32(np.iinfo(self.dtype).max)
        if size == "native":
            h, w = (int(v) for v in self._sizes()[index])
            if image.shape[:2] != (h, w):
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        elif size != "stored":
            raise ValueError(f"size must be 'stored' or 'native', got {size!r}")
        return image

    def image_at(self, relpath: str, frame: int, modality: str | None = None, size: ImageSize = "stored") -> np.ndarray:
        """`read_image` of the item of file `relpath`, frame `frame` (a table row of another dataset over the same
        corpus). A `modality` other than the store's is refused: the pixels were normalised by the store's."""
        if self._where is None:
            paths, frames = self._group["path"][:], self._group["frame"][:]
            self._where = {(str(p), int(f)): i for i, (p, f) in enumerate(zip(paths, frames, strict=True))}
        index = self._where.get((str(relpath), int(frame)))
        if index is None:
            raise KeyError(
                f"{relpath} (frame {frame}): not in the packed store {self.path} (packed from another corpus?)"
            )
        stored_modality = str(self._group["modality"][index])
        if modality and modality != stored_modality:
            raise ValueError(
                f"{relpath} (frame {frame}): modality {modality!r} here, {stored_modality!r} in the packed store "
                f"{self.path}, whose pixels were normalised by the {stored_modality} rule"
            )
        return self.read_image(index, size)

    def stored_sizes(self) -> np.ndarray:
        """(N, 2) stored (H, W) of every item (0, 0 until packed)."""
        return self._group["stored_hw"][:]

    def bytes_on_disk(self) -> int:
        """Bytes of every file of the store (local stores)."""
        return sum(f.stat().st_size for f in Path(self.path).rglob("*") if f.is_file())

    def __repr__(self) -> str:
        size = f"square={self.square}" if self.square else f"max_side={self.max_side}"
        return f"PackedStore({str(self.path)!r}, items={self.n_items}, {size}, dtype={self.dtype})"
