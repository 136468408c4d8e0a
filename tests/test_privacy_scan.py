"""No DICOM patient/study tag value leaves the scan: not in the manifest, the failures, the output or exceptions."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from data.manifest import failures_path
from data.readers import UnreadableImage, iter_frames
from data.scan import main
from tests._readers_files import PLANTED_TAGS, cut, write_dicom

# Distinctive pieces of the planted values, so partial or re-formatted leaks are caught too.
NEEDLES = [
    *PLANTED_TAGS.values(),
    "Zzplanted",
    "PID-PLANTED",
    "Plantedville",
    "Drplanted",
    "424242",
    "1901-02-03",
    "PLANTED-BAD-DATE",
]


def build_planted_corpus(root: Path) -> dict[str, bool]:
    """DICOM files carrying planted patient/study values; path -> whether it should read fine."""
    pixels = np.arange(32 * 32, dtype=np.int16).reshape(32, 32)
    files = {}
    good = write_dicom(root / "a/good.dcm", pixels, tags=PLANTED_TAGS, slope=1, intercept=-1024)
    files["a/good.dcm"] = True
    # The same file with its pixel payload cut.
    cut(good, root / "a/truncated.dcm", -100)
    files["a/truncated.dcm"] = False
    # A second image, with an invalid planted date (pydicom logs it when writing; reading must not).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad_date = {**PLANTED_TAGS, "PatientBirthDate": "PLANTED-BAD-DATE"}
        write_dicom(root / "b/odd_date.dcm", pixels, modality="MR", tags=bad_date)
    files["b/odd_date.dcm"] = True
    # Planted values but no pixel data, and a bare dataset without file meta.
    nopix = pydicom.dcmread(good)
    del nopix.PixelData
    nopix.save_as(root / "b/nopixels.dcm")
    files["b/nopixels.dcm"] = False
    write_dicom(root / "c/bare", pixels, tags=PLANTED_TAGS, file_meta=False)
    files["c/bare"] = False  # no suffix and no DICM marker: an unsupported file
    # A multi-frame file whose geometry does not match its payload.
    multi = write_dicom(root / "c/multi.dcm", np.stack([pixels, pixels]), tags=PLANTED_TAGS)
    ds = pydicom.dcmread(multi)
    ds.NumberOfFrames = 5
    ds.save_as(root / "c/multi.dcm")
    files["c/multi.dcm"] = False
    for relpath in files:
        if relpath not in {"c/bare"}:
            assert b"Zzplanted^Secret" in (root / relpath).read_bytes()  # the values really are in the files
    return files


def assert_no_planted_value(text: str | bytes, where: str) -> None:
    haystack = text.decode("latin-1") if isinstance(text, bytes) else text
    leaked = [needle for needle in NEEDLES if needle in haystack]
    assert not leaked, f"planted values {leaked} leaked into {where}"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_scan_outputs_hold_no_planted_value(tmp_path, capfd, caplog, workers):
    files = build_planted_corpus(tmp_path / "corpus")
    out = tmp_path / "out" / "manifest.parquet"
    capfd.readouterr()  # forget what writing the planted files printed (pydicom logs the invalid date)
    caplog.clear()
    caplog.set_level(logging.DEBUG)

    assert main([str(tmp_path / "corpus"), "--out", str(out), "--workers", workers]) == 0

    manifest = pd.read_parquet(out)
    failures = pd.read_parquet(failures_path(out))
    assert sorted(manifest.path) == sorted(p for p, ok in files.items() if ok)  # the scan did its work
    assert sorted(failures.path) == sorted(p for p, ok in files.items() if not ok)
    for path in (out, failures_path(out), failures_path(out).with_suffix(".csv")):
        assert_no_planted_value(path.read_bytes(), path.name)
    assert_no_planted_value(manifest.to_csv(), "manifest values")
    assert_no_planted_value(failures.to_csv(), "failure reasons")
    captured = capfd.readouterr()
    assert "scanned 6 files" in captured.out
    assert_no_planted_value(captured.out, "stdout")
    assert_no_planted_value(captured.err, "stderr")
    assert_no_planted_value(caplog.text, "logs")


def test_exceptions_hold_no_planted_value(tmp_path):
    files = build_planted_corpus(tmp_path)
    for relpath, ok in files.items():
        if ok:
            continue
        with pytest.raises(UnreadableImage) as info:
            list(iter_frames(tmp_path / relpath))
        chain, exc = [], info.value
        while exc is not None:  # the message and every chained cause
            chain.append(f"{type(exc).__name__}: {exc}")
            exc = exc.__cause__ or exc.__context__
        assert_no_planted_value("\n".join(chain), f"the exception for {relpath}")
