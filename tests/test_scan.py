"""`python -m data scan` on a small corpus of good and bad files: manifest, failures, ids, summary."""

from __future__ import annotations

import faulthandler
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import data.manifest
from data.ids import make_item_id
from data.manifest import (
    MANIFEST_COLUMNS,
    exclusions_path,
    failures_path,
    read_manifest,
    scan_corpus,
    write_manifest,
)
from data.readers import iter_frames as _iter_frames
from data.scan import main
from data.series import SERIES_COLUMNS
from tests._readers_files import cut, pydicom_file, write_dicom, write_nifti, write_opencv

# path -> number of items expected with nifti_volumes='all'
GOOD = {
    "ct/ct_small.dcm": 1,
    "dicom_by_uid/1.2.826.0.1.3680043.2.1143.9": 1,
    "brain/case1_t1.nii.gz": 4,
    "fmri/example4d.nii.gz": 48,
    "brain/nan_inf.nii": 3,
    "chest_xray/cxr_16bit.png": 1,
    "photos/colour.jpg": 1,
    "stacks/pages.tiff": 3,
}
# path -> number of items with --keep-excluded, part of the exclusion reason (excluded by default)
EXCLUDED = {
    "mr/mr_small_j2k.dcm": (1, "excluded: derived or secondary image (ImageType DERIVED/SECONDARY)"),
    "us/two_frames.dcm": (2, "secondary capture (SOP class 1.2.840.10008.5.1.4.1.1.7)"),
}
# path -> part of the failure reason
BAD = {
    "bad/zero.dcm": "empty file",
    "bad/truncated.dcm": "pixel data truncated",
    "bad/nopixels.dcm": "no pixel data",
    "bad/text.dcm": "not a DICOM file",
    "bad/corrupt.png": "cannot decode PNG",
    "bad/cut.nii.gz": "cannot read NIfTI",
    "notes.txt": "unsupported file type (.txt)",
}


def build_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "ct").mkdir(parents=True)
    shutil.copy(pydicom_file("CT_small.dcm"), root / "ct/ct_small.dcm")
    (root / "mr").mkdir()
    shutil.copy(pydicom_file("MR_small_jp2klossless.dcm"), root / "mr/mr_small_j2k.dcm")
    (root / "us").mkdir()
    shutil.copy(pydicom_file("SC_rgb_rle_2frame.dcm"), root / "us/two_frames.dcm")
    write_dicom(root / "dicom_by_uid/1.2.826.0.1.3680043.2.1143.9", np.zeros((16, 20), np.int16), modality="MR")
    write_nifti(root / "brain/case1_t1.nii.gz", rng.normal(size=(24, 20, 4)).astype(np.float32))
    from nibabel.testing import data_path

    (root / "fmri").mkdir()
    shutil.copy(Path(data_path) / "example4d.nii.gz", root / "fmri/example4d.nii.gz")
    nan_volume = rng.normal(size=(8, 8, 3)).astype(np.float32)
    nan_volume[0, 0, :] = np.nan
    nan_volume[1, 1, :] = np.inf
    write_nifti(root / "brain/nan_inf.nii", nan_volume)
    write_opencv(root / "chest_xray/cxr_16bit.png", rng.integers(0, 65535, size=(40, 30)).astype(np.uint16))
    write_opencv(root / "photos/colour.jpg", rng.integers(0, 255, size=(32, 32, 3)).astype(np.uint8))
    import cv2

    (root / "stacks").mkdir()
    assert cv2.imwritemulti(str(root / "stacks/pages.tiff"), [np.full((8, 8), k, np.uint8) for k in range(3)])

    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.dcm").write_bytes(b"")
    cut(pydicom_file("CT_small.dcm"), bad / "truncated.dcm", -500)  # ORIGINAL/PRIMARY: not excluded
    write_dicom(bad / "nopixels_src.dcm", np.zeros((4, 4), np.int16))
    import pydicom

    ds = pydicom.dcmread(bad / "nopixels_src.dcm")
    del ds.PixelData
    ds.save_as(bad / "nopixels.dcm")
    (bad / "nopixels_src.dcm").unlink()
    (bad / "text.dcm").write_text("patient notes, not an image\n")
    png = write_opencv(bad / "good.png", np.zeros((64, 64), np.uint16) + 3)
    cut(png, bad / "corrupt.png", png.stat().st_size // 2)
    png.unlink()
    gz = write_nifti(bad / "full.nii.gz", rng.normal(size=(16, 16, 8)))
    cut(gz, bad / "cut.nii.gz", gz.stat().st_size // 2)
    gz.unlink()
    (root / "notes.txt").write_text("unrelated")
    # Ignored: hidden files and folders.
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_opencv(root / ".cache/thumb.png", np.zeros((4, 4), np.uint8))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def scanned(corpus, tmp_path_factory):
    """The CLI run once, with 2 worker processes: (exit code, stdout, manifest path)."""
    out = tmp_path_factory.mktemp("out") / "manifest.parquet"
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(corpus), "--out", str(out), "--workers", "2"])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_cli_exit_code_and_summary(scanned):
    code, stdout, stderr, out = scanned
    assert code == 0
    n_items, n_failures = sum(GOOD.values()), len(BAD)
    summary = stdout.strip().splitlines()[-1]
    match = re.match(r"scanned (\d+) files: (\d+) items, (\d+) failures -> (\S+)", summary)
    assert match, summary
    n_files = len(GOOD) + len(BAD) + len(EXCLUDED)
    assert tuple(int(g) for g in match.groups()[:3]) == (n_files, n_items, n_failures)
    assert match.group(4) == str(out)
    assert "bad/text.dcm: not a DICOM file" in stderr  # failures are listed for the user too


