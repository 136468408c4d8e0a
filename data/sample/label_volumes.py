"""The truth of the first CT series as label volumes beside the PNG truth: one NIfTI label volume, one DICOM SEG.

`truth/volumes/` holds `ct_series_000.nii.gz` (uint8, 1 = ROI, the series' grid in RAS+: voxel (i, j, k) = column i,
row j of the k-th slice along the normal), `ct_series_000.seg.dcm` (a binary Segmentation Storage object with one
segment, one frame per slice, each at its slice's ImagePositionPatient, referencing the series) and one list per
file for `data.label_volumes` (`nifti.csv`, `seg.csv`: label, images). The geometry is read back from the written
CT headers, so the volumes follow the series whatever order its files are in. Nothing else of the corpus changes.
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from data.sample.spec import Item
from data.sample.writers import write_bytes

VOLUMES_DIR = "volumes"
SERIES = "chest_ct/series_000"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate")
_PATIENT_STUDY += ("StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "FrameOfReferenceUID")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_label_volumes(truth_dir: Path, items: Sequence[Item]) -> list[Path]:
    """Write the label volumes of SERIES's items (in `truth_dir / VOLUMES_DIR`); returns the files written."""
    slices = [item for item in items if item.relpath.startswith(SERIES + "/")]
    if not slices:
        return []
    root = truth_dir.parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        headers = [pydicom.dcmread(root / item.relpath, stop_before_pixels=True) for item in slices]
    cosines = np.array(headers[0].ImageOrientationPatient, float)
    normal = np.cross(cosines[:3], cosines[3:])
    order = np.argsort([float(np.dot(np.array(h.ImagePositionPatient, float), normal)) for h in headers])
    slices, headers = [slices[i] for i in order], [headers[i] for i in order]
    out = truth_dir / VOLUMES_DIR
    name = "ct_" + SERIES.split("/")[-1]
    written = [_write_nifti(out / f"{name}.nii.gz", slices, headers, cosines, normal)]
    written.append(_write_seg(out / f"{name}.seg.dcm", slices, headers))
    for kind, path in (("nifti", written[0]), ("seg", written[1])):
        write_bytes(out / f"{kind}.csv", f"label,images\n{path.name},{SERIES}\n".encode())
    return written


def _write_nifti(
    path: Path, slices: list[Item], headers: list[Dataset], cosines: np.ndarray, normal: np.ndarray
) -> Path:
    spacing = [float(v) for v in headers[0].PixelSpacing]
    first = np.array(headers[0].ImagePositionPatient, float)
    steps = [float(np.dot(np.array(h.ImagePositionPatient, float) - first, normal)) for h in headers]
    step = (steps[-1] / (len(steps) - 1)) if len(steps) > 1 else float(headers[0].SliceThickness)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = cosines[:3] * spacing[1]  # voxel axis i: the image's columns
    affine_lps[:3, 1] = cosines[3:] * spacing[0]  # voxel axis j: its rows
    affine_lps[:3, 2] = normal * step
    affine_lps[:3, 3] = first
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # NIfTI is RAS+
    volume = np.stack([item.rendered.truth_hw.T for item in slices], axis=2).astype(np.uint8)
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header["descrip"] = b"MWM synthetic sample labels"
    write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))
    return path


def _write_seg(path: Path, slices: list[Item], headers: list[Dataset]) -> Path:
    source = headers[0]
    uid = lambda *parts: generate_uid(entropy_srcs=["mwm-sample-seg", str(source.SeriesInstanceUID), *parts])  # noqa: E731
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SEG_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid("instance")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in _PATIENT_STUDY:  # the series' own (synthetic) patient and study
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "SEG", uid("series"), 300
    ds.SeriesDescription, ds.InstanceNumber, ds.ContentLabel = "synthetic lungs", 1, "LUNGS"
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    ds.Manufacturer, ds.ImageType = "MWM sample generator", ["DERIVED", "PRIMARY"]
    ds.SegmentationType, ds.SamplesPerPixel, ds.PhotometricInterpretation = "BINARY", 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.LossyImageCompression = "00"
    ds.Rows, ds.Columns, ds.NumberOfFrames = int(source.Rows), int(source.Columns), len(slices)
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel, segment.SegmentAlgorithmType = 1, "lungs", "MANUAL"
    segment.SegmentedPropertyCategoryCodeSequence = DicomSequence([_code("91723000", "SCT", "Anatomical Structure")])
    segment.SegmentedPropertyTypeCodeSequence = DicomSequence([_code("39607008", "SCT", "Lung")])
    ds.SegmentSequence = DicomSequence([segment])
    referenced = Dataset()
    referenced.SeriesInstanceUID = source.SeriesInstanceUID
    instances = []
    for header in headers:
        instance = Dataset()
        instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
        instances.append(instance)
    referenced.ReferencedInstanceSequence = DicomSequence(instances)
    ds.ReferencedSeriesSequence = DicomSequence([referenced])
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(source.ImageOrientationPatient)
    measures.PixelSpacing, measures.SliceThickness = list(source.PixelSpacing), source.SliceThickness
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = (
        DicomSequence([orientation]),
        DicomSequence([measures]),
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for header in headers:
        frame, position, segment_id = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = list(header.ImagePositionPatient)
        segment_id.ReferencedSegmentNumber = 1
        frame.PlanePositionSequence = DicomSequence([position])
        frame.SegmentIdentificationSequence = DicomSequence([segment_id])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    masks = np.stack([item.rendered.truth_hw for item in slices]).astype(np.uint8)
    ds.PixelData = pack_bits(masks)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
