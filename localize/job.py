"""The localization job: pending cache items -> images -> Localizer -> ROI cache, in units of whole shards.

A unit of work is one cache shard (`RoiCache.shards()`), so parallel writers never share a file. Inside a
unit, batches are fixed slots of consecutive items from the shard start, at most `batch_size` items and at most
`batch_pixels` pixels at working size (`batch_slots`, from the manifest's sizes alone); a slot that
holds any pending item is recomputed whole. A resumed run therefore feeds the models exactly the batches
an uninterrupted run would have, and the final cache is the same. Status is written last per batch
(RoiCache.write), so killing the job at any moment loses at most the batches in flight.

Images are read through a `data.frame_source.FrameSource` planned with the unit's items: each volume or
multi-frame file is decoded once per unit and its slices served from memory, under a byte cap; the images are
those item-by-item reading gives, so the cache is the same. With a packed image store (`localize run --pack`), the
unit's images also go into the store's same shard, written at the end of the unit (status last).

An image larger than `work_max_side` is localized at a bounded working size (`working_size`): read and normalised
at its own size, packed, then downscaled before the models or the post-processing see it, so that memory does not
grow with the image (issue 28); the boxes and rectangles written are in the image's own pixels.

Progress is reported per batch as the item indices it finished (done or failed); `ItemProgress` counts each item
once, so a shard that Dask re-runs after losing a worker does not advance the bar twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from data.frame_source import DEFAULT_MAX_BYTES, FrameSource, ReadStats
from data.intensity import IntensityConfig
from data.packed_store import PackedStore
from data.roi_cache import FAILED, FLAG_EMPTY_ROI, PENDING, RoiCache
from localize.localizer import Localizer

log = logging.getLogger(__name__)
Progress = Callable[[Sequence[int]], None]  # called with the item indices a batch finished


@dataclass(frozen=True)
class WorkUnit:
    """Items of one shard still to do, and the fixed batch slots that cover them."""

    shard: int
    slots: tuple[tuple[int, ...], ...]

    @property
    def n_items(self) -> int:
        return sum(len(s) for s in self.slots)

    @property
    def items(self) -> list[int]:
        return [i for slot in self.slots for i in slot]


def plan_units(
    cache: RoiCache,
    batch_size: int,
    *,
    retry_failed: bool = False,
    batch_pixels: int = 0,
    work_max_side: int = 0,
) -> list[WorkUnit]:
    """One WorkUnit per shard with pending items (and failed ones when `retry_failed`).

    batch_pixels: a slot also closes before its images (at their working size, `working_size`) would exceed this
    many pixels in all (0: no budget); an image larger than the budget is a slot of its own. Slots depend on the
    manifest's sizes only, so every run forms the same ones."""
    status = cache.status()
    todo = status == PENDING
    if retry_failed:
        todo |= status == FAILED
    sizes_hw = cache.sizes_hw().astype(np.int64)
    units = []
    for shard, items in enumerate(cache.shards()):
        if not todo[items.start : items.stop].any():
            continue
        slots = []
        for slot in batch_slots(items, sizes_hw, batch_size, batch_pixels, work_max_side):
            if todo[slot.start : slot.stop].any():
                # failed items stay out of the slot unless retried, in every run alike
                slots.append(tuple(i for i in slot if status[i] != FAILED or retry_failed))
        units.append(WorkUnit(shard, tuple(s for s in slots if s)))
    return units


