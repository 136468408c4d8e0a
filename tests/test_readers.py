"""Readers and intensity normalisation on real files (pydicom's and nibabel's test data) and small written ones."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as nibabel_data
from pydicom.dataset import Dataset

from data.intensity import CT_WINDOWS, IntensityConfig, IntensityRule, normalize
from data.readers import (
    SUPPORTED_SUFFIXES,
    Frame,
    UnreadableImage,
    infer_modality,
    is_candidate,
    iter_frames,
    load_image,
    read_frame,
)
from tests._readers_files import cut, pydicom_file, write_dicom, write_nifti, write_opencv


def nibabel_file(name: str) -> Path:
    path = Path(nibabel_data) / name
    if not path.exists():
        pytest.skip(f"nibabel test file {name} is not installed")
    return path


# --- DICOM -------------------------------------------------------------------------------------------------------


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


# --- NIfTI -------------------------------------------------------------------------------------------------------


def canonical(path: Path) -> np.ndarray:
    data = nib.as_closest_canonical(nib.load(path)).get_fdata()
    return data if data.ndim == 4 else data[..., None]


def test_nifti_3d_slices_are_canonical_axial():
    path = nibabel_file("anatomical.nii")
    expected = canonical(path)
    frames = list(iter_frames(path))
    assert len(frames) == expected.shape[2]
    assert all(f.source_format == "nifti" and f.modality == "OT" for f in frames)
    for z in (0, len(frames) // 2, len(frames) - 1):
        np.testing.assert_allclose(frames[z].pixels, expected[:, :, z, 0], rtol=1e-6)
        np.testing.assert_array_equal(read_frame(path, z).pixels, frames[z].pixels)


def test_nifti_4d_all_versus_first_volume():
    path = nibabel_file("example4d.nii.gz")
    expected = canonical(path)
    nz, n_volumes = expected.shape[2], expected.shape[3]
    assert n_volumes == 2
    every = list(iter_frames(path, nifti_volumes="all"))
    first = list(iter_frames(path, nifti_volumes="first"))
    assert (len(every), len(first)) == (nz * n_volumes, nz)
    assert [f.frame for f in every] == list(range(nz * n_volumes))
    frame = nz + 3  # volume 1, slice 3
    np.testing.assert_allclose(every[frame].pixels, expected[:, :, 3, 1], rtol=1e-6)
    np.testing.assert_array_equal(read_frame(path, frame).pixels, every[frame].pixels)
    with pytest.raises(IndexError):
        read_frame(path, frame, nifti_volumes="first")


def test_nifti_reoriented_slice_reads_match_as_closest_canonical(tmp_path):
    volume = np.random.default_rng(0).normal(size=(6, 7, 5)).astype(np.float32)
    # Disk axes point to (S, L, P): every axis permuted, two flipped.
    affine = np.array([[0, -2.0, 0, 10], [0, 0, -1.5, 20], [3.0, 0, 0, -5], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "oblique_t1.nii.gz", volume, affine)
    expected = canonical(path)
    frames = list(iter_frames(path))
    assert len(frames) == expected.shape[2] == 6 and frames[0].modality == "MR"
    for z, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.pixels, expected[:, :, z, 0].astype(np.float32))
        np.testing.assert_array_equal(read_frame(path, z).pixels, frame.pixels)


def test_nifti_nan_and_inf_read_fine_and_normalize_cleans_them(tmp_path):
    volume = np.linspace(0, 100, 8 * 8 * 2, dtype=np.float32).reshape(8, 8, 2)
    volume[0, 0, 0], volume[1, 1, 0], volume[2, 2, 0] = np.nan, np.inf, -np.inf
    path = write_nifti(tmp_path / "mri_nan.nii", volume)
    frame = read_frame(path, 0)
    assert np.isnan(frame.pixels[0, 0]) and np.isposinf(frame.pixels[1, 1]) and np.isneginf(frame.pixels[2, 2])
    image = normalize(frame.pixels, frame.modality)
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert (image[0, 0], image[1, 1], image[2, 2]) == (0.0, 1.0, 0.0)


def test_cut_nifti_gz_raises(tmp_path):
    source = write_nifti(tmp_path / "full.nii.gz", np.random.default_rng(1).normal(size=(32, 32, 16)))
    broken = cut(source, tmp_path / "cut.nii.gz", source.stat().st_size // 2)
    with pytest.raises(UnreadableImage, match="cannot read NIfTI"):
        list(iter_frames(broken))
    # read_frame decompresses only up to its slice: the first slice lies in the intact half of the file.
    np.testing.assert_array_equal(read_frame(broken, 0).pixels, read_frame(source, 0).pixels)
    with pytest.raises(UnreadableImage, match="cannot read NIfTI"):
        read_frame(broken, 15)


# --- PNG / JPEG / TIFF ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_png_keeps_bit_depth_and_colour(tmp_path, dtype, channels):
    rng = np.random.default_rng(2)
    shape = (20, 24) if channels == 1 else (20, 24, 3)
    pixels = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    path = write_opencv(tmp_path / "xray_01.png", pixels)
    frame = read_frame(path, 0)
    assert (frame.modality, frame.source_format, frame.frame) == ("XR", "png", 0)
    np.testing.assert_array_equal(frame.pixels, pixels.astype(np.float32))  # RGB order, 16 bit kept


def test_png_alpha_is_dropped(tmp_path):
    import cv2

    rgba = np.random.default_rng(3).integers(0, 255, size=(10, 12, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgba[..., [2, 1, 0, 3]])  # BGRA on disk
    np.testing.assert_array_equal(read_frame(tmp_path / "a.png", 0).pixels, rgba[..., :3].astype(np.float32))


def test_jpeg_grey_and_rgb(tmp_path):
    grey = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    rgb = np.stack([grey, grey.T, 255 - grey], axis=-1)
    grey_frame = read_frame(write_opencv(tmp_path / "g.jpg", grey), 0)
    rgb_frame = read_frame(write_opencv(tmp_path / "c.jpeg", rgb), 0)
    assert grey_frame.pixels.shape == (32, 32) and rgb_frame.pixels.shape == (32, 32, 3)
    assert np.abs(grey_frame.pixels - grey).mean() < 3 and np.abs(rgb_frame.pixels - rgb).mean() < 3
    with pytest.raises(UnreadableImage, match="cannot decode JPEG"):
        read_frame(cut(tmp_path / "c.jpeg", tmp_path / "cut.jpg", -200), 0)


def test_multi_page_tiff_16_bit(tmp_path):
    import cv2

    pages = [np.full((9, 11), 1000 * (k + 1), np.uint16) for k in range(3)]
    assert cv2.imwritemulti(str(tmp_path / "stack.tiff"), pages)
    frames = list(iter_frames(tmp_path / "stack.tiff"))
    assert [(f.frame, float(f.pixels[0, 0])) for f in frames] == [(0, 1000.0), (1, 2000.0), (2, 3000.0)]
    assert read_frame(tmp_path / "stack.tiff", 2).pixels[0, 0] == 3000
    float_path = write_opencv(tmp_path / "f.tif", np.full((4, 4), -2.5, np.float32))
    assert read_frame(float_path, 0).pixels[0, 0] == -2.5


@pytest.mark.parametrize("keep", [0.4, 0.6, 0.8, 0.999])
def test_truncated_multi_page_tiff_raises(tmp_path, keep):
    import cv2

    pages = [np.random.default_rng(k).integers(0, 255, (64, 64), dtype=np.uint8) for k in range(3)]
    assert cv2.imwritemulti(str(tmp_path / "stack.tiff"), pages)
    assert len(list(iter_frames(tmp_path / "stack.tiff"))) == 3
    size = (tmp_path / "stack.tiff").stat().st_size
    # OpenCV alone reads the pages before the cut and reports no error.
    cut_path = cut(tmp_path / "stack.tiff", tmp_path / "cut.tiff", int(size * keep))
    assert 0 < cv2.imcount(str(cut_path), cv2.IMREAD_UNCHANGED) < 3
    with pytest.raises(UnreadableImage, match="truncated TIFF"):
        list(iter_frames(cut_path))


def test_bigtiff_and_big_endian_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    stack = np.arange(2 * 6 * 5, dtype=np.uint16).reshape(2, 6, 5)
    for name, kwargs in (("big.tiff", {"bigtiff": True}), ("motorola.tif", {"byteorder": ">"})):
        tifffile.imwrite(tmp_path / name, stack, photometric="minisblack", metadata=None, **kwargs)
        frames = list(iter_frames(tmp_path / name))
        assert [f.frame for f in frames] == [0, 1]
        assert all(np.array_equal(f.pixels, page) for f, page in zip(frames, stack, strict=True))


def test_corrupt_png_raises(tmp_path):
    source = write_opencv(tmp_path / "ok.png", np.zeros((64, 64), np.uint16) + 7)
    with pytest.raises(UnreadableImage, match="cannot decode PNG"):
        read_frame(cut(source, tmp_path / "cut.png", source.stat().st_size // 2), 0)
    (tmp_path / "junk.png").write_bytes(os.urandom(300))
    with pytest.raises(UnreadableImage, match="cannot decode PNG"):
        read_frame(tmp_path / "junk.png", 0)


def test_unsupported_suffix(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_candidate(tmp_path / "notes.txt")
    with pytest.raises(UnreadableImage, match=r"unsupported file type \(\.txt\)"):
        read_frame(tmp_path / "notes.txt", 0)


def test_is_candidate_by_suffix(tmp_path):
    for suffix in SUPPORTED_SUFFIXES:
        assert is_candidate(tmp_path / f"image{suffix.upper()}")
    assert not is_candidate(tmp_path / "image.nii.gz.bak")


@pytest.mark.parametrize(
    ("relpath", "modality"),
    [
        ("brats/BraTS_001_t1.nii.gz", "MR"),
        ("brain/flair/case-3.png", "MR"),
        ("ct/lung_001.png", "CT"),
        ("chest_xray/normal/img.jpeg", "XR"),
        ("CXR/001.png", "XR"),
        ("x-ray/hand.png", "XR"),
        ("mr/ct_registered.nii", "CT"),  # the file name's token wins over the folder's
        ("photos/act/contract.png", "OT"),  # tokens, not substrings
        ("misc/image.png", "OT"),
    ],
)
def test_infer_modality(relpath, modality):
    assert infer_modality(relpath) == modality


def test_modality_override():
    frame = read_frame(pydicom_file("CT_small.dcm"), 0, modality="XR")
    assert frame.modality == "XR"


def test_load_image_is_model_ready(tmp_path):
    path = pydicom_file("CT_small.dcm")
    shutil.copy(path, tmp_path / "ct.dcm")
    image = load_image(tmp_path, "ct.dcm", 0, "CT")
    assert image.dtype == np.float32 and image.shape == (128, 128)
    assert image.min() >= 0 and image.max() <= 1 and 0 < image.mean() < 1
    raw = read_frame(path, 0).pixels
    np.testing.assert_array_equal(image, normalize(raw, "CT"))
    lung = load_image(tmp_path, "ct.dcm", 0, "CT", IntensityConfig(ct_window="lung"))
    assert not np.array_equal(lung, image)


def test_frame_is_frozen():
    frame = Frame(np.zeros((2, 2), np.float32), "OT", 0, "png")
    with pytest.raises(AttributeError):
        frame.modality = "CT"  # type: ignore[misc]


# --- intensity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", sorted(CT_WINDOWS))
def test_ct_window_ends_map_to_0_and_1(window):
    level, width = CT_WINDOWS[window]
    hu = np.array([[level - width / 2, level, level + width / 2], [-5000, level + width / 4, 5000]], np.float32)
    image = normalize(hu, "CT", IntensityConfig(ct_window=window))
    np.testing.assert_allclose(image, [[0, 0.5, 1], [0, 0.75, 1]], atol=1e-6)


def test_ct_window_as_level_width_pair():
    image = normalize(np.array([[0, 50, 100]], np.float32), "CT", IntensityConfig(ct_window=(50, 100)))
    np.testing.assert_allclose(image, [[0, 0.5, 1]])


def test_percentiles_scale_each_image():
    values = np.arange(1000, dtype=np.float32).reshape(20, 50)
    image = normalize(values, "MR", IntensityConfig(percentiles=(10, 90)))
    low, high = np.percentile(values, [10, 90])
    np.testing.assert_allclose(image, np.clip((values - low) / (high - low), 0, 1), atol=1e-6)
    assert (image == 0).sum() >= 100 and (image == 1).sum() >= 100
    # Affine changes of MR intensity do not change the image.
    np.testing.assert_allclose(normalize(values * 3 + 7, "MR", IntensityConfig(percentiles=(10, 90))), image, atol=1e-5)


def test_flat_and_mostly_flat_images():
    assert normalize(np.full((4, 4), 7.0), "MR").max() == 0
    mostly_zero = np.zeros((100, 100), np.float32)
    mostly_zero[0, :5] = 10  # fewer than 0.5% of pixels: percentiles are (0, 0)
    image = normalize(mostly_zero, "XR")
    assert image.max() == 1 and image[0, 0] == 1 and image[50, 50] == 0


def test_nan_inf_cleaned_for_every_rule():
    pixels = np.array([[np.nan, np.inf, -np.inf], [0, 50, 100]], np.float32)
    for modality in ("CT", "MR", "XR", "OT"):
        image = normalize(pixels, modality)
        assert np.isfinite(image).all() and image.dtype == np.float32
        assert (image[0, 0], image[0, 1], image[0, 2]) == (0.0, 1.0, 0.0)
    all_nan = normalize(np.full((3, 3), np.nan, np.float32), "MR")
    assert np.array_equal(all_nan, np.zeros((3, 3), np.float32))


def test_rgb_images():
    rgb8 = np.zeros((2, 2, 3), np.float32)
    rgb8[0, 0] = (255, 51, 0)
    np.testing.assert_allclose(normalize(rgb8, "OT")[0, 0], [1.0, 0.2, 0.0])
    rgb16 = rgb8 * 200  # beyond the 8-bit range: joint percentiles keep the colour ratios
    image = normalize(rgb16, "US", IntensityConfig(percentiles=(0, 100)))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.2, 0.0], atol=1e-6)


def test_per_modality_overrides():
    config = IntensityConfig(
        per_modality={
            "xr": {"value_range": [0, 4095]},  # keys are upper-cased, YAML-style mappings accepted
            "CT": IntensityRule(window="lung"),
            "MR": {"percentiles": (0, 100)},
        }
    )
    np.testing.assert_allclose(normalize(np.array([[0, 4095]], np.float32), "XR", config), [[0, 1]])
    np.testing.assert_allclose(normalize(np.array([[-1350, 150]], np.float32), "CT", config), [[0, 1]])
    np.testing.assert_allclose(normalize(np.array([[5, 15]], np.float32), "MR", config), [[0, 1]])
    assert IntensityConfig(ct_window=[40, 400], percentiles=[1, 99]) == IntensityConfig((40.0, 400.0), (1.0, 99.0))
    assert hash(config) == hash(IntensityConfig())  # usable as a cache key; overrides only affect equality
    with pytest.raises(ValueError, match="exactly one"):
        IntensityRule(window="lung", percentiles=(1, 99))
    with pytest.raises(ValueError, match="unknown CT window"):
        IntensityConfig(ct_window="liver")
    with pytest.raises(ValueError, match="percentiles"):
        IntensityConfig(percentiles=(99, 1))
    with pytest.raises(ValueError, match="shape"):
        normalize(np.zeros((2, 2, 4)), "OT")
