"""NIfTI, PNG / JPEG / TIFF reading, format detection and modality naming on real and small written files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as nibabel_data

from data.intensity import IntensityConfig, normalize
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
from tests._readers_files import cut, pydicom_file, write_nifti, write_opencv


def nibabel_file(name: str) -> Path:
    path = Path(nibabel_data) / name
    if not path.exists():
        pytest.skip(f"nibabel test file {name} is not installed")
    return path


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
