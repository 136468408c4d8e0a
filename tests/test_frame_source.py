"""FrameSource: each multi-frame file decoded once per unit of work, frames equal to item-by-item reads, a byte cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import RLELossless

from data.frame_source import FrameSource
from data.manifest import scan_corpus
from data.readers import UnreadableImage, read_frame
from tests._readers_files import cut, write_dicom, write_nifti, write_opencv

SLICES = 12
FRAME_BYTES = 64 * 64 * 4  # one decoded float32 slice of the 64 x 64 volumes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two gzipped CT volumes, an uncompressed one, an RLE multi-frame DICOM and two PNGs; every slice distinct."""
    root = tmp_path_factory.mktemp("volumes")
    rng = np.random.default_rng(0)
    for name in ("ct_a.nii.gz", "ct_b.nii.gz", "ct_plain.nii"):
        volume = rng.integers(-1000, 1500, (64, 64, SLICES), dtype=np.int16)
        volume += np.arange(SLICES, dtype=np.int16) * 7  # slice k differs from slice k + 1 everywhere
        write_nifti(root / name, volume)
    frames = rng.integers(0, 4000, (6, 32, 40), dtype=np.uint16)
    write_dicom(root / "ct_multiframe.dcm", frames, slope=1.0, intercept=-1024.0, compress=RLELossless)
    for i in range(2):
        write_opencv(root / f"xray_{i}.png", rng.integers(0, 255, (30, 20), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def items(corpus) -> list[tuple[str, int, str]]:
    manifest, failures = scan_corpus(corpus, workers=1, progress=False)
    assert failures.empty and len(manifest) == 3 * SLICES + 6 + 2
    return list(zip(manifest["path"], manifest["frame"], manifest["modality"], strict=True))


def read_all(source: FrameSource, items, order=None) -> dict[tuple[str, int], np.ndarray]:
    order = items if order is None else order
    source.plan([(path, frame) for path, frame, _ in order])
    return {(path, frame): source.read(path, frame, modality).pixels for path, frame, modality in order}


def assert_equal_to_item_by_item(corpus: Path, got: dict, items) -> None:
    for path, frame, modality in items:
        expected = read_frame(corpus / path, frame, modality=modality).pixels
        np.testing.assert_array_equal(got[(path, frame)], expected, err_msg=f"{path} frame {frame}")


def test_volume_aware_reads_equal_item_by_item_reads_and_decode_each_file_once(corpus, items):
    source = FrameSource(corpus)
    got = read_all(source, items)
    assert_equal_to_item_by_item(corpus, got, items)
    stats = source.stats
    # gzipped NIfTI and compressed DICOM: one decode per file; the .nii (memory-mapped) and PNGs: frame by frame
    assert stats.file_decodes == 3
    assert stats.held_reads == 2 * (SLICES - 1) + (6 - 1)
    assert stats.frame_reads == SLICES + 2
    assert source.bytes_held == 0  # every planned frame was read, so none is held
    assert 0 < stats.peak_bytes <= stats.max_bytes


def test_modality_override_names_the_frame_as_read_frame_does(corpus):
    source = FrameSource(corpus)
    source.plan([("ct_a.nii.gz", 0), ("ct_a.nii.gz", 1)])
    assert source.read("ct_a.nii.gz", 0, "MR").modality == "MR"
    assert source.read("ct_a.nii.gz", 1).modality == read_frame(corpus / "ct_a.nii.gz", 1).modality == "CT"


def test_cap_smaller_than_a_volume_decodes_it_once_per_cap_full(corpus, items):
    source = FrameSource(corpus, max_bytes=int(2.5 * FRAME_BYTES))  # room for 2 held slices
    got = read_all(source, items)
    assert_equal_to_item_by_item(corpus, got, items)
    # each decode serves its slice and holds the next two: slices 0, 3, 6, 9 decode -> 4 per gzipped volume
    assert source.stats.file_decodes == 2 * 4 + 1  # + the DICOM, whose 32 x 40 frames fit at once
    assert source.stats.peak_bytes <= source.stats.max_bytes


def test_more_volumes_than_fit_read_in_order_decode_each_once(corpus, items):
    source = FrameSource(corpus, max_bytes=SLICES * FRAME_BYTES)  # one volume at a time
    got = read_all(source, items)
    assert_equal_to_item_by_item(corpus, got, items)
    assert source.stats.file_decodes == 3 and source.stats.evictions == 0
    assert source.stats.peak_bytes == (SLICES - 1) * FRAME_BYTES  # the first slice is served, the others held


def test_interleaved_reads_evict_and_the_cap_still_holds(corpus, items):
    volumes = [i for i in items if i[0] in ("ct_a.nii.gz", "ct_b.nii.gz")]
    interleaved = [item for pair in zip(volumes[:SLICES], volumes[SLICES:], strict=True) for item in pair]
    source = FrameSource(corpus, max_bytes=SLICES * FRAME_BYTES)
    got = read_all(source, volumes, interleaved)
    assert_equal_to_item_by_item(corpus, got, volumes)
    assert source.stats.evictions > 0 and source.stats.peak_bytes <= source.stats.max_bytes
    roomy = FrameSource(corpus, max_bytes=2 * SLICES * FRAME_BYTES)
    read_all(roomy, volumes, interleaved)
    assert roomy.stats.file_decodes == 2 and roomy.stats.evictions == 0  # both fit: each decoded once


def test_no_cap_reads_item_by_item(corpus, items):
    source = FrameSource(corpus, max_bytes=0)
    got = read_all(source, items)
    assert_equal_to_item_by_item(corpus, got, items)
    assert source.stats.file_decodes == 0 and source.stats.frame_reads == len(items)


def outcome(read, k):
    try:
        return read(k).pixels
    except UnreadableImage as e:
        return e.reason


def test_truncated_volume_gives_each_item_what_item_by_item_reading_gives(corpus, tmp_path):
    cut(corpus / "ct_a.nii.gz", tmp_path / "broken.nii.gz", keep=-2000)  # the first slices still decode alone
    source = FrameSource(tmp_path)
    source.plan([("broken.nii.gz", k) for k in range(SLICES)])
    got = [outcome(lambda k: source.read("broken.nii.gz", k), k) for k in range(SLICES)]
    alone = [outcome(lambda k: read_frame(tmp_path / "broken.nii.gz", k), k) for k in range(SLICES)]
    assert isinstance(alone[0], np.ndarray) and isinstance(alone[-1], str)  # both kinds of outcome occur
    for a, b in zip(got, alone, strict=True):
        assert type(a) is type(b)
        np.testing.assert_array_equal(a, b)


def test_a_failed_read_names_the_file_by_its_corpus_relative_path(tmp_path):
    from data.frame_source import FrameSource
    from data.readers import UnreadableImage

    (tmp_path / "corpus_root" / "ct").mkdir(parents=True)
    (tmp_path / "corpus_root" / "ct" / "broken.dcm").write_bytes(b"not dicom at all" * 4)
    source = FrameSource(tmp_path / "corpus_root", max_bytes=0)
    with pytest.raises(UnreadableImage) as info:
        source.image("ct/broken.dcm", 0, "CT")
    assert str(info.value).startswith("ct/broken.dcm: ") and str(tmp_path) not in str(info.value)