def test_every_good_file_reaches_the_manifest(scanned, corpus):
    manifest = read_manifest(scanned[3])
    assert tuple(manifest.columns) == MANIFEST_COLUMNS + SERIES_COLUMNS
    assert isinstance(manifest.index, pd.RangeIndex)
    assert manifest.groupby("path").size().to_dict() == GOOD
    assert manifest.equals(manifest.sort_values(["path", "frame"]).reset_index(drop=True))
    for path, n in GOOD.items():
        assert manifest.loc[manifest.path == path, "frame"].tolist() == list(range(n))
    ct = manifest.loc[manifest.path == "ct/ct_small.dcm"].iloc[0]
    assert (ct.modality, ct.height, ct.width, ct.source_format) == ("CT", 128, 128, "dicom")
    by_path = manifest.drop_duplicates("path").set_index("path")
    assert by_path.loc["brain/case1_t1.nii.gz", ["modality", "height", "width"]].tolist() == ["MR", 24, 20]
    assert by_path.loc["chest_xray/cxr_16bit.png", ["modality", "height", "width"]].tolist() == ["XR", 40, 30]
    assert by_path.loc["dicom_by_uid/1.2.826.0.1.3680043.2.1143.9", "source_format"] == "dicom"
    assert by_path.loc["stacks/pages.tiff", "modality"] == "OT"
    assert not manifest.path.str.contains(r"(?:^|/)\.").any()


def test_item_ids_are_make_item_id(scanned):
    manifest = read_manifest(scanned[3])
    expected = [make_item_id(p, f) for p, f in zip(manifest.path, manifest.frame, strict=True)]
    assert manifest.item_id.tolist() == expected
    assert manifest.item_id.is_unique


def test_every_bad_file_is_a_failure_with_a_reason(scanned):
    out = scanned[3]
    failures = pd.read_parquet(failures_path(out))
    assert failures.columns.tolist() == ["path", "reason"]
    reasons = dict(zip(failures.path, failures.reason, strict=True))
    assert set(reasons) == set(BAD)
    for path, expected in BAD.items():
        assert expected in reasons[path], (path, reasons[path])
    csv = pd.read_csv(failures_path(out).with_suffix(".csv"))
    assert csv.equals(failures)


def test_excluded_files_are_listed_with_their_reason_and_can_be_kept(scanned, corpus):
    exclusions = pd.read_csv(exclusions_path(scanned[3]))
    assert exclusions.columns.tolist() == ["path", "reason"]
    reasons = dict(zip(exclusions.path, exclusions.reason, strict=True))
    assert set(reasons) == set(EXCLUDED)
    for path, (_, expected) in EXCLUDED.items():
        assert expected in reasons[path], (path, reasons[path])
    assert f"{len(EXCLUDED)} files excluded" in scanned[2]
    kept, failures = scan_corpus(corpus, workers=1, progress=False, keep_excluded=True)
    assert kept.groupby("path").size().to_dict() == GOOD | {path: n for path, (n, _) in EXCLUDED.items()}
    assert failures.path.tolist() == sorted(BAD)


def test_second_scan_is_identical(scanned, corpus):
    first = read_manifest(scanned[3])
    manifest, failures = scan_corpus(corpus, workers=1, progress=False)
    pd.testing.assert_frame_equal(manifest, first)
    assert failures.path.tolist() == sorted(BAD)


