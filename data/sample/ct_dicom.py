"""CT DICOM files of the sample corpus: fake but plausible patient/study modules, deterministic UIDs, HU rescale.

Each series is its own synthetic patient, with PHI-like PatientName and PatientID values (`sample_patient`) that
no scan output may hold. Slice positions are a shuffle of the file names (`slice_positions`): file slice_000 is
not the first slice along the normal, and InstanceNumber follows the file names, so only ImagePositionPatient
gives the order. Three images that the scan excludes by default sit beside the series (`write_ct_extras`): a
localizer, a derived image and a secondary capture with burned-in annotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

CT_INTERCEPT = -1024.0
CT_SLICE_MM = 2.5
# PHI-like values (obviously fake) in the patient module: the privacy tests look for them in every output.
_PATIENT_NAMES = ("DOE^JOHN^SYNTHETIC", "ROE^JANE^SYNTHETIC", "POE^EDGAR^SYNTHETIC", "MOE^ALICE^SYNTHETIC")
# Extra images excluded by the scan's default rules: (file name, ImageType, SOP class, BurnedInAnnotation).
CT_EXTRAS = (
    ("scout_000.dcm", ["ORIGINAL", "PRIMARY", "LOCALIZER"], CTImageStorage, None),
    ("derived_000.dcm", ["DERIVED", "SECONDARY", "MPR"], CTImageStorage, None),
    ("screenshot_000.dcm", ["DERIVED", "PRIMARY"], SecondaryCaptureImageStorage, "YES"),
)


def sample_patient(seed: int, patient: int) -> tuple[str, str]:
    """(PatientName, PatientID) of synthetic patient `patient`: a name and an MRN-like number, both fake."""
    name = _PATIENT_NAMES[patient % len(_PATIENT_NAMES)]
    if patient >= len(_PATIENT_NAMES):
        name += f"^{patient}"
    return name, f"MRN{4821390 + 7919 * patient + 100003 * seed:09d}"


def slice_positions(depth: int, seed: int, series: int) -> list[int]:
    """Rank along the slice normal (0: lowest) of file slice_k, k < depth: a seeded shuffle that, from 3 slices
    on, is neither the file-name order nor its reverse."""
    rng = np.random.default_rng([seed, 2, 7, series])
    while True:
        order = rng.permutation(depth).tolist()
        if depth < 3 or order not in (list(range(depth)), list(range(depth))[::-1]):
            return order


@dataclass(frozen=True)
class CtUids:
    """Deterministic DICOM UIDs for one corpus, hashed from the generator arguments."""

    seed: int
    n: int
    size: int

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=["mwm-sample", str(self.seed), str(self.n), str(self.size), *map(str, parts)])


def _ct_dataset(
    uids: CtUids, sop_class: str, sop_instance: str, series_key: str, series_number: int, size: int, patient: int
) -> Dataset:
    """Patient/study/series/equipment modules shared by every CT file (fake but PHI-like identifiers)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName, ds.PatientID = sample_patient(uids.seed, patient)
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids.uid("study", patient)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"SYN{patient + 1:04d}"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "NOBODY^SYNTHETIC"
    ds.InstitutionName = "MWM SYNTHETIC SAMPLE"
    ds.StudyDescription = "SYNTHETIC CHEST CT"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = uids.uid("series", series_key)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"synthetic {series_key}"
    ds.FrameOfReferenceUID = uids.uid("frame-of-reference", series_key)
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "MWM sample generator"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    return ds


def _ct_geometry(size: int, z_mm: float) -> tuple[list[float], list[float], list[float]]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) for a 350 mm axial field of view."""
    spacing = 350.0 / size
    return [-175.0, -175.0, z_mm], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [spacing, spacing]


def _hu_to_stored(hu: np.ndarray, slope: float, dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round((hu - CT_INTERCEPT) / slope), max(info.min, 0), info.max).astype(dtype)


def write_ct_slice(
    path: Path, hu_hw: np.ndarray, uids: CtUids, series: int, k: int, slope: float, rank: int | None = None
) -> None:
    """Single-frame CT Image Storage of patient `series`; uint16 stored values, HU = stored * slope + intercept.
    The slice lies at z = rank * CT_SLICE_MM (`rank` default: -k, the file order), InstanceNumber k + 1."""
    key = f"series_{series:03d}"
    ds = _ct_dataset(uids, CTImageStorage, uids.uid("instance", key, k), key, series + 1, hu_hw.shape[0], series)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = k + 1
    z = (rank if rank is not None else -k) * CT_SLICE_MM
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = _ct_geometry(hu_hw.shape[0], z)
    ds.SliceLocation = z
    ds.SliceThickness = CT_SLICE_MM
    ds.RescaleIntercept = CT_INTERCEPT
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    stored = _hu_to_stored(hu_hw, slope, np.uint16)
    ds.set_pixel_data(stored, "MONOCHROME2", 16 if slope < 1 else 12, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_ct_multiframe(path: Path, hu_fhw: np.ndarray, uids: CtUids, series_number: int) -> None:
    """Enhanced CT Image Storage of patient `series_number - 1`: int16 frames, geometry and rescale in the
    functional group sequences."""
    key = "multiframe_000"
    ds = _ct_dataset(
        uids, EnhancedCTImageStorage, uids.uid("instance", key), key, series_number, hu_fhw.shape[1], series_number - 1
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    _, orientation, spacing = _ct_geometry(hu_fhw.shape[1], 0.0)
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = spacing
    shared.PixelMeasuresSequence[0].SliceThickness = CT_SLICE_MM
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = orientation
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleIntercept = CT_INTERCEPT
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1.0
    shared.PixelValueTransformationSequence[0].RescaleType = "HU"
    shared.FrameVOILUTSequence = Sequence([Dataset()])
    shared.FrameVOILUTSequence[0].WindowCenter = -600
    shared.FrameVOILUTSequence[0].WindowWidth = 1500
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in range(hu_fhw.shape[0]):
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = _ct_geometry(hu_fhw.shape[1], -f * CT_SLICE_MM)[0]
        item.FrameContentSequence = Sequence([Dataset()])
        item.FrameContentSequence[0].StackID = "1"
        item.FrameContentSequence[0].InStackPositionNumber = f + 1
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.set_pixel_data(_hu_to_stored(hu_fhw, 1.0, np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_ct_extras(folder: Path, hu_hw: np.ndarray, uids: CtUids) -> list[Path]:
    """The CT_EXTRAS of patient 0 (study of series_000, series of their own), pixels from `hu_hw`: a localizer
    (coronal), a derived image, a secondary capture with burned-in annotation. Returns their paths."""
    paths = []
    for number, (name, image_type, sop_class, burned_in) in enumerate(CT_EXTRAS):
        key = name.removesuffix(".dcm")
        ds = _ct_dataset(uids, sop_class, uids.uid("instance", key), key, 100 + number, hu_hw.shape[0], 0)
        ds.ImageType = image_type
        ds.InstanceNumber = 1
        position, orientation, spacing = _ct_geometry(hu_hw.shape[0], 0.0)
        if "LOCALIZER" in image_type:
            orientation = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # coronal projection
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = position, orientation, spacing
        ds.SliceThickness = CT_SLICE_MM
        if burned_in:
            ds.BurnedInAnnotation = burned_in
        hu = hu_hw.copy()
        if burned_in:  # a text band as a screenshot has
            hu[2:8, 4 : hu.shape[1] // 2] = 1500.0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = CT_INTERCEPT, 1.0, "HU"
        ds.set_pixel_data(_hu_to_stored(hu, 1.0, np.uint16), "MONOCHROME2", 12, generate_instance_uid=False)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
