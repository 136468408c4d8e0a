"""Tests that kill surviving mutants of data/readers/dicom.py (`make mutate MODULE=data/readers/dicom.py`).

Small DICOM files written here (or pydicom's own test files), each with values known by construction: stored values
and a rescale picked by hand, a file whose transfer syntax names the other byte order, a data set that switches VR
encoding at its pixel data element.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from data.readers import UnreadableImage, iter_frames, read_frame
from data.readers.dicom import _read_dicom_header, _whitelisted_dataset, dicom_decodes_whole, has_dicm_marker
from tests._readers_files import PLANTED_TAGS, pydicom_file, write_dicom

STORED = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 3).astype(np.uint16)


def reason_of(path) -> str:
    with pytest.raises(UnreadableImage) as caught:
        list(iter_frames(path))
    return caught.value.reason


# ------------------------------------------------------------------------------------------ byte order named


def _declare(path, said: bytes, instead: bytes):
    data = path.read_bytes()
    assert data.count(said + b"\x00") == 1
    path.write_bytes(data.replace(said + b"\x00", instead + b"\x00"))
    return path


def test_big_endian_syntax_over_little_endian_data_is_named(tmp_path):
    path = write_dicom(tmp_path / "be.dcm", STORED)
    _declare(path, b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.2")
    assert reason_of(path) == "transfer syntax says big-endian but the data set is little-endian"


def test_little_endian_syntax_over_big_endian_data_is_named(tmp_path):
    path = tmp_path / "le.dcm"
    path.write_bytes(pydicom_file("MR_small_bigendian.dcm").read_bytes())
    _declare(path, b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1")
    assert reason_of(path) == "transfer syntax says little-endian but the data set is big-endian"


def test_missing_pixel_data_is_said_in_those_words(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    assert reason_of(tmp_path / "nopixels.dcm") == "no pixel data"


def test_only_the_first_mebibyte_is_searched_for_a_pixel_data_element(tmp_path):
    """A file without pixel data whose bytes hold, after its first MiB, what looks like a big-endian pixel data
    element: the search stops at 1 MiB, so the reason stays 'no pixel data'; inside the first MiB it is named."""
    other_order = b"\x7f\xe0\x00\x10OW"  # (7FE0,0010) big-endian, VR OW
    for offset, expected in [
        ((1 << 20) + 4096, "no pixel data"),
        (4096, "transfer syntax says little-endian but the data set is big-endian"),
    ]:
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        del ds.PixelData
        payload = bytearray((1 << 20) + 8192)
        payload[offset : offset + len(other_order)] = other_order
        ds.EncapsulatedDocument = bytes(payload)  # (0042,0011) OB, after the image tags
        path = tmp_path / f"big_{offset}.dcm"
        ds.save_as(path)
        assert reason_of(path) == expected


# ------------------------------------------------------------------------------------------ decoded whole or not


def _bare_with_implicit_pixel_element(path, stored):
    """A bare data set (no preamble, no file meta) in explicit VR little endian whose pixel data element alone is
    written in implicit VR: the file contradicts the encoding pydicom detects from its first element."""
    ds = pydicom.dcmread(write_dicom(path, stored, modality="MR"))
    del ds.file_meta
    ds.preamble = None  # no preamble, no 'DICM' marker
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    data = path.read_bytes()
    at = data.index(b"\xe0\x7f\x10\x00OW\x00\x00")
    path.write_bytes(data[: at + 4] + data[at + 8 :])  # tag, 4-byte length: implicit VR
    assert path.read_bytes()[128:132] != b"DICM"
    return path


def save_deflated(ds: pydicom.Dataset, path: Path) -> Path:
    """`ds` written with the deflated transfer syntax (the whole data set zlib-compressed after the file meta)."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_which_files_are_decoded_whole(tmp_path):
    native = write_dicom(tmp_path / "native.dcm", STORED)
    assert dicom_decodes_whole(native) is False  # frames read at their offsets
    assert dicom_decodes_whole(write_dicom(tmp_path / "rle.dcm", STORED, compress=RLELossless)) is True
    ds = pydicom.dcmread(native)
    save_deflated(ds, tmp_path / "deflated.dcm")
    assert dicom_decodes_whole(tmp_path / "deflated.dcm") is True
    # neither compressed nor deflated, but readable only as a whole data set
    assert dicom_decodes_whole(_bare_with_implicit_pixel_element(tmp_path / "switch.dcm", STORED)) is True


