"""Packing a corpus into a packed image store (`data.packed_store`): resumable, one shard per unit of work.

A unit is the pending items of one shard. They are read through a `FrameSource` (each volume or multi-frame file
decoded once), normalised with the store's intensity rules, packed, and written together with status last, so a
killed run leaves whole shards pending and a re-run redoes exactly them. Units run in `workers` processes, each on
its own shards; `part=(k, n)` takes every n-th shard from the k-th, so that n processes (or nodes sharing a file
system) build one store together. The store is the same whichever way it was built.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import pandas as pd
from tqdm import tqdm

from data.frame_source import DEFAULT_MAX_BYTES, FrameSource, ReadStats
from data.item_store import FAILED, PENDING
from data.packed_store import PackedStore
from data.readers.common import describe_error

log = logging.getLogger(__name__)


@dataclass
class PackSummary:
    """The state of a store after a packing run, and what the run did."""

    items: int
    done: int
    failed: int
    pending: int
    processed: int
    wall_s: float
    bytes_per_image: float
    reads: ReadStats

    def line(self) -> str:
        rate = self.processed / self.wall_s if self.wall_s > 0 else 0.0
        return (
            f"pack: {self.done}/{self.items} done, {self.failed} failed, {self.pending} pending; processed "
            f"{self.processed} items in {self.wall_s:.1f} s ({rate:.1f} items/s); {self.bytes_per_image / 1024:.1f} "
            f"KiB per image on disk; {self.reads.line()}"
        )


def plan_shards(store: PackedStore, *, retry_failed: bool = False, part: tuple[int, int] = (0, 1)) -> list[list[int]]:
    """Per shard of this part with work left, its items to pack (pending ones, and failed ones when retried)."""
    k, n = part
    if not 0 <= k < n:
        raise ValueError(f"part {k}/{n}: need 0 <= K < N")
    status = store.status()
    todo = (status == PENDING) | ((status == FAILED) if retry_failed else False)
    units = []
    for shard, items in enumerate(store.shards()):
        if shard % n == k and todo[items.start : items.stop].any():
            units.append([i for i in items if todo[i]])
    return units


def pack_unit(store_path: str, corpus: str, rows: pd.DataFrame, max_bytes: int) -> tuple[int, int, dict[str, int]]:
    """Pack the items of `rows` (manifest rows indexed by item index, one shard's) into the store; returns
    (done, failed, read statistics)."""
    store = PackedStore.open(store_path, mode="r+")
    source = FrameSource(corpus, max_bytes)
    source.plan(zip(rows["path"], rows["frame"], strict=True))
    done, packed, failed, reasons = [], [], [], []
    for index, row in rows.iterrows():
        try:
            packed.append(store.pack(source.image(row["path"], row["frame"], row["modality"], store.intensity)))
            done.append(index)
        except Exception as e:  # one unreadable item must not stop the shard
            failed.append(index)
            reasons.append(describe_error(e))
            log.warning("item %s failed: %s", row["item_id"], reasons[-1])
    if failed:
        store.write_failed(failed, reasons)
    if done:
        store.write_packed(done, packed)
    return len(done), len(failed), source.stats.as_dict()


def pack_corpus(
    store: PackedStore,
    corpus: str | os.PathLike,
    *,
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    max_bytes: int = DEFAULT_MAX_BYTES,
    retry_failed: bool = False,
    progress: bool = True,
) -> PackSummary:
    """Pack every pending item of this part of `store` from `corpus`, in `workers` processes (<= 1: this one)."""
    started = time.perf_counter()
    units = plan_shards(store, retry_failed=retry_failed, part=part)
    manifest = store.manifest()
    reads = ReadStats(int(max_bytes))
    bar = tqdm(total=sum(map(len, units)), desc="pack", unit="img", file=sys.stderr, disable=not progress)
    args = [(str(store.path), str(corpus), manifest.loc[items], int(max_bytes)) for items in units]
    with bar:
        if workers <= 1 or len(units) <= 1:
            results = (pack_unit(*a) for a in args)
            for done, failed, stats in results:
                reads.merge(stats)
                bar.update(done + failed)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(units))) as pool:
                for future in as_completed([pool.submit(pack_unit, *a) for a in args]):
                    done, failed, stats = future.result()
                    reads.merge(stats)
                    bar.update(done + failed)
    return summarize(PackedStore.open(store.path), sum(map(len, units)), started, reads)


def summarize(store: PackedStore, processed: int, started: float, reads: ReadStats) -> PackSummary:
    counts = store.counts()
    per_image = store.bytes_on_disk() / counts["done"] if counts["done"] else 0.0
    wall = time.perf_counter() - started
    return PackSummary(**counts, processed=processed, wall_s=wall, bytes_per_image=per_image, reads=reads)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
