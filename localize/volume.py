"""Volume-aware localization: a pass over each series' per-slice ROIs once all its slices are done.

The release localizes every slice alone (`mode: slice`, the default): every non-blank slice gets a ROI, also the
neck slices of a chest CT asked for "lungs", and neighbouring slices disagree. With `mode: series` the per-slice work
(saliency, SAM) is unchanged, and afterwards, per series in slice order:

1. presence: each slice's presence score (the image-text similarity of the slice and its prompts, the highest over
   the prompts, computed by the Localizer) is scaled to its series, r = (p - min) / (max - min); a slice with
   r < `presence_threshold` is *absent*: its ROI is emptied and it is flagged FLAG_ABSENT. A series whose scores
   span less than `min_presence_range` shows no contrast between slices: none of its slices is marked absent.
2. (optional, `z_smooth: true`) smoothing along the slice axis: the stored saliency maps are smoothed with the
   weights [1, 2, 1] / 4 over slice positions z-1, z, z+1 (slice_index order; a missing neighbour's weight is
   left out and the others renormalised, so an end slice gets (2 s_0 + s_1) / 3), then binarised as the per-slice
   refinement does (the cache's refine threshold and top_k components). SAM is not run again (the pass has no
   images): the components of the slice's ROI that overlap no part of the smoothed map's ROI are dropped.
3. consistency: an 8-connected component of a slice's ROI that overlaps no ROI pixel of the slices within
   ±`consistency_k` positions (slice_index, the other slices only) is dropped (k = 0: no consistency rule). A series
   of one slice position (a 2-D image) is left as it is.

The pass reads the finished series from the ROI cache, so it sees every slice of a series however the job split
the series into work units (shards, Dask tasks) and whichever run finished them (resume). Items it has processed
carry FLAG_SERIES_PASS; a series runs again when one of its items is rewritten (e.g. a retried failure).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from data.roi_cache import DONE, FLAG_ABSENT, FLAG_EMPTY_ROI, FLAG_SERIES_PASS, PENDING, RoiCache
from localize.components import binarise, largest_components

log = logging.getLogger(__name__)
VOLUME_MODES = ("slice", "series")


@dataclass(frozen=True)
class VolumeConfig:
    """`mode: slice` is the release (each slice alone); `series` adds the presence and consistency rules."""

    mode: str = "slice"
    presence_threshold: float = 0.5  # relative presence (0 = the series' lowest, 1 = its highest) below: absent
    min_presence_range: float = 0.02  # in similarity units; a flatter series has no absent slice
    consistency_k: int = 1  # a component needs a ROI within ±k slices; 0 disables
    z_smooth: bool = False  # smooth the saliency along the slice axis ([1, 2, 1] / 4) and keep what it still shows

    def __post_init__(self) -> None:
        if self.mode not in VOLUME_MODES:
            raise ValueError(f"volume mode must be one of {VOLUME_MODES}, got {self.mode!r}")
        if not 0.0 <= self.presence_threshold <= 1.0:
            raise ValueError(f"volume presence_threshold must be in [0, 1], got {self.presence_threshold}")
        if self.min_presence_range < 0 or int(self.consistency_k) < 0:
            raise ValueError(f"volume min_presence_range and consistency_k must be >= 0; got {self}")

    @property
    def enabled(self) -> bool:
        return self.mode == "series"

    def provenance(self) -> dict:
        fields = asdict(self)
        if not self.z_smooth:  # only when set: caches written before the option existed stay resumable
            del fields["z_smooth"]
        return {"rule": "series (presence + consistency)", **fields}


def absent_slices(presence: np.ndarray, config: VolumeConfig) -> np.ndarray:
    """Bool per slice: the structure is absent (relative presence below the threshold). NaN scores (blank slices,
    no score) are never marked absent and do not set the series' range."""
    presence = np.asarray(presence, dtype=np.float64)
    finite = np.isfinite(presence)
    absent = np.zeros(presence.shape, dtype=bool)
    if finite.sum() < 2:
        return absent
    lo, hi = presence[finite].min(), presence[finite].max()
    if hi - lo < config.min_presence_range:
        return absent
    relative = (presence[finite] - lo) / (hi - lo)
    absent[finite] = relative < config.presence_threshold
    return absent