def test_a_deflated_file_is_read_with_the_whitelisted_tags_only(tmp_path):
    path = write_dicom(tmp_path / "native.dcm", STORED, tags=PLANTED_TAGS, slope=2, intercept=-7)
    ds = pydicom.dcmread(path)
    save_deflated(ds, tmp_path / "deflated.dcm")
    np.testing.assert_array_equal(read_frame(tmp_path / "deflated.dcm", 0).pixels, STORED * 2.0 - 7)
    dataset = _whitelisted_dataset(tmp_path / "deflated.dcm")
    assert "PixelData" in dataset and dataset.RescaleIntercept == -7
    assert not any(keyword in dataset for keyword in PLANTED_TAGS)  # no patient or study value parsed


def test_an_unreadable_whole_dataset_is_named(tmp_path):
    """The header (read up to the pixel data) parses; the whole data set, read because the pixel data element
    switches to implicit VR, does not: after it comes an element in implicit VR too, whose length bytes read as an
    unknown explicit VR."""
    path = _bare_with_implicit_pixel_element(tmp_path / "switch.dcm", STORED)
    path.write_bytes(path.read_bytes() + b"\x08\x00\x60\x00\x50\x00\x00\x00ab")  # (0008,0060), length 80
    with pytest.raises(UnreadableImage) as caught:
        read_frame(path, 0)
    assert caught.value.reason.startswith("cannot read DICOM dataset: NotImplementedError: "), caught.value.reason
    assert str(caught.value).startswith(f"{path}: cannot read DICOM dataset")


# ------------------------------------------------------------------------------------------ rescale lookup


def _transform(slope: float, intercept: float) -> Dataset:
    item, group = Dataset(), Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = slope, intercept, "US"
    group.PixelValueTransformationSequence = [item]
    return group


def test_shared_functional_groups_rescale_every_frame(tmp_path):
    stored = np.stack([np.full((4, 4), 10, np.uint16), np.full((4, 4), 30, np.uint16)])
    path = write_dicom(tmp_path / "shared.dcm", stored, tags={"SharedFunctionalGroupsSequence": [_transform(3, -5)]})
    assert [float(f.pixels[0, 0]) for f in iter_frames(path)] == [3 * 10 - 5, 3 * 30 - 5]


def test_a_frame_beyond_the_per_frame_groups_falls_back_to_the_shared_ones(tmp_path):
    stored = np.stack([np.full((4, 4), 10, np.uint16), np.full((4, 4), 30, np.uint16)])
    tags = {
        "PerFrameFunctionalGroupsSequence": [_transform(2, 1)],  # one item for two frames
        "SharedFunctionalGroupsSequence": [_transform(3, -5)],
    }
    path = write_dicom(tmp_path / "short.dcm", stored, tags=tags, slope=7, intercept=100)
    # frame 0: its own group wins over the shared one and the top level; frame 1: the shared one over the top level
    assert [float(f.pixels[0, 0]) for f in iter_frames(path)] == [2 * 10 + 1, 3 * 30 - 5]


def test_a_group_with_a_slope_but_no_intercept_is_passed_over(tmp_path):
    stored = np.full((1, 4, 4), 10, np.uint16)
    item, group = Dataset(), Dataset()
    item.RescaleSlope = 5  # no intercept: not a rescale
    group.PixelValueTransformationSequence = [item]
    tags = {"PerFrameFunctionalGroupsSequence": [group], "NumberOfFrames": 1}
    path = write_dicom(tmp_path / "half.dcm", stored[0], tags=tags, slope=2, intercept=-3)
    assert float(read_frame(path, 0).pixels[0, 0]) == 2 * 10 - 3


# ------------------------------------------------------------------------------------------ physical values


