"""Writers of small real image files (DICOM, NIfTI, PNG, TIFF) for the reader, scan and privacy tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

# Values planted in patient/study tags; none may ever leave the reader.
PLANTED_TAGS = {
    "PatientName": "Zzplanted^Secret",
    "PatientID": "PID-PLANTED-123",
    "PatientBirthDate": "19010203",
    "StudyDate": "19020304",
    "SeriesDate": "19030405",
    "AccessionNumber": "ACC-PLANTED-77",
    "InstitutionName": "Plantedville Secret Hospital",
    "ReferringPhysicianName": "Drplanted^Whoever",
    "StudyDescription": "PLANTED STUDY DESCRIPTION",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.424242.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.424242.2",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.424242.3",
}


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str | None = "CT",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    tags: dict[str, object] | None = None,
    file_meta: bool = True,
    compress: str | None = None,
) -> Path:
    """A DICOM file with `pixels` (frames stacked on axis 0 when 3-D and not RGB) and the given tags; `compress`: a
    transfer syntax UID pydicom can encode (e.g. RLE Lossless). The SOP class is the modality's image storage
    (not Secondary Capture, which the scan excludes by default); `tags` may set another SOPClassUID."""
    sop_uid = str((tags or {}).get("SOPInstanceUID", pydicom.uid.generate_uid()))
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}.get(modality or "", DigitalXRayImageStorageForPresentation)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    if modality is not None:
        ds.Modality = modality
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if compress is not None:
        ds.compress(compress)
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_meta:
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare dataset, no preamble or file meta, as some old archives hold
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4) if affine is None else affine), path)
    return path


def write_opencv(path: Path, pixels: np.ndarray) -> Path:
    """A PNG/TIFF/JPEG through OpenCV; `pixels` grey or RGB (converted to OpenCV's BGR)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = pixels[..., ::-1] if pixels.ndim == 3 else pixels
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))
    return path


def cut(source: Path, target: Path, keep: int) -> Path:
    """Copy `source` to `target` without its last `keep` < 0 bytes (or keeping only `keep` >= 0 bytes)."""
    data = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[:keep])
    return target


def pydicom_file(name: str) -> Path:
    """A test file shipped with pydicom; the test is skipped when this installation lacks it."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)