Z_WEIGHTS = (0.25, 0.5, 0.25)  # slices z-1, z, z+1


def smooth_along_slices(maps_zhw: np.ndarray, slice_index: np.ndarray) -> np.ndarray:
    """Each map replaced by the `Z_WEIGHTS` mean of itself and the maps at slice positions z-1 and z+1 (rows in any
    order; neighbours by `slice_index`); a missing neighbour's weight is left out and the rest renormalised."""
    maps_zhw = np.asarray(maps_zhw, dtype=np.float32)
    slice_index = np.asarray(slice_index, dtype=np.int64)
    row_of = {int(z): j for j, z in enumerate(slice_index)}
    out = np.empty_like(maps_zhw)
    for j, z in enumerate(slice_index):
        total, weight = np.zeros(maps_zhw.shape[1:], np.float32), 0.0
        for offset, w in zip((-1, 0, 1), Z_WEIGHTS, strict=True):
            row = j if offset == 0 else row_of.get(int(z) + offset)
            if row is not None:
                total += w * maps_zhw[row]
                weight += w
        out[j] = total / weight
    return out


def smoothed_support(
    masks_zhw: np.ndarray, maps_zhw: np.ndarray, slice_index: np.ndarray, threshold: float, top_k: int
) -> np.ndarray:
    """Each slice's ROI without the components that overlap nothing of the smoothed map's own ROI (binarised at
    `threshold`, the `top_k` largest components: the per-slice refinement's first step)."""
    masks_zhw = np.asarray(masks_zhw, dtype=bool)
    if len(np.unique(slice_index)) < 2:
        return masks_zhw.copy()
    smoothed = smooth_along_slices(maps_zhw, slice_index)
    out = np.zeros_like(masks_zhw)
    for z in range(len(masks_zhw)):
        if not masks_zhw[z].any():
            continue
        support_hw = largest_components(binarise(smoothed[z], threshold), top_k)
        n, labels_hw = cv2.connectedComponents(masks_zhw[z].astype(np.uint8), connectivity=8)
        overlapping = np.unique(labels_hw[support_hw & masks_zhw[z]])
        out[z] = np.isin(labels_hw, overlapping[overlapping > 0])
    return out


def consistent_masks(masks_zhw: np.ndarray, slice_index: np.ndarray, k: int) -> np.ndarray:
    """Each slice's ROI without the components that overlap no ROI of the other slices within ±k slice positions.

    masks_zhw: (Z, H, W) bool, one per item of the series (any order); slice_index: (Z,) their positions."""
    masks_zhw = np.asarray(masks_zhw, dtype=bool)
    slice_index = np.asarray(slice_index, dtype=np.int64)
    if k <= 0 or len(np.unique(slice_index)) < 2:  # a single image (X-ray, photo) has no neighbours to agree with
        return masks_zhw.copy()
    out = np.zeros_like(masks_zhw)
    for z in range(len(masks_zhw)):
        if not masks_zhw[z].any():
            continue
        near = np.abs(slice_index - slice_index[z]) <= k
        near[z] = False
        support_hw = masks_zhw[near].any(axis=0) if near.any() else np.zeros(masks_zhw.shape[1:], bool)
        n, labels_hw = cv2.connectedComponents(masks_zhw[z].astype(np.uint8), connectivity=8)
        overlapping = np.unique(labels_hw[support_hw & masks_zhw[z]])
        out[z] = np.isin(labels_hw, overlapping[overlapping > 0])
    return out


