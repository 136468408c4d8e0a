"""Synthetic CT corpora for the loader benchmark: gzipped NIfTI volumes, RLE multi-frame DICOM, the slices as PNGs.

Each volume is a chest-like phantom in HU (air, body, two lungs, a spine, a moving nodule) with noise, int16: gzip
and RLE compress it about as much as they compress real CT. Corpora are written once under a work folder and
reused while their parameters (recorded in `<corpus>.json` beside each) do not change.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np


def ct_phantom(side: int, slices: int, seed: int) -> np.ndarray:
    """(side, side, slices) int16 HU."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:side, :side] / side).astype(np.float32)
    volume = np.empty((side, side, slices), np.int16)
    for z in range(slices):
        t = z / max(1, slices - 1)
        hu = np.full((side, side), -1000.0, np.float32)
        hu[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1] = 40.0
        for cx in (0.33, 0.67):
            hu[((xx - cx) / (0.12 + 0.03 * t)) ** 2 + ((yy - 0.47) / 0.2) ** 2 < 1] = -850.0
        hu[((xx - 0.5) / 0.05) ** 2 + ((yy - 0.72) / 0.05) ** 2 < 1] = 700.0
        hu[((xx - 0.3 - 0.1 * t) / 0.03) ** 2 + ((yy - 0.45) / 0.03) ** 2 < 1] = 20.0
        volume[:, :, z] = np.clip(hu + rng.normal(0, 15, hu.shape), -1024, 3071).astype(np.int16)
    return volume


def write_once(folder: Path, params: dict, write: Callable[[Path], None]) -> Path:
    """`write(folder)` unless `<folder>.json` beside it records the same `params` (then the corpus is reused)."""
    marker = folder.with_name(folder.name + ".json")
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write(folder)
    marker.write_text(json.dumps(params))
    return folder


def nifti_corpus(folder: Path, volumes: int, side: int, slices: int) -> Path:
    """ct/vol_<v>.nii.gz: `volumes` gzipped int16 volumes (0.7 x 0.7 x 2.5 mm, RAS)."""
    import nibabel as nib

    def write(out: Path) -> None:
        (out / "ct").mkdir()
        for v in range(volumes):
            image = nib.Nifti1Image(ct_phantom(side, slices, v), np.diag([0.7, 0.7, 2.5, 1.0]))
            nib.save(image, out / "ct" / f"vol_{v}.nii.gz")

    return write_once(folder, {"kind": "nifti_gz", "volumes": volumes, "side": side, "slices": slices}, write)


def png_corpus(folder: Path, volumes: int, side: int, slices: int) -> Path:
    """ct/vol_<v>/slice_<k>.png: the same phantom slices as 16-bit PNGs (HU + 1024), one file per slice."""
    import cv2

    def write(out: Path) -> None:
        for v in range(volumes):
            (out / "ct" / f"vol_{v}").mkdir(parents=True)
            volume = ct_phantom(side, slices, v).astype(np.int32) + 1024
            for k in range(slices):
                cv2.imwrite(str(out / "ct" / f"vol_{v}" / f"slice_{k:03d}.png"), volume[:, :, k].astype(np.uint16))

    return write_once(folder, {"kind": "png", "volumes": volumes, "side": side, "slices": slices}, write)


def dicom_corpus(folder: Path, files: int, side: int, frames: int) -> Path:
    """ct/mf_<f>.dcm: `files` multi-frame CT files, RLE Lossless, stored value = HU + 1024."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

    def write(out: Path) -> None:
        (out / "ct").mkdir()
        for f in range(files):
            uid = pydicom.uid.generate_uid(entropy_srcs=["mwm-bench-loader", str(f), str(side), str(frames)])
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.Modality = "CT"
            stored = (ct_phantom(side, frames, 100 + f).astype(np.int32) + 1024).astype(np.uint16)
            ds.set_pixel_data(np.ascontiguousarray(stored.transpose(2, 0, 1)), "MONOCHROME2", 16)
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.compress(RLELossless)
            ds.save_as(out / "ct" / f"mf_{f}.dcm", enforce_file_format=True)

    return write_once(folder, {"kind": "dicom_rle", "files": files, "side": side, "frames": frames}, write)


def sample_corpus(folder: Path, n: int) -> Path:
    """The sample corpus (`python -m data sample --n N`)."""
    from data.sample import write_sample_corpus

    return write_once(folder, {"kind": "sample", "n": n}, lambda out: write_sample_corpus(out, n, seed=0))