def test_first_volume_only(corpus):
    manifest, _ = scan_corpus(corpus, nifti_volumes="first", workers=1, progress=False)
    counts = manifest.groupby("path").size()
    assert counts["fmri/example4d.nii.gz"] == 24 and counts["brain/case1_t1.nii.gz"] == 4


def test_outputs_inside_the_corpus_are_not_scanned(tmp_path):
    corpus = tmp_path / "corpus"
    write_opencv(corpus / "a/xray.png", np.zeros((8, 8), np.uint8))
    out = corpus / "manifest.parquet"
    for _ in range(2):  # the second run sees the first run's outputs in the corpus
        assert main([str(corpus), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert read_manifest(out).path.tolist() == ["a/xray.png"]
    assert pd.read_parquet(failures_path(out)).empty


def test_scanignore_and_ignore_patterns(tmp_path):
    corpus = tmp_path / "corpus"
    for relpath in ("images/xray_1.png", "truth/0a1b.png", "sub/truth/0a1c.png", "keep/truth.png"):
        write_opencv(corpus / relpath, np.zeros((8, 8), np.uint8))
    (corpus / "labels.csv").write_text("item_id,label\n")
    (corpus / "coco").mkdir()
    (corpus / "coco/instances.json").write_text("{}")
    (corpus / "README.txt").write_text("a sample corpus")
    (corpus / ".scanignore").write_text("# not images\ntruth/\n*.csv\n\n")
    out = tmp_path / "m.parquet"
    argv = [str(corpus), "--out", str(out), "--workers", "1", "--no-progress", "--ignore", "coco/*.json"]
    assert main([*argv, "--ignore", "README.txt"]) == 0
    # 'truth/' skips folders named truth at any depth, not the file truth.png.
    assert read_manifest(out).path.tolist() == ["images/xray_1.png", "keep/truth.png"]
    assert pd.read_parquet(failures_path(out)).empty
    manifest, failures = scan_corpus(corpus, progress=False, workers=1)  # .scanignore applies to every scan
    assert sorted(manifest.path) == ["images/xray_1.png", "keep/truth.png"]
    assert sorted(failures.path) == ["README.txt", "coco/instances.json"]


def test_not_a_directory(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "m.parquet")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_empty_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    manifest, failures = scan_corpus(tmp_path / "corpus", progress=False)
    assert manifest.empty and failures.empty and tuple(manifest.columns) == MANIFEST_COLUMNS + SERIES_COLUMNS
    out = write_manifest(manifest, failures, tmp_path / "out/m.parquet")
    assert read_manifest(out).empty


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        read_manifest(tmp_path / "nothing.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="text.parquet: not a readable parquet"):
        read_manifest(tmp_path / "text.parquet")
    pd.DataFrame({"path": ["a.png"], "frame": [0]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match=r"other.parquet: not a manifest, missing columns \['item_id'"):
        read_manifest(tmp_path / "other.parquet")


def test_failures_path():
    assert failures_path(Path("/x/manifest.parquet")) == Path("/x/manifest.failures.parquet")


def _frames_or_segfault(path, **kwargs):
    """iter_frames, except that a file named crash*.png kills its process as a native codec's segfault would."""
    if path.name.startswith("crash"):
        faulthandler.disable()  # no stack dump from the test's own "crash" in the test output
        os.kill(os.getpid(), signal.SIGSEGV)
    return _iter_frames(path, **kwargs)


def test_a_decoder_that_kills_its_process_fails_only_its_file(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    for k in range(60):  # enough files for chunks of several files per task (62 // (2 workers * 8) = 3)
        write_opencv(corpus / f"xr/img_{k:02d}.png", np.full((8, 8), k, np.uint8))
    for name in ("crash_a.png", "crash_b.png"):
        write_opencv(corpus / "xr" / name, np.zeros((8, 8), np.uint8))
    # Worker processes are forked from this one and so inherit the patched reader.
    monkeypatch.setattr(data.manifest, "iter_frames", _frames_or_segfault)
    manifest, failures = scan_corpus(corpus, workers=2, progress=False)
    assert manifest.path.tolist() == [f"xr/img_{k:02d}.png" for k in range(60)]
    assert failures.path.tolist() == ["xr/crash_a.png", "xr/crash_b.png"]
    assert set(failures.reason) == {"the decoder crashed the reading process"}