def working_size(size_hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size an image is localized at: its own, or scaled (aspect kept, rounded) so that its longest side is
    `max_side` when larger (0: always its own)."""
    height, width = int(size_hw[0]), int(size_hw[1])
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def batch_slots(
    items: range, sizes_hw: np.ndarray, batch_size: int, batch_pixels: int = 0, work_max_side: int = 0
) -> list[range]:
    """Consecutive slots of `items` from its start: at most `batch_size` items and, when `batch_pixels` > 0, at most
    that many pixels at working size (an image larger than the budget alone)."""
    slots, start, pixels = [], items.start, 0
    for index in items:
        h, w = working_size(tuple(sizes_hw[index]), work_max_side)
        count = index - start
        if count and (count == batch_size or (batch_pixels > 0 and pixels + h * w > batch_pixels)):
            slots.append(range(start, index))
            start, pixels = index, 0
        pixels += h * w
    if start < items.stop:
        slots.append(range(start, items.stop))
    return slots


def to_working_size(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` at `working_size` (cv2 INTER_AREA, the average of the pixels each output pixel covers); the image
    itself when it is not larger."""
    height, width = working_size(image.shape[:2], max_side)
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _to_native(item, work_hw: tuple[int, int], native_hw: tuple[int, int]):
    """A LocalizedItem computed at `work_hw`, its boxes and rectangles in the native image's pixels (the mask stays
    at the working size: the cache stores it resized to its mask size anyway)."""
    if work_hw == native_hw:
        return item
    sy, sx = native_hw[0] / work_hw[0], native_hw[1] / work_hw[1]
    scale = np.array([sx, sy, sx, sy])
    boxes = (np.asarray(item.boxes_k4, dtype=np.float64).reshape(-1, 4) * scale).astype(np.float32)
    limit = np.array([native_hw[1], native_hw[0], native_hw[1], native_hw[0]])
    rects = np.minimum(np.rint(np.asarray(item.rects_k4, dtype=np.float64).reshape(-1, 4) * scale), limit)
    return replace(item, boxes_k4=boxes, rects_k4=rects.astype(np.int64))


def process_unit(
    unit: WorkUnit,
    localizer: Localizer,
    cache: RoiCache,
    corpus: Path,
    manifest: pd.DataFrame,  # indexed by item index; at least the unit's rows
    on_progress: Progress | None = None,
    intensity: IntensityConfig | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    store: PackedStore | None = None,
    work_max_side: int = 0,
) -> dict:
    """Localize every slot of `unit` and write it to `cache` (and its images to `store`'s pending items); returns
    counts (done, empty_roi, failed) and the read statistics ('reads', `ReadStats.as_dict`).

    max_bytes: cap on the decoded frames held while reading the unit (`FrameSource`; 0: item by item).
    work_max_side: an image whose longest side is larger is localized at `working_size` (read at its own size,
    packed, then downscaled before anything else holds it): memory is bounded whatever the image's size; boxes and
    rectangles are mapped back to the image's own pixels. 0: every image at its own size."""
    counts = {"done": 0, "empty_roi": 0, "failed": 0}
    source = FrameSource(corpus, max_bytes)
    source.plan((manifest.path[i], manifest.frame[i]) for i in unit.items)
    to_pack = set(unit.items) & set(store.pending(include_failed=True).tolist()) if store is not None else set()
    packed: dict[int, object] = {}  # item -> stored pixels, written with the unit's last batch
    unreadable: dict[int, str] = {}
    for slot in unit.slots:
        images, ok, failed, reasons = [], [], [], []
        native_hw: dict[int, tuple[int, int]] = {}  # the size each image was read at
        for index in slot:
            row = manifest.loc[index]
            try:
                image = source.image(row["path"], int(row["frame"]), row["modality"], intensity)
            except Exception as e:  # one unreadable item must not stop the shard
                failed.append(index)
                reasons.append(_reason(e))
                continue
            if index in to_pack:
                packed[index] = store.pack(image)
            native_hw[index] = image.shape[:2]
            images.append(to_working_size(image, work_max_side))
            del image  # the native image goes now: a slot holds working-size images only
            ok.append(index)
        unreadable.update((i, r) for i, r in zip(failed, reasons, strict=True) if i in to_pack)
        results = _localize_or_isolate(localizer, images, ok, manifest, failed, reasons)
        work_hw = {i: image.shape[:2] for i, image in zip(ok, images, strict=True)}
        results = [(i, _to_native(r, work_hw[i], native_hw[i])) for i, r in results]
        images.clear()
        results = _fitting(results, cache, failed, reasons)
        if failed:
            cache.write_failed(failed, reasons)
            for index, reason in zip(failed, reasons, strict=True):
                log.warning("item %s failed: %s", manifest.item_id[index], reason)
        if results:
            done = [i for i, _ in results]
            items = [r for _, r in results]
            cache.write(
                done,
                [r.roi_hw for r in items],
                [r.saliency_hw for r in items],
                [r.boxes_k4 for r in items],
                [r.score for r in items],
                [FLAG_EMPTY_ROI if r.empty else 0 for r in items],
                [r.rects_k4 for r in items],
                [r.presence for r in items],
            )
            counts["done"] += len(done)
            counts["empty_roi"] += sum(r.empty for r in items)
        counts["failed"] += len(failed)
        if on_progress is not None:
            on_progress(list(slot))
    if unreadable:
        store.write_failed(list(unreadable), list(unreadable.values()))
    if packed:
        store.write_packed(list(packed), list(packed.values()))
    return {**counts, "reads": source.stats.as_dict()}


def _fitting(results: list, cache: RoiCache, failed: list[int], reasons: list[str]) -> list:
    """The results whose boxes and rectangles fit the cache's geometry; the others are recorded failed (a tie of
    component sizes can keep more than top_k components, as in the release)."""
    kept = []
    for index, item in results:
        too_many = [
            f"{len(values)} {what} (the cache holds {limit}; a new cache with a larger geometry.{name} takes it)"
            for values, what, limit, name in (
                (item.boxes_k4, "box prompts", cache.max_boxes, "max_boxes"),
                (item.rects_k4, "expanded-ROI rectangles", cache.max_rects, "max_rects"),
            )
            if len(values) > limit
        ]
        if too_many:
            failed.append(index)
            reasons.append("too many regions: " + "; ".join(too_many))
        else:
            kept.append((index, item))
    return kept


def _localize_or_isolate(localizer, images, ok, manifest, failed, reasons):
    """Run the batch; if it raises, run its items one by one so only the culprit fails."""
    if not ok:
        return []
    modalities = [manifest.modality[i] for i in ok]
    try:
        return list(zip(ok, localizer(images, modalities), strict=True))
    except Exception as e:
        log.warning("batch of %d failed (%s); retrying item by item", len(ok), _reason(e))
    results = []
    for index, image, modality in zip(ok, images, modalities, strict=True):
        try:
            results.append((index, localizer([image], [modality])[0]))
        except Exception as e:
            failed.append(index)
            reasons.append(f"localizer error: {_reason(e)}")
    return results


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


@dataclass
class RunSummary:
    """The state of a cache after a run that wrote into it (localize, import)."""

    items: int
    done: int
    empty_roi: int
    failed: int
    pending: int
    processed: int
    wall_s: float
    command: str = "localize"
    reads: ReadStats | None = None  # what reading the images cost (None: nothing was read)
    packed: str | None = None  # the packed store's state line (`localize run --pack`)
    absent: int = 0  # done items the volume-aware rule found without the structure (`localize.volume`)

    def line(self) -> str:
        rate = self.processed / self.wall_s if self.wall_s > 0 else 0.0
        text = (
            f"{self.command}: {self.done}/{self.items} done ({self.empty_roi} with empty ROI{self._absent()}), "
            f"{self.failed} failed, "
            f"{self.pending} pending; processed {self.processed} items in {self.wall_s:.1f} s ({rate:.1f} items/s)"
        )
        return "\n".join([text] + [f"  {extra}" for extra in (self.reads and self.reads.line(), self.packed) if extra])

    def _absent(self) -> str:
        return f", {self.absent} of them absent by the volume rule" if self.absent else ""


def summarize(
    cache: RoiCache, processed: int, started: float, command: str = "localize", reads: ReadStats | None = None
) -> RunSummary:
    s = cache.summary()
    return RunSummary(
        s["items"],
        s["done"],
        s["empty_roi"],
        s["failed"],
        s["pending"],
        processed,
        time.perf_counter() - started,
        command,
        reads,
        absent=s.get("absent", 0),
    )


def item_progress_bar(total: int, enabled: bool):
    """tqdm bar in items with rate and ETA, on stderr."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="localize", disable=not enabled, smoothing=0.1)


class ItemProgress:
    """Advances `bar` by the items finished for the first time (see the module docstring)."""

    def __init__(self, bar, n_items: int) -> None:
        self.bar = bar
        self._seen = np.zeros(n_items, dtype=bool)

    def __call__(self, items: Sequence[int]) -> None:
        new = np.unique(np.asarray(items, dtype=np.int64))
        new = new[~self._seen[new]]
        self._seen[new] = True
        if len(new):
            self.bar.update(len(new))

    @property
    def finished(self) -> int:
        return int(self._seen.sum())


def unit_sizes(units: list[WorkUnit]) -> int:
    return int(np.sum([u.n_items for u in units])) if units else 0
