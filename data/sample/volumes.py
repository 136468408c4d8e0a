"""The volumes corpus (`python -m data sample --mode volumes`): CT and MR series whose target occupies only the
middle slices, to measure volume-aware localization (`localize.volume`, bench/volume_rule.py) against truth.

Per modality, `n` slices in series of `VOLUME_DEPTH` (the last ones may hold fewer; each series is one patient):

- CT (chest_ct/volume_XXX/slice_XXX.dcm, single-frame, positions shuffled against the file names as in the
  sample corpus): the lungs (the truth, the CT prompts' ROI) lie on the middle half of the slice positions, their
  section largest at the centre; the slices above and below show the body, spine, ribs and mediastinum without
  lungs (neck / abdomen): organ-free slices at both ends.
- MR (brain_mri/volume_XXX.nii.gz): one tumour (the truth) shaped as an ellipsoid across the middle half of the
  slices, its section largest at the centre; the other slices are tumour-free brain.

The slices are rendered by the sample corpus' own CT and MR code (`ct._ct_slice`, `mr._mr_slice`), so the small
models (trained on the sample corpus) know what they see. Deterministic in (n, seed, size), as the sample corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data.sample import ct, mr
from data.sample.annotations import README
from data.sample.ct_dicom import CtUids, slice_positions, write_ct_slice
from data.sample.shapes import ellipse
from data.sample.spec import README_MARKER, Item, SampleCorpus, group_sizes, item_rng
from data.sample.writers import write_nifti

VOLUME_DEPTH = 12  # slices per series
TARGET_SHARE = 0.5  # the middle half of each series holds the target
_SERIES_KIND = 6  # item_rng kind of the volumes corpus' series draws (the sample corpus uses 0..5)


def target_positions(depth: int) -> range:
    """Slice positions (0 = lowest) that hold the target: the middle `TARGET_SHARE` of the series, >= 1 free slice
    at each end."""
    free = max(1, round(depth * (1 - TARGET_SHARE) / 2))
    return range(free, depth - free)


def _along(position: int, depth: int) -> float:
    """Where a target slice lies in the target's extent: 0 at its centre, 1 half a slice beyond its ends."""
    span = target_positions(depth)
    centre, half = (span.start + span.stop - 1) / 2, len(span) / 2
    return abs(position - centre) / half


def make_ct_items(out: Path, n: int, seed: int, size: int) -> Iterator[Item]:
    """CT series: lungs on the middle slice positions only (see the module docstring)."""
    uids = CtUids(seed, n, size)
    for s, depth in enumerate(group_sizes(n, VOLUME_DEPTH)):
        series = ct._ct_series(item_rng(seed, ct.SPEC, _SERIES_KIND, s), size)
        ranks = slice_positions(depth, seed, s)
        targets = target_positions(depth)
        for k in range(depth):
            position = ranks[k]
            lungs = position in targets
            # lung section: full at the centre of the lungs, ~15 % smaller at their ends (ct scale 1 + 0.05(k-1.5))
            k_scale = 1.5 - 3.0 * _along(position, depth) if lungs else 1.5
            rng = item_rng(seed, ct.SPEC, _SERIES_KIND + 1, s * VOLUME_DEPTH + position)
            sl = ct._ct_slice(series, k_scale, 0, rng, size, with_lungs=lungs)
            relpath = f"{ct.SPEC.folder}/volume_{s:03d}/slice_{k:03d}.dcm"
            write_ct_slice(out / relpath, sl.image_hw, uids, s, k, 1.0, rank=position)
            yield Item(relpath, 0, ct.SPEC, sl, patient=f"{ct.SPEC.folder}/volume_{s:03d}")


def make_mr_items(out: Path, n: int, seed: int, size: int) -> Iterator[Item]:
    """MR volumes: one ellipsoidal tumour across the middle slices (see the module docstring)."""
    for v, depth in enumerate(group_sizes(n, VOLUME_DEPTH)):
        rng = item_rng(seed, mr.SPEC, _SERIES_KIND, v)
        vol = mr._mr_volume(rng, size)
        centre = (
            vol.center_rc[0] + rng.uniform(-0.1, 0.1) * size,
            vol.center_rc[1] + rng.uniform(-0.1, 0.1) * size,
        )
        radius = rng.uniform(0.07, 0.1) * size
        targets = target_positions(depth)
        slices = []
        for k in range(depth):
            lesions: tuple[np.ndarray, ...] = ()
            if k in targets:  # the ellipsoid's section: r = R sqrt(1 - t^2), t < 1 inside the target's extent
                r = max(3.0, radius * float(np.sqrt(1 - _along(k, depth) ** 2)))
                lesions = (ellipse((size, size), centre, (r, r * 1.2), vol.angle_deg),)
            k_head = 3.0 * k / max(1, depth - 1)  # the head narrows by <= 12 % towards the vertex
            slice_rng = item_rng(seed, mr.SPEC, _SERIES_KIND + 1, v * VOLUME_DEPTH + k)
            slices.append(mr._mr_slice(vol, k_head, len(lesions), slice_rng, size, lesions=lesions))
        relpath = f"{mr.SPEC.folder}/volume_{v:03d}.nii.gz"
        data_hwk = np.stack([s.image_hw for s in slices], axis=-1)
        write_nifti(out / relpath, np.clip(np.round(data_hwk), 0, np.iinfo(np.int16).max).astype(np.int16))
        for k, sl in enumerate(slices):
            yield Item(relpath, k, mr.SPEC, sl)


def write_volumes_readme(corpus: SampleCorpus) -> None:
    """README.txt of the volumes corpus (starts with the sample marker, so the folder can be rewritten)."""
    text = f"""{README_MARKER}
{"=" * len(README_MARKER)}

Volumes corpus made by `python -m data sample --mode volumes` (data/sample/volumes.py) with n={corpus.n},
seed={corpus.seed}, size={corpus.size}. No patient data: simple shapes and noise; fake PHI-like DICOM tags.

{corpus.n} slices per modality in series of <= {VOLUME_DEPTH}; the target lies on the middle half of each series'
slice positions only, the end slices are organ-free:
  chest_ct/volume_XXX/slice_XXX.dcm   single-frame CT; slice order by ImagePositionPatient (not the file names);
                                      target: the lungs (absent from the neck / abdomen slices at both ends)
  brain_mri/volume_XXX.nii.gz         int16 NIfTI; target: one ellipsoidal tumour across the middle slices
  truth/<item_id>.png                 uint8 0/255 target mask at the item's size (empty on organ-free slices)
  labels.csv, coco/instances.json     as in the sample corpus
Used by bench/volume_rule.py (per-slice vs volume-aware localization).
"""
    (corpus.root / README).write_text(text)
