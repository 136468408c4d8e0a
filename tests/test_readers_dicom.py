"""DICOM reading on real files (pydicom's test data) and small written ones: physical units, colour, frames."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from data.readers import (
    UnreadableImage,
    is_candidate,
    iter_frames,
    read_frame,
)
from tests._readers_files import cut, pydicom_file, write_dicom


def test_ct_small_is_in_hounsfield_units():
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    frames = list(iter_frames(path))
    assert len(frames) == 1
    frame = frames[0]
    assert (frame.modality, frame.frame, frame.source_format) == ("CT", 0, "dicom")
    assert frame.pixels.dtype == np.float32 and frame.pixels.shape == (ds.Rows, ds.Columns)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(frame.pixels, expected.astype(np.float32))
    assert float(ds.RescaleIntercept) == -1024  # the slope/intercept were really needed
    # A CT slice: air-ish and tissue-ish values, all inside the physical HU range.
    assert -1024 <= frame.pixels.min() < -500 and 0 < frame.pixels.max() <= 3071


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_and_other_encodings_equal_the_uncompressed_reference(name):
    reference = read_frame(pydicom_file("MR_small.dcm"), 0)
    decoded = read_frame(pydicom_file(name), 0)
    assert decoded.modality == reference.modality == "MR"
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_jpeg_and_ybr_dicom_decode_to_rgb(name):
    reference = read_frame(pydicom_file("SC_rgb_rle.dcm"), 0).pixels  # lossless RGB
    decoded = read_frame(pydicom_file(name), 0).pixels
    assert decoded.shape == reference.shape == (100, 100, 3)
    # YBR left unconverted or channels swapped differ by ~50 on average; lossy JPEG by < 1.
    assert np.abs(decoded - reference).mean() < 2.0


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",  # JPEG 2000, NM
        "693_J2KI.dcm",  # JPEG 2000 lossy CT, rescaled
        "JPGExtended.dcm",  # 12-bit JPEG
        "JPEGLSNearLossless_16.dcm",
        "image_dfl.dcm",  # deflated: read whole, not frame by frame
        "SC_rgb_jpeg.dcm",  # implicit VR despite an explicit transfer syntax
    ],
)
def test_dicom_matches_pydicom(name):
    path = pydicom_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        expected = ds.pixel_array.astype(np.float64)
    if "RescaleSlope" in ds:
        expected = expected * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    frame = read_frame(path, 0)
    np.testing.assert_array_equal(frame.pixels, expected.astype(np.float32))
    assert frame.modality in {"CT", "OT"}


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"])
def test_multi_frame_dicom_is_one_frame_per_frame(name):
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    frames = list(iter_frames(path))
    assert len(frames) == int(ds.NumberOfFrames) > 1
    assert [f.frame for f in frames] == list(range(len(frames)))
    reference = ds.pixel_array  # pydicom's own decode, YBR converted to RGB
    for k in (0, len(frames) - 1):
        np.testing.assert_array_equal(frames[k].pixels, reference[k].astype(np.float32))
        np.testing.assert_array_equal(read_frame(path, k).pixels, frames[k].pixels)
    with pytest.raises(IndexError, match="out of range"):
        read_frame(path, len(frames))


def test_palette_colour_dicom_becomes_rgb():
    path = pydicom_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    frame = read_frame(path, 0)
    assert frame.pixels.shape == (ds.Rows, ds.Columns, 3)
    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)[..., :3]
    np.testing.assert_array_equal(frame.pixels, expected.astype(np.float32))


def test_monochrome1_is_inverted_and_rescaled(tmp_path):
    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    path = write_dicom(
        tmp_path / "mono1.dcm", stored, modality="CR", photometric="MONOCHROME1", bits_stored=12, slope=2, intercept=10
    )
    frame = read_frame(path, 0)
    assert frame.modality == "XR"
    rescaled = stored.astype(np.float32) * 2 + 10  # representable range [10, 8200]
    np.testing.assert_array_equal(frame.pixels, (10 + 8200) - rescaled)


def test_enhanced_multi_frame_uses_per_frame_rescale(tmp_path):
    stored = np.stack([np.full((8, 8), 100, np.int16), np.full((8, 8), 200, np.int16)])

    def transform(slope: float, intercept: float) -> Dataset:
        item, group = Dataset(), Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = slope, intercept, "HU"
        group.PixelValueTransformationSequence = [item]
        return group

    path = write_dicom(
        tmp_path / "enhanced.dcm",
        stored,
        tags={"PerFrameFunctionalGroupsSequence": [transform(1, -1000), transform(2, -500)]},
    )
    frames = list(iter_frames(path))
    assert [float(f.pixels[0, 0]) for f in frames] == [100 - 1000, 2 * 200 - 500]


def test_dicom_without_file_meta_and_without_suffix(tmp_path):
    stored = np.arange(16 * 16, dtype=np.int16).reshape(16, 16)
    bare = write_dicom(tmp_path / "bare.dcm", stored, modality="MR", file_meta=False)
    assert not bare.read_bytes()[128:132] == b"DICM"
    np.testing.assert_array_equal(read_frame(bare, 0).pixels, stored.astype(np.float32))
    # DICOM files named by UID: no known suffix, found by their DICM marker.
    by_uid = write_dicom(tmp_path / "1.2.826.0.1.3680043.2.1143.77", stored, modality="MR")
    assert is_candidate(by_uid)
    frame = read_frame(by_uid, 0)
    assert (frame.source_format, frame.modality) == ("dicom", "MR")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: (d / "zero.dcm").write_bytes(b""), "empty file"),
        (lambda d: (d / "text.dcm").write_text("not a DICOM file at all\n" * 20), "not a DICOM file"),
        (lambda d: cut(pydicom_file("MR_small.dcm"), d / "cut.dcm", -700), "pixel data truncated"),
        (lambda d: cut(pydicom_file("MR_small_jp2klossless.dcm"), d / "cutj2k.dcm", -700), "cannot decode pixel data"),
        (lambda d: cut(pydicom_file("CT_small.dcm"), d / "cuthead.dcm", 600), "no pixel data"),
        (lambda d: shutil.copy(pydicom_file("liver_1frame.dcm"), d / "seg.dcm"), "Modality SEG"),
    ],
)
def test_bad_dicom_raises_with_a_reason(tmp_path, make, reason):
    make(tmp_path)
    (path,) = tmp_path.iterdir()
    with pytest.raises(UnreadableImage) as info:
        list(iter_frames(path))
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: ")


def test_dicom_payload_shorter_than_its_geometry(tmp_path):
    path = write_dicom(tmp_path / "multi.dcm", np.zeros((2, 8, 8), np.int16))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.save_as(path)
    with pytest.raises(UnreadableImage, match=r"shorter than its geometry needs \(256 of 384 bytes\)"):
        read_frame(path, 0)


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(UnreadableImage, match="no pixel data"):
        read_frame(tmp_path / "nopixels.dcm", 0)
