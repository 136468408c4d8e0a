"""What the project's per-item Zarr v3 stores share: the ROI cache (`data.roi_cache`) and the packed image store
(`data.packed_store`).

Every array has the item index as first axis; row i is manifest row i. The item table (item_id, path, frame,
modality, size_hw) and the bookkeeping (status, reason) use chunks of `shard_items` items; per-item pixel arrays
hold one item per chunk inside shards of `shard_items` items (`add_item_array`), read one chunk at a time through
`data.shard_reader`. A unit of work is one shard (`shards()`), so two writers on distinct shards never touch the
same file. Writes are atomic per file (zarr's LocalStore writes a temporary file and renames it), and `status` is
written last, so an interrupted write leaves its items pending and a re-run redoes exactly them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import ZstdCodec

from data.provenance import ProvenanceMismatch, canonical, diff_provenance
from data.shard_reader import ShardReader

PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
ITEM_COLUMNS = ("item_id", "path", "frame", "modality", "height", "width")
# Stored when the manifest has them (a scan of schema 2, `data.series`): the keyed grouping keys and slice order.
GROUPING_ARRAYS = {"patient_key": str, "study_key": str, "series_key": str, "slice_index": "int32", "n_slices": "int32"}


def is_url(path: str | Path) -> bool:
    """True for a store address such as 's3://bucket/store.zarr' or 'file:///data/store.zarr'."""
    return "://" in str(path)


class ItemStore:
    """A Zarr v3 group of per-item arrays in shards of `shard_items` items; subclasses add their arrays."""

    def __init__(self, group: zarr.Group, path: Path | str, shard_items: int) -> None:
        self._group = group
        self.path = path
        self.shard_items = int(shard_items)
        self.n_items: int = group["status"].shape[0]
        self._readers: dict[str, ShardReader | zarr.Array] = {}
        self._size_hw: np.ndarray | None = None

    # ---------------------------------------------------------------- creation / opening
    @staticmethod
    def create_group(path: Path, manifest: pd.DataFrame, attrs: Mapping[str, Any], shard_items: int) -> zarr.Group:
        """A new group with `attrs` and the item table + bookkeeping of `manifest` (every item pending)."""
        if path.exists():
            raise FileExistsError(f"{path}: already exists; open it or choose another path")
        missing = [c for c in ITEM_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"manifest lacks columns {missing}")
        n = len(manifest)
        if n == 0:
            raise ValueError("manifest is empty: nothing to store")
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        group.attrs.update(dict(attrs))
        rows = (int(shard_items),)
        group.create_array("status", shape=(n,), dtype="uint8", chunks=rows, fill_value=PENDING)
        group.create_array("reason", shape=(n,), dtype=str, chunks=rows, fill_value="")
        for name in ("item_id", "path", "modality"):
            group.create_array(name, shape=(n,), dtype=str, chunks=rows)[:] = manifest[name].astype(str).to_numpy()
        group.create_array("frame", shape=(n,), dtype="int32", chunks=rows)[:] = manifest["frame"].to_numpy()
        size_hw = manifest[["height", "width"]].to_numpy(dtype="int32")
        group.create_array("size_hw", shape=(n, 2), dtype="int32", chunks=(rows[0], 2))[:] = size_hw
        if all(name in manifest.columns for name in GROUPING_ARRAYS):
            ItemStore._write_grouping(group, manifest, rows)
        return group

    @staticmethod
    def _write_grouping(group: zarr.Group, manifest: pd.DataFrame, rows: tuple[int]) -> None:
        n = len(manifest)
        for name, dtype in GROUPING_ARRAYS.items():
            values = manifest[name].to_numpy(dtype=object if dtype is str else dtype)
            group.create_array(name, shape=(n,), dtype=dtype, chunks=rows, overwrite=True)[:] = values

    def has_grouping_keys(self) -> bool:
        """True when the store holds the patient/study/series keys (made from a manifest that had them)."""
        return all(name in self._group for name in GROUPING_ARRAYS)

    def add_grouping_keys(self, manifest: pd.DataFrame) -> None:
        """Store the grouping columns of `manifest` (a scan of the same corpus with the keys) in this store: the
        migration of a store made before them. Its items must be this store's, in order (same item_id, path,
        frame); refuses otherwise, naming how many differ."""
        mine = self.manifest()
        if len(manifest) != len(mine) or not all(name in manifest.columns for name in GROUPING_ARRAYS):
            raise ValueError(f"{self.path}: the manifest has {len(manifest)} items or lacks grouping columns")
        same = (manifest["item_id"].to_numpy() == mine["item_id"].to_numpy()) & (
            manifest["frame"].to_numpy() == mine["frame"].to_numpy()
        )
        if not same.all():
            raise ValueError(f"{self.path}: {int((~same).sum())} items differ from the manifest's: not the same scan")
        self._write_grouping(self._group, manifest.reset_index(drop=True), (self.shard_items,))

    @contextmanager
    def building(path: Path) -> Iterator[Path]:
        """Build a new store under a temporary name beside `path` (yielded), then rename it into place: a reader or a
        rerun never sees a half-made store (a crash leaves only the temporary folder), and of processes racing to
        create one store exactly one succeeds (FileExistsError for the others)."""
        if path.exists():
            raise FileExistsError(f"{path}: already exists; open it or choose another path")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            yield tmp
            try:
                os.rename(tmp, path)  # atomic; fails when another process made `path` meanwhile
            except OSError as e:
                if path.exists():
                    raise FileExistsError(f"{path}: made by another process meanwhile") from e
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def add_item_array(
        group: zarr.Group, name: str, item_shape: tuple[int, ...], dtype: str, fill_value: Any, shard_items: int
    ) -> zarr.Array:
        """A per-item array, one item per zstd-compressed chunk, in shards of `shard_items` items (the layout
        `ShardReader` reads)."""
        n = group["status"].shape[0]
        return group.create_array(
            name,
            shape=(n, *item_shape),
            dtype=dtype,
            chunks=(1, *item_shape),
            shards=(int(shard_items), *item_shape),
            compressors=[ZstdCodec(level=3)],
            fill_value=fill_value,
        )

    @staticmethod
    def open_group(path: str | Path, mode: str, what: str) -> zarr.Group:
        """The group at a local path, or at a URL zarr opens through fsspec (e.g. s3://..., read with zarr's own
        chunk reads: `ShardReader` is for local files)."""
        if is_url(path):
            return zarr.open_group(str(path), mode=mode, zarr_format=3)
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"{path}: no {what} here (missing zarr.json)")
        return zarr.open_group(path, mode=mode, zarr_format=3)

    @staticmethod
    def check_provenance(
        path: Path, stored: Mapping[str, Any], requested: Mapping[str, Any], what: str, advice: str, noun: str
    ) -> None:
        """Refuse (ProvenanceMismatch, naming every differing key) a run whose provenance differs from the store's;
        `noun` names the store in the message ('cache', 'store')."""
        differences = diff_provenance(stored, canonical(requested), stored_in=noun)
        if differences:
            raise ProvenanceMismatch(
                f"{path}: this run's {what} differs from the one the {noun} was made with:\n  "
                + "\n  ".join(differences)
                + f"\n{advice}"
            )

    # ---------------------------------------------------------------- bookkeeping
    def manifest(self) -> pd.DataFrame:
        """The items of this store as a manifest (index = item index)."""
        g = self._group
        size_hw = self._sizes()
        table = pd.DataFrame(
            {
                "item_id": g["item_id"][:],
                "path": g["path"][:],
                "frame": g["frame"][:],
                "modality": g["modality"][:],
                "height": size_hw[:, 0],
                "width": size_hw[:, 1],
            }
        )
        if self.has_grouping_keys():  # else: a store made before them, each path its own patient downstream
            for name in GROUPING_ARRAYS:
                table[name] = g[name][:]
        return table

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

    def counts(self) -> dict[str, int]:
        status = self.status()
        return {
            "items": int(status.size),
            "done": int((status == DONE).sum()),
            "failed": int((status == FAILED).sum()),
            "pending": int((status == PENDING).sum()),
        }

    def write_failed(self, indices: Sequence[int], reasons: Sequence[str]) -> None:
        """Mark `indices` failed with a human-readable reason each (they are retried with include_failed)."""
        idx = np.asarray(indices, dtype=np.int64)
        self._put("reason", idx, np.asarray([str(r)[:500] for r in reasons], dtype=object))
        self._put("status", idx, np.full(len(idx), FAILED, dtype=np.uint8))

    # ---------------------------------------------------------------- array access
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

    def _read_item(self, name: str, index: int) -> np.ndarray:
        """Item `index` of a per-item array (`add_item_array`), through ShardReader when the layout allows."""
        if not 0 <= index < self.n_items:
            raise IndexError(f"{self.path}: item {index} out of range (0..{self.n_items - 1})")
        if name not in self._readers:  # looking an array up in the group costs milliseconds: once per array
            array = self._group[name]
            self._readers[name] = ShardReader(array) if ShardReader.supports(array) else array
        reader = self._readers[name]
        if not isinstance(reader, ShardReader):
            return reader[index]
        return reader.read_chunk((int(index),) + (0,) * (reader.ndim - 1))[0]  # one item per chunk: drop the axis

    def sizes_hw(self) -> np.ndarray:
        """(N, 2) int32 height, width of every item."""
        return self._sizes()

    def _sizes(self) -> np.ndarray:
        if self._size_hw is None:
            self._size_hw = self._group["size_hw"][:]
        return self._size_hw

    def __len__(self) -> int:
        return self.n_items