def test_modality_lut_maps_stored_values_and_monochrome1_flips_within_its_output_range(tmp_path):
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4)
    lut = np.array([100 + 7 * k for k in range(16)], "<u2")  # stored k -> 100 + 7k
    item = Dataset()
    item.LUTDescriptor, item.ModalityLUTType, item.LUTData = [16, 0, 16], "HU", lut.tobytes()
    path = write_dicom(tmp_path / "lut.dcm", stored, tags={"ModalityLUTSequence": [item]}, slope=50, intercept=9)
    np.testing.assert_array_equal(read_frame(path, 0).pixels, 100 + 7.0 * stored)  # the LUT, not the rescale
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    # output range [100, 205]: v -> 305 - v
    np.testing.assert_array_equal(read_frame(path, 0).pixels, 305 - (100 + 7.0 * stored))


def test_monochrome1_flips_within_the_bits_stored_range_not_the_frames(tmp_path):
    stored = np.arange(100, 116, dtype=np.uint16).reshape(4, 4)  # far inside the 12-bit range [0, 4095]
    path = write_dicom(tmp_path / "u.dcm", stored, modality="CR", photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(read_frame(path, 0).pixels, 4095.0 - stored)


def test_signed_monochrome1_flips_within_the_signed_range_after_the_rescale(tmp_path):
    stored = np.array([[-5, 0], [7, 100]], np.int16)
    path = write_dicom(
        tmp_path / "s.dcm", stored, modality="CR", photometric="MONOCHROME1", bits_stored=12, slope=2, intercept=10
    )
    assert pydicom.dcmread(path).PixelRepresentation == 1
    # stored range [-2048, 2047] -> rescaled [-4086, 4104]: v -> 18 - v
    np.testing.assert_array_equal(read_frame(path, 0).pixels, 18 - (2.0 * stored + 10))


def test_float_monochrome1_flips_within_the_frames_own_range(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", np.zeros((4, 4), np.uint16)))
    del ds.PixelData
    values = np.arange(16, dtype=np.float32).reshape(4, 4) + 100.5
    ds.FloatPixelData, ds.BitsAllocated, ds.BitsStored = values.tobytes(), 32, 32
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "float.dcm")
    np.testing.assert_array_equal(read_frame(tmp_path / "float.dcm", 0).pixels, (100.5 + 115.5) - values)


def test_an_unsupported_colour_interpretation_is_named(tmp_path):
    rgb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(path)
    with pytest.raises(UnreadableImage) as caught:
        read_frame(path, 0)
    assert str(caught.value) == f"{path}: unsupported colour interpretation (HSV)"


def test_a_palette_with_an_alpha_table_gives_rgb_only(tmp_path):
    stored = np.array([[0, 1], [2, 3]], np.uint8)
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", stored))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    tables = {"Red": [10, 20, 30, 40], "Green": [1, 2, 3, 4], "Blue": [500, 600, 700, 800], "Alpha": [9, 9, 9, 9]}
    for colour, entries in tables.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(entries, "<u2").tobytes())
    ds.save_as(tmp_path / "palette.dcm")
    pixels = read_frame(tmp_path / "palette.dcm", 0).pixels
    assert pixels.shape == (2, 2, 3)
    np.testing.assert_array_equal(pixels[1, 0], [30, 3, 700])  # stored 2


def test_zero_rows_is_no_geometry(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED))
    ds.Rows = 0
    ds.save_as(tmp_path / "rows0.dcm")
    with pytest.raises(UnreadableImage) as caught:
        read_frame(tmp_path / "rows0.dcm", 0)
    assert str(caught.value) == f"{tmp_path / 'rows0.dcm'}: no image geometry (Rows/Columns missing or zero)"


def test_an_unreadable_frame_count_counts_as_one_frame(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED))
    ds.NumberOfFrames = 7
    ds.save_as(tmp_path / "nf.dcm")
    data = (tmp_path / "nf.dcm").read_bytes()
    assert data.count(b"IS\x02\x007 ") == 1
    (tmp_path / "nf.dcm").write_bytes(data.replace(b"IS\x02\x007 ", b"IS\x02\x00x1"))
    with pytest.raises(IndexError, match=r"frame 1 out of range \(the file has 1 frames\)"):
        read_frame(tmp_path / "nf.dcm", 1)


