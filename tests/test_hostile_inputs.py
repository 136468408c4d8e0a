"""Hostile corpora (issue 28): one bad path never stops a scan, and each failure's reason names what was found."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.frame_source import FrameSource
from data.ids import decode_relpath, encode_relpath, make_item_id
from data.item_store import ItemStore
from data.manifest import MANIFEST_COLUMNS, read_manifest, scan_corpus, write_manifest
from data.readers import UnreadableImage, iter_frames, load_image, read_frame
from tests._readers_files import pydicom_file, write_dicom, write_nifti, write_opencv

BAD_NAME = b"bad\xff.png"  # not valid UTF-8: Python gives it as 'bad\udcff.png'


def _hostile_corpus(root: Path) -> Path:
    """Two good PNGs, a file symlink loop (a.dcm -> b.dcm -> a.dcm), and a PNG whose name is not UTF-8."""
    root.mkdir()
    write_opencv(root / "good1.png", np.full((8, 12), 100, np.uint8))
    write_opencv(root / "sub" / "good2.png", np.full((10, 6), 50, np.uint8))
    os.symlink("b.dcm", root / "a.dcm")
    os.symlink("a.dcm", root / "b.dcm")
    good = (root / "good1.png").read_bytes()
    with open(os.fsencode(root) + b"/" + BAD_NAME, "wb") as f:
        f.write(good)
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_symlink_loop_and_undecodable_name_do_not_stop_the_scan(tmp_path, workers):
    root = _hostile_corpus(tmp_path / "corpus")
    manifest, failures = scan_corpus(root, workers=workers, progress=False)
    held = "/bad\\xff.png"  # the documented escaped form: '/' + the name, the bad byte as \xNN
    assert manifest.path.tolist() == [held, "good1.png", "sub/good2.png"]
    assert dict(zip(failures.path, failures.reason, strict=True)) == {
        "a.dcm": "symlink loop (the link leads back to itself)",
        "b.dcm": "symlink loop (the link leads back to itself)",
    }
    # The undecodable name's id hashes its bytes as the OS gives them, as for any other path.
    expected = hashlib.blake2b(BAD_NAME + b"#0", digest_size=8, person=b"mwm-item").hexdigest()
    assert manifest.item_id[manifest.path == held].item() == expected
    # ... the held path opens the file, through the one entry point to an image and through a FrameSource.
    assert load_image(root, held, 0, None).shape == (8, 12)
    assert FrameSource(root).read(held, 0).pixels.shape == (8, 12)


def test_undecodable_name_round_trips_through_the_manifest_and_a_store(tmp_path):
    root = _hostile_corpus(tmp_path / "corpus")
    manifest, failures = scan_corpus(root, workers=0, progress=False)
    back = read_manifest(write_manifest(manifest, failures, tmp_path / "m.parquet"))
    columns = list(MANIFEST_COLUMNS)  # the names' round trip (list columns' NaN come back as None)
    pd.testing.assert_frame_equal(back[columns], manifest[columns])
    group = ItemStore.create_group(tmp_path / "s.zarr", manifest, {}, 4)
    assert ItemStore(group, tmp_path / "s.zarr", 4).manifest().path.tolist() == manifest.path.tolist()


@pytest.mark.parametrize(
    "raw",
    [b"plain/ok.png", b"bad\xff.png", b"caf\xc3\xa9\xfe/x.dcm", b"back\\slash\\xff\xff.png", b"\\x41\x80"],
)
def test_relpath_encoding_is_reversible(raw):
    relpath = os.fsdecode(raw)
    stored = encode_relpath(relpath)
    stored.encode("utf-8")  # storable
    assert os.fsencode(decode_relpath(stored)) == raw
    assert (stored == relpath) == (b"\xff" not in raw and b"\xfe" not in raw and b"\x80" not in raw)


def test_item_id_of_valid_names_is_unchanged():
    # the id of a UTF-8 name is the hash of its UTF-8 bytes, as before undecodable names were handled
    expected = hashlib.blake2b("café/x.dcm#3".encode(), digest_size=8, person=b"mwm-item").hexdigest()
    assert make_item_id("café/x.dcm", 3) == expected


def test_zero_length_nifti_is_refused_at_scan(tmp_path):
    root = tmp_path / "corpus"
    write_nifti(root / "empty.nii.gz", np.zeros((64, 64, 0), np.int16))
    # a permuted affine moves the empty axis: still refused, whatever the canonical orientation
    write_nifti(root / "empty_permuted.nii", np.zeros((64, 0, 64), np.int16), np.eye(4)[[2, 0, 1, 3]])
    write_nifti(root / "fine.nii", np.ones((8, 8, 2), np.int16))
    manifest, failures = scan_corpus(root, workers=0, progress=False)
    assert manifest.path.tolist() == ["fine.nii", "fine.nii"]
    assert dict(zip(failures.path, failures.reason, strict=True)) == {
        "empty.nii.gz": "zero-length NIfTI volume (shape 64x64x0)",
        "empty_permuted.nii": "zero-length NIfTI volume (shape 64x0x64)",
    }
    with pytest.raises(UnreadableImage, match="zero-length"):
        read_frame(root / "empty.nii.gz", 0)


def _declare_big_endian(path: Path) -> Path:
    """Rewrite the file meta's transfer syntax to Explicit VR Big Endian, leaving the little-endian data set."""
    data = path.read_bytes()
    assert data.count(b"1.2.840.10008.1.2.1\x00") == 1
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00"))
    return path


def test_big_endian_syntax_over_little_endian_data_is_named(tmp_path):
    path = _declare_big_endian(write_dicom(tmp_path / "be.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8)))
    with pytest.raises(UnreadableImage) as caught:
        list(iter_frames(path))
    assert caught.value.reason == "transfer syntax says big-endian but the data set is little-endian"


def test_little_endian_syntax_over_big_endian_data_is_named(tmp_path):
    data = pydicom_file("MR_small_bigendian.dcm").read_bytes()
    assert data.count(b"1.2.840.10008.1.2.2\x00") == 1
    path = tmp_path / "le.dcm"
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.2\x00", b"1.2.840.10008.1.2.1\x00"))
    with pytest.raises(UnreadableImage) as caught:
        list(iter_frames(path))
    assert caught.value.reason == "transfer syntax says little-endian but the data set is big-endian"


def test_dicom_with_a_png_suffix_is_named(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    misnamed = path.rename(tmp_path / "scan.png")
    with pytest.raises(UnreadableImage) as caught:
        list(iter_frames(misnamed))
    assert caught.value.reason == "DICOM file with a .png suffix (rename it to match its content)"
    with pytest.raises(UnreadableImage, match="DICOM file with a .png suffix"):
        read_frame(misnamed, 0)
    png_as_tiff = write_opencv(tmp_path / "p.png", np.zeros((4, 4), np.uint8)).rename(tmp_path / "p.tif")
    with pytest.raises(UnreadableImage, match="PNG file with a .tif suffix"):
        read_frame(png_as_tiff, 0)
    # a corrupt PNG that is nothing else keeps the decoder's reason
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(UnreadableImage, match="cannot decode PNG"):
        read_frame(tmp_path / "junk.png", 0)