def volume_rule(
    masks_zhw: np.ndarray, presence: np.ndarray, slice_index: np.ndarray, config: VolumeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(new masks, absent) for one series: presence first, then consistency over the slices still present."""
    absent = absent_slices(presence, config)
    masks_zhw = np.asarray(masks_zhw, dtype=bool) & ~absent[:, None, None]
    return consistent_masks(masks_zhw, slice_index, int(config.consistency_k)), absent


def _kept_rects(rects_r4: np.ndarray, mask_ss: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The rectangles (native pixels) that still cover a ROI pixel of the S x S mask."""
    s = mask_ss.shape[0]
    h, w = size_hw
    kept = []
    for x0, y0, x1, y1 in rects_r4:
        xs0, xs1 = int(np.floor(x0 * s / w)), int(np.ceil(x1 * s / w))
        ys0, ys1 = int(np.floor(y0 * s / h)), int(np.ceil(y1 * s / h))
        if mask_ss[ys0:ys1, xs0:xs1].any():
            kept.append((x0, y0, x1, y1))
    return np.asarray(kept, dtype=np.int64).reshape(-1, 4)


def series_pass(cache: RoiCache, config: VolumeConfig) -> dict[str, int]:
    """Apply the volume rule to every series of `cache` whose items are all finished and not yet passed.

    Returns counts: series passed, slices marked absent, slices that lost a component to the consistency rule."""
    counts = {"series": 0, "absent": 0, "components_dropped_slices": 0}
    if not config.enabled:
        return counts
    table = cache.table()
    if "series_key" not in table or "slice_index" not in table:
        log.warning("%s: no series keys: the volume-aware pass needs a manifest with them (docs/CORPUS.md)", cache.path)
        return counts
    status = cache.status()
    table["status_code"] = status
    refine = {"threshold": 0.3, "top_k": 2, **cache.provenance.get("refine", {})}  # the release's, when unrecorded
    s = cache.mask_size
    for _series, rows in table.groupby("series_key", sort=False):
        if (rows.status_code == PENDING).any() or rows.series_pass[rows.status_code == DONE].all():
            continue
        rows = rows[rows.status_code == DONE]
        idx = rows.index.to_numpy()
        # a fresh reader per series: a reader keeps the shard indexes it saw first, and this pass rewrites shards
        reader = RoiCache.open(cache.path)
        masks = np.stack([reader.read_mask(int(i), (s, s)).astype(bool) for i in idx])
        saliency = [reader.read_saliency(int(i), (s, s)) for i in idx]
        positions = rows.slice_index.to_numpy()
        filtered = masks
        if config.z_smooth:
            filtered = smoothed_support(masks, np.stack(saliency), positions, refine["threshold"], refine["top_k"])
        new_masks, absent = volume_rule(filtered, rows.presence.to_numpy(), positions, config)
        rects, scores, flags = [], [], []
        for j, i in enumerate(idx):
            size_hw = int(rows.height.iloc[j]), int(rows.width.iloc[j])
            rects.append(_kept_rects(reader.read_rects(int(i)), new_masks[j], size_hw))
            changed = not np.array_equal(new_masks[j], masks[j])
            empty = not new_masks[j].any()
            score = float(rows.score.iloc[j])
            if changed:  # the mean saliency inside the new ROI, on the stored S x S maps
                score = 0.0 if empty else float(saliency[j][new_masks[j]].mean())
            counts["components_dropped_slices"] += int(changed and not absent[j])
            flags.append((FLAG_EMPTY_ROI if empty else 0) | (FLAG_ABSENT if absent[j] else 0) | FLAG_SERIES_PASS)
            scores.append(score)
        cache.write(
            idx,
            new_masks.astype(np.uint8),
            saliency,
            [reader.read_boxes(int(i)) for i in idx],
            scores,
            flags,
            rects,
        )
        counts["series"] += 1
        counts["absent"] += int(absent.sum())
    return counts