def test_missing_rows_is_no_geometry_and_a_short_payload_names_the_file(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED))
    del ds.Rows
    ds.save_as(tmp_path / "norows.dcm")
    with pytest.raises(UnreadableImage) as caught:
        read_frame(tmp_path / "norows.dcm", 0)
    assert str(caught.value) == f"{tmp_path / 'norows.dcm'}: no image geometry (Rows/Columns missing or zero)"
    ds = pydicom.dcmread(write_dicom(tmp_path / "multi.dcm", np.zeros((2, 8, 8), np.int16)))
    ds.NumberOfFrames = 3
    ds.save_as(tmp_path / "multi.dcm")
    with pytest.raises(UnreadableImage) as caught:
        read_frame(tmp_path / "multi.dcm", 0)
    assert (
        str(caught.value) == f"{tmp_path / 'multi.dcm'}: pixel data shorter than its geometry needs (256 of 384 bytes)"
    )


# ------------------------------------------------------------------------------------------ the pixel data element


def _cut_after_pixel_tag(path, keep: int, out):
    """`path` cut `keep` bytes after the start of its pixel data element."""
    data = path.read_bytes()
    at = data.rindex(b"\xe0\x7f\x10\x00")
    out.write_bytes(data[: at + keep])
    return out


@pytest.mark.parametrize(
    ("keep", "reason"),
    [
        (6, "no pixel data"),  # not even a tag and a VR: no element there
        (12, "pixel data truncated (0 of 128 bytes present)"),
        (12 + 120, "pixel data truncated (120 of 128 bytes present)"),
    ],
)
def test_a_cut_pixel_data_element_is_named(tmp_path, keep, reason):
    path = write_dicom(tmp_path / "g.dcm", STORED)  # 8 x 8 x 2 bytes, explicit VR
    cut = _cut_after_pixel_tag(path, keep, tmp_path / "cut.dcm")
    with pytest.raises(UnreadableImage) as caught:
        read_frame(cut, 0)
    assert str(caught.value) == f"{cut}: {reason}"


def test_a_cut_implicit_vr_pixel_data_element(tmp_path):
    path = write_dicom(tmp_path / "g.dcm", STORED, file_meta=False)  # implicit VR: 8 bytes of header
    assert (
        reason_of(_cut_after_pixel_tag(path, 8, tmp_path / "cut.dcm"))
        == "pixel data truncated (0 of 128 bytes present)"
    )


def test_a_bare_big_endian_data_set_is_read(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED, modality="MR"))
    del ds.file_meta
    ds.preamble = None
    ds.PixelData = STORED.astype(">u2").tobytes()  # pydicom writes OW bytes as they are
    pydicom.dcmwrite(tmp_path / "be.dcm", ds, implicit_vr=False, little_endian=False, force_encoding=True)
    assert (tmp_path / "be.dcm").read_bytes()[:2] == b"\x00\x08"  # group 0008 first, big-endian
    np.testing.assert_array_equal(read_frame(tmp_path / "be.dcm", 0).pixels, STORED.astype(np.float32))


def test_a_deflated_file_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED))
    del ds.PixelData
    save_deflated(ds, tmp_path / "deflated.dcm")
    with pytest.raises(UnreadableImage) as caught:
        read_frame(tmp_path / "deflated.dcm", 0)
    assert str(caught.value) == f"{tmp_path / 'deflated.dcm'}: no pixel data"


