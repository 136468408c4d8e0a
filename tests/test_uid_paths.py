"""`data scan` warns when folder or file names look like DICOM UIDs (they would be stored), without quoting them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.uid_paths import looks_like_uid, uid_path_warning
from tests._readers_files import write_dicom

STUDY_UID = "1.2.840.113619.2.55.3.604688119"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.mark.parametrize(
    "name",
    [STUDY_UID, INSTANCE_UID, f"{INSTANCE_UID}.dcm", "2.25.3141592653589793.nii.gz", "1.3.6.1.4.1.9328.50.4.1"],
)
def test_uids_with_or_without_suffix(name):
    assert looks_like_uid(name)


@pytest.mark.parametrize(
    "name", ["2024.01.15", "1.2", "1.2.3", "v1.2.3.4", "192.168.0.1", "case_0001", "slice_000.dcm", "3.1.4.1.5"]
)
def test_ordinary_names(name):
    assert not looks_like_uid(name)


def test_warning_counts_files_and_quotes_no_uid():
    paths = [f"p/{STUDY_UID}/a.png", f"p/{STUDY_UID}/b.png", f"x/{INSTANCE_UID}.dcm", "ok/c.png"]
    warning = uid_path_warning(paths)
    assert warning.startswith("3 of 4 files") and "rename" in warning
    assert STUDY_UID not in warning and INSTANCE_UID not in warning and "p/" not in warning
    assert uid_path_warning(["ok/c.png", "case_0001/slice_000.dcm"]) is None


def scan(corpus: Path, out: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "data", "scan", str(corpus), "--out", str(out), "--workers", "1", "--no-progress"]
    return subprocess.run(argv, capture_output=True, text=True)


def test_scan_command_warns_and_still_writes_the_manifest(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "patients" / STUDY_UID).mkdir(parents=True)
    cv2.imwrite(str(corpus / "patients" / STUDY_UID / "slice_0.png"), np.zeros((8, 8), np.uint8))
    write_dicom(corpus / "by_uid" / INSTANCE_UID, np.zeros((8, 8), np.int16))
    (corpus / "plain").mkdir()
    cv2.imwrite(str(corpus / "plain" / "x.png"), np.zeros((8, 8), np.uint8))

    done = scan(corpus, tmp_path / "manifest.parquet")
    assert done.returncode == 0, done.stderr
    assert "2 of 3 files have a folder or file name that looks like a DICOM UID" in done.stderr
    output = done.stdout + done.stderr
    assert STUDY_UID not in output and INSTANCE_UID not in output and "1.2.8" not in output
    assert "3 items" in done.stdout and (tmp_path / "manifest.parquet").is_file()

    clean = tmp_path / "clean"
    (clean / "case_0001").mkdir(parents=True)
    cv2.imwrite(str(clean / "case_0001" / "x.png"), np.zeros((8, 8), np.uint8))
    done = scan(clean, tmp_path / "clean.parquet")
    assert done.returncode == 0 and "DICOM UID" not in done.stderr
