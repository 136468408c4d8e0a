"""PNG / JPEG / TIFF reader cases that `make mutate MODULE=data/readers/raster.py` found untested: frame indices
and range errors, grey+alpha, CMYK JPEG, and TIFF directory chains that are missing, empty or loop (hand-built
headers, so the page count comes from the bytes written here, not from a library)."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from data.readers import UnreadableImage, iter_frames, read_frame
from data.readers.raster import _opencv_to_rgb, _read_png, _read_tiff, _tiff_page_count
from tests._readers_files import write_opencv


def test_a_png_has_one_frame_and_another_index_is_refused(tmp_path):
    path = write_opencv(tmp_path / "one.png", np.arange(6 * 4, dtype=np.uint8).reshape(6, 4))
    (frame,) = list(iter_frames(path))
    assert (frame.frame, frame.source_format, frame.pixels.shape) == (0, "png", (6, 4))
    with pytest.raises(IndexError) as error:
        read_frame(path, 1)
    assert str(error.value) == f"{path}: frame 1 out of range (the file has 1 frame)"


def test_a_tiff_page_read_alone_keeps_its_index_and_the_range_is_checked(tmp_path):
    pages = [np.full((5, 7), 10 * (k + 1), np.uint16) for k in range(3)]
    path = tmp_path / "stack.tif"
    assert cv2.imwritemulti(str(path), pages)
    frame = read_frame(path, 1)
    assert (frame.frame, frame.source_format, float(frame.pixels[0, 0])) == (1, "tiff", 20.0)
    with pytest.raises(IndexError) as error:
        read_frame(path, 3)
    assert str(error.value) == f"{path}: frame 3 out of range (the file has 3 frames)"


def test_grey_with_alpha_png_drops_the_alpha(tmp_path):
    grey = np.arange(8 * 6, dtype=np.uint8).reshape(8, 6)
    la = np.stack([grey, np.full_like(grey, 255) - grey], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[-1] == 4  # OpenCV reads grey+alpha as BGRA
    pixels = read_frame(path, 0).pixels
    assert pixels.shape == (8, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(pixels[..., c], grey.astype(np.float32))


def test_a_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (12, 8), (0, 255, 255, 0)).save(path, quality=100)  # no cyan, full magenta and yellow: red
    pixels = read_frame(path, 0).pixels
    assert pixels.shape == (8, 12, 3)
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), [255, 0, 0], atol=6)


def tiff_bytes(first_offset: int, directories: dict[int, int]) -> bytes:
    """A little-endian classic TIFF: header -> first_offset; each directory at offset o has no entries and links to
    directories[o] (0 ends the chain)."""
    size = max([8, *[o + 6 for o in directories]])
    data = bytearray(size)
    data[:8] = b"II" + struct.pack("<H", 42) + struct.pack("<I", first_offset)
    for offset, next_offset in directories.items():
        data[offset : offset + 6] = struct.pack("<H", 0) + struct.pack("<I", next_offset)
    return bytes(data)


@pytest.mark.parametrize(
    ("first", "directories", "reason"),
    [
        (8, {8: 14, 14: 8}, "cannot decode TIFF (its page directories form a loop)"),
        (8, {8: 8}, "cannot decode TIFF (its page directories form a loop)"),
        (0, {}, "cannot decode TIFF (no pages)"),
        (8, {8: 400}, "truncated TIFF (page 2's directory lies past the end)"),
        (600, {}, "truncated TIFF (page 1's directory lies past the end)"),
    ],
)
def test_tiff_directory_chains_that_cannot_be_read(tmp_path, first, directories, reason):
    path = tmp_path / "chain.tif"
    path.write_bytes(tiff_bytes(first, directories))
    with pytest.raises(UnreadableImage) as error:
        list(iter_frames(path))
    assert str(error.value) == f"{path}: {reason}"


@pytest.mark.parametrize(
    "content", [b"XX*\x00\x08\x00\x00\x00" + bytes(8), b"II+\x00\x08\x00\x00\x00" + bytes(4), b"II*\x00\x08\x00"]
)
def test_a_file_without_a_tiff_header_is_refused(tmp_path, content):
    path = tmp_path / "fake.tiff"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage) as error:
        read_frame(path, 0)
    assert str(error.value) == f"{path}: cannot decode TIFF (no TIFF header)"


def test_decoder_errors_name_the_path_and_the_format(tmp_path):
    jpeg = write_opencv(tmp_path / "c.jpg", np.full((32, 32), 100, np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg.read_bytes()[:-200])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x00" * 300)
    no_entries = tmp_path / "empty_page.tif"
    no_entries.write_bytes(tiff_bytes(8, {8: 0}))  # one directory, no entries: OpenCV cannot read a page
    folder_png, folder_tiff = tmp_path / "dir.png", tmp_path / "dir.tif"
    folder_png.mkdir(), folder_tiff.mkdir()
    for path, start, read in (
        (cut, f"{cut}: cannot decode JPEG: ", iter_frames),
        (junk, f"{junk}: cannot decode PNG (corrupt or truncated)", iter_frames),
        (no_entries, f"{no_entries}: cannot decode TIFF (corrupt or truncated)", iter_frames),
        # folders pass no suffix check here: the decoders' own guards speak
        (folder_png, f"{folder_png}: cannot decode PNG: ", _read_png),
        (folder_tiff, f"{folder_tiff}: cannot decode TIFF: ", lambda p: _read_tiff(p, None)),
    ):
        with pytest.raises(UnreadableImage) as error:
            list(read(path))
        assert str(error.value).startswith(start), str(error.value)
        assert error.value.path == str(path)


def test_opencv_channel_layouts():
    grey_alpha = np.stack([np.full((3, 4), 7), np.full((3, 4), 200)], axis=-1).astype(np.uint8)
    np.testing.assert_array_equal(_opencv_to_rgb(grey_alpha, "x.tif"), np.full((3, 4), 7))  # grey, alpha dropped
    np.testing.assert_array_equal(_opencv_to_rgb(grey_alpha[..., :1], "x.tif"), np.full((3, 4), 7))
    bgra = np.stack([np.full((3, 4), v) for v in (1, 2, 3, 4)], axis=-1)
    assert _opencv_to_rgb(bgra, "x.tif")[0, 0].tolist() == [3, 2, 1]
    with pytest.raises(UnreadableImage) as error:
        _opencv_to_rgb(np.zeros((3, 4, 5)), "x.tif")
    assert str(error.value) == "x.tif: unsupported channel count (5)"


def test_tiff_counts_and_offsets_are_unsigned(tmp_path):
    """A classic TIFF's entry count of 2**15 or more and offset of 2**31 or more are read as the large unsigned
    numbers they are (signed reads would seek backwards)."""
    many = bytearray(tiff_bytes(8, {}))
    many += struct.pack("<H", 40000) + bytes(40000 * 12) + struct.pack("<I", 0)  # one page with 40000 entries
    (tmp_path / "many.tif").write_bytes(bytes(many))
    assert _tiff_page_count(tmp_path / "many.tif") == 1
    far = tmp_path / "far.tif"
    far.write_bytes(tiff_bytes(8, {8: 2**31 + 16}))
    with pytest.raises(UnreadableImage, match=r"truncated TIFF \(page 2's directory lies past the end\)"):
        _tiff_page_count(far)