def test_a_file_meta_without_a_transfer_syntax_falls_back_to_the_detected_encoding(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED))
    del ds.file_meta.TransferSyntaxUID
    pydicom.dcmwrite(tmp_path / "nots.dcm", ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert "MediaStorageSOPClassUID" in pydicom.dcmread(tmp_path / "nots.dcm", stop_before_pixels=True).file_meta
    np.testing.assert_array_equal(read_frame(tmp_path / "nots.dcm", 0).pixels, STORED.astype(np.float32))


# ------------------------------------------------------------------------------------------ header, frames, marker


def test_the_header_holds_the_whitelisted_tags_only(tmp_path):
    path = write_dicom(tmp_path / "planted.dcm", STORED, tags=PLANTED_TAGS)
    header, _, _ = _read_dicom_header(path)
    assert header.Rows == 8 and header.Modality == "CT"
    assert not any(keyword in header for keyword in PLANTED_TAGS)


def test_a_header_pydicom_cannot_parse_is_named_by_its_error_class(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED))
    save_deflated(ds, tmp_path / "deflated.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((tmp_path / "deflated.dcm").read_bytes()[:-40])  # the deflate stream cut: zlib.error
    with pytest.raises(UnreadableImage) as caught:
        read_frame(cut, 0)
    assert str(caught.value) == f"{cut}: not a readable DICOM file (error)"


def test_a_bare_data_set_needs_both_rows_and_columns(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED, file_meta=False), force=True)
    del ds.Columns
    ds.save_as(tmp_path / "nocols.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "nocols.dcm").read_bytes()[128:132] != b"DICM"
    assert reason_of(tmp_path / "nocols.dcm") == "not a DICOM file (no 'DICM' marker and no image pixel elements)"


def test_a_deflated_file_without_geometry_names_the_file(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "g.dcm", STORED))
    ds.Rows = 0
    save_deflated(ds, tmp_path / "deflated.dcm")
    with pytest.raises(UnreadableImage) as caught:
        read_frame(tmp_path / "deflated.dcm", 0)
    assert str(caught.value) == f"{tmp_path / 'deflated.dcm'}: no image geometry (Rows/Columns missing or zero)"


def test_a_dicom_without_modality_takes_it_from_its_path(tmp_path):
    path = write_dicom(tmp_path / "brain_mr" / "slice.dcm", STORED, modality=None)
    assert read_frame(path, 0).modality == "MR"  # the folder's token
    assert read_frame(path, 0, modality="CT").modality == "CT"  # the caller's wins
    other = write_dicom(tmp_path / "scans" / "slice.dcm", STORED, modality=None)
    assert read_frame(other, 0).modality == "OT"


def test_one_frame_of_several_is_that_frame_with_its_own_rescale(tmp_path):
    stored = np.stack([np.full((4, 4), 100, np.int16), np.full((4, 4), 200, np.int16)])
    tags = {"PerFrameFunctionalGroupsSequence": [_transform(1, -1000), _transform(2, -500)]}
    path = write_dicom(tmp_path / "enhanced.dcm", stored, tags=tags)
    frame = read_frame(path, 1)
    assert frame.frame == 1 and float(frame.pixels[0, 0]) == 2 * 200 - 500


def test_encapsulated_pixel_data_with_fewer_frames_than_declared(tmp_path):
    stored = np.stack([np.full((4, 4), 1, np.uint16), np.full((4, 4), 2, np.uint16)])
    path = write_dicom(tmp_path / "rle.dcm", stored, compress=RLELossless)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.save_as(path)
    with pytest.raises(UnreadableImage) as caught:
        list(iter_frames(path))
    assert str(caught.value) == f"{path}: pixel data holds fewer frames than the 3 declared"


def test_no_marker_where_the_file_cannot_be_opened(tmp_path):
    assert has_dicm_marker(tmp_path / "missing.dcm") is False
    assert has_dicm_marker(tmp_path) is False  # a folder
    assert has_dicm_marker(write_dicom(tmp_path / "g.dcm", STORED)) is True


def test_a_bare_data_set_that_switches_vr_at_its_pixel_data_is_decoded(tmp_path):
    """Found with the mutation run: such a file is read whole (the frame-by-frame reader cannot follow the switch),
    and pydicom decodes a data set by its file meta's transfer syntax alone, which a bare data set lacks; the reader
    refused it ("cannot decode pixel data ... no (0002,0010)")."""
    path = _bare_with_implicit_pixel_element(tmp_path / "switch.dcm", STORED)
    np.testing.assert_array_equal(read_frame(path, 0).pixels, STORED.astype(np.float32))
    assert [f.frame for f in iter_frames(path)] == [0]
