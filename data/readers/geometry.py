"""Where a file sits in a corpus: its patient, study and series (as keyed hashes) and each frame's slice geometry.

DICOM: PatientID, StudyInstanceUID and SeriesInstanceUID are parsed only to be hashed here with the corpus key
(`data.keys`); their values never leave `dicom_geometry`. Geometry comes from ImagePositionPatient,
ImageOrientationPatient, PixelSpacing and SliceThickness, for multi-frame files from the per-frame and shared
functional groups. The exclusion rules (localizer, derived/secondary, secondary capture, burned-in annotation)
read ImageType, SOPClassUID and BurnedInAnnotation. NIfTI: one file is one series; the geometry of the canonical
(RAS+) slices comes from the header. Raster files: one series, no geometry.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from data.keys import CorpusKey

# Secondary Capture Image Storage, and its multi-frame variants 1.2.840.10008.5.1.4.1.1.7.1 to .4.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_IDENTITY_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
_GEOMETRY_TAGS = [
    "SOPClassUID",
    "ImageType",
    "BurnedInAnnotation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]

Vector = tuple[float, ...]


@dataclass(frozen=True)
class FileGeometry:
    """One file's place in the corpus. Keys are None where the file does not name them (DICOM without the tag,
    every non-DICOM file): the scan then fills them from the user's mapping or the path."""

    patient_key: str | None
    study_key: str | None
    series_key: str | None
    positions: tuple[Vector | None, ...]  # per frame: ImagePositionPatient (mm), None where absent
    orientations: tuple[Vector | None, ...]  # per frame: the 6 direction cosines (row, column)
    spacing_rc: tuple[float, float] | None  # (between rows, between columns) in mm
    thickness: float | None
    exclusions: tuple[str, ...] = ()


def exclusion_reasons(image_type: list[str], sop_class: str, burned_in: str) -> tuple[str, ...]:
    """Why an image is not one to pretrain on (empty: it is): scouts, derived and secondary images, screenshots."""
    words = [str(w).strip().upper() for w in image_type]
    reasons = []
    if "LOCALIZER" in words:
        reasons.append("localizer/scout (ImageType LOCALIZER)")
    if words[:1] == ["DERIVED"] or words[1:2] == ["SECONDARY"]:
        reasons.append(f"derived or secondary image (ImageType {'/'.join(words[:2])})")
    if sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + "."):
        reasons.append(f"secondary capture (SOP class {sop_class})")
    if burned_in.strip().upper() == "YES":
        reasons.append("burned-in annotation (BurnedInAnnotation YES)")
    return tuple(reasons)


def dicom_geometry(path: str | os.PathLike, key: CorpusKey) -> FileGeometry:
    """The keyed identity, per-frame geometry and exclusion reasons of a DICOM file (raises on an unreadable one)."""
    import pydicom

    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_IDENTITY_TAGS + _GEOMETRY_TAGS, force=True)
    keys = {}
    for tag, kind in zip(_IDENTITY_TAGS, ("patient", "study", "series"), strict=True):
        value = str(ds.get(tag) or "").strip()
        keys[kind] = key.key(kind, value) if value else None
    for tag in _IDENTITY_TAGS:  # hashed: drop the values before anything else could show them (a repr, an error)
        if tag in ds:
            delattr(ds, tag)
    try:
        n_frames = max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        n_frames = 1
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    positions, orientations, spacing, thickness = [], [], None, None
    for index in range(n_frames):
        groups = [g for g in (per_frame[index] if index < len(per_frame) else None, shared) if g is not None]
        positions.append(_vector(_from_groups(groups, ds, "PlanePositionSequence", "ImagePositionPatient"), 3))
        orientations.append(_vector(_from_groups(groups, ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6))
        if index == 0:
            spacing = _vector(_from_groups(groups, ds, "PixelMeasuresSequence", "PixelSpacing"), 2)
            thickness = _vector(_from_groups(groups, ds, "PixelMeasuresSequence", "SliceThickness"), 1)
    sop_class = str(ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "") or "")
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    return FileGeometry(
        keys["patient"],
        keys["study"],
        keys["series"],
        tuple(positions),
        tuple(orientations),
        spacing if spacing is None else (spacing[0], spacing[1]),
        None if thickness is None else thickness[0],
        exclusion_reasons(image_type, sop_class.strip(), str(ds.get("BurnedInAnnotation") or "")),
    )


def _from_groups(groups: list, ds, sequence: str, keyword: str):
    """`keyword` from the first functional group holding it (per-frame, then shared), else from the top level."""
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return ds.get(keyword)


def _vector(value, n: int) -> Vector | None:
    """`n` finite floats from a DICOM value (multi-valued or single), or None."""
    if value is None:
        return None
    try:
        values = [float(v) for v in (value if hasattr(value, "__len__") and not isinstance(value, str) else [value])]
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return tuple(values)


def nifti_geometry(path: str | os.PathLike, n_frames: int) -> FileGeometry:
    """Geometry of the canonical (RAS+) slices of a NIfTI file (as `data.readers.nifti` yields them): frame f is
    slice f mod nz, at the canonical affine's position of that slice; spacing from the canonical axes."""
    import nibabel as nib

    image = nib.load(str(path))
    shape = tuple(image.shape[:3]) + (1,) * max(0, 3 - len(image.shape))
    ornt = nib.orientations.io_orientation(image.affine)
    if np.isnan(ornt).any():
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    canonical = image.affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    nz = int(shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])]) or 1
    # Canonical frames are img[:, :, z]: rows run along the first canonical axis (R), columns along the second
    # (A). The orientation is given as (first axis, second axis) so that its normal is the third axis (S) and
    # slice_index follows z, as frames do.
    axes = canonical[:3, :3]
    first, second = axes[:, 0], axes[:, 1]
    positions = tuple(tuple(float(v) for v in axes @ [0, 0, f % nz] + canonical[:3, 3]) for f in range(n_frames))
    orientation = tuple(float(v) for v in np.concatenate([_unit(first), _unit(second)]))
    spacing = (float(np.linalg.norm(first)), float(np.linalg.norm(second)))
    return FileGeometry(
        None, None, None, positions, (orientation,) * n_frames, spacing, float(np.linalg.norm(axes[:, 2]))
    )


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
