"""Patients, studies and series in the manifest: keyed grouping keys, slice order along the normal, series checks,
default exclusions, the corpus key, and no identifier value in any scan output."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from data.keys import CorpusKey, load_or_create_key
from data.manifest import (
    exclusions_path,
    failures_path,
    read_manifest,
    scan_corpus,
    scan_corpus_full,
    summary_path,
    write_manifest,
)
from data.sample import write_sample_corpus
from data.sample.ct_dicom import sample_patient, slice_positions
from data.scan import main
from data.series import SERIES_COLUMNS
from data.uid_paths import looks_like_date, looks_like_name, looks_like_record_number, path_warnings
from tests._readers_files import write_dicom, write_nifti

KEY = CorpusKey(b"k" * 32)
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def slice_tags(patient: str, series: str, position, orientation=AXIAL, **extra) -> dict:
    return {
        "PatientID": patient,
        "PatientName": f"Zz^{patient}",
        "StudyInstanceUID": f"1.2.3.4.{abs(hash(patient)) % 1000}",
        "SeriesInstanceUID": series,
        "ImagePositionPatient": [float(v) for v in position],
        "ImageOrientationPatient": orientation,
        "PixelSpacing": [0.7, 0.8],
        "SliceThickness": 3.0,
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        **extra,
    }


def scan(root: Path, **kwargs) -> pd.DataFrame:
    return scan_corpus(root, workers=1, progress=False, key=KEY, **kwargs)[0]


def row(manifest: pd.DataFrame, path: str, frame: int = 0) -> pd.Series:
    return manifest.loc[(manifest.path == path) & (manifest.frame == frame)].iloc[0]


def test_tilted_series_is_ordered_along_its_normal_not_by_name_number_or_z(tmp_path):
    # 30 degree gantry tilt: row cosines x, column cosines (0, cos t, sin t), normal n = (0, -sin t, cos t).
    # Slice k lies at distance 3k along n, shifted in plane by a_k along the column direction: z alone orders
    # them 3, 1, 0, 2; file names d, a, c, b order them 1, 3, 2, 0; InstanceNumber 2, 4, 1, 3 orders them 2, 0, 3, 1.
    t = math.radians(30)
    col, normal = np.array([0, math.cos(t), math.sin(t)]), np.array([0, -math.sin(t), math.cos(t)])
    base = np.array([-50.0, -40.0, 100.0])
    shifts, names, numbers = [20.0, 0.0, 10.0, -20.0], ["d", "a", "c", "b"], [2, 4, 1, 3]
    orientation = [1.0, 0.0, 0.0, *col.tolist()]
    for k in range(4):
        position = base + 3 * k * normal + shifts[k] * col
        tags = slice_tags("P1", "1.2.3.9.1", position, orientation, InstanceNumber=numbers[k])
        write_dicom(tmp_path / f"s/{names[k]}.dcm", np.full((8, 10), k, np.int16), tags=tags)
    z = [(base + 3 * k * normal + shifts[k] * col)[2] for k in range(4)]
    assert np.argsort(z).tolist() != [0, 1, 2, 3]  # the case is asymmetric: z alone would be wrong
    manifest = scan(tmp_path)
    for k in range(4):
        r = row(manifest, f"s/{names[k]}.dcm")
        assert r.slice_index == k
        assert r.slice_position_mm == pytest.approx(float(base @ normal) + 3 * k, abs=1e-3)
        assert list(r.spacing_mm) == pytest.approx([0.7, 0.8, 3.0])
        assert r.n_slices == 4
    assert manifest.series_key.nunique() == 1 and manifest.patient_key.nunique() == 1


def test_keys_equal_within_a_series_and_differ_across_patients(tmp_path):
    for i, (patient, series) in enumerate((("P1", "1.2.3.9.1"), ("P1", "1.2.3.9.2"), ("P2", "1.2.3.9.3"))):
        for k in range(2):
            tags = slice_tags(patient, series, (0, 0, 2.0 * k))
            write_dicom(tmp_path / f"s{i}/{k}.dcm", np.zeros((8, 8), np.int16), tags=tags)
    manifest = scan(tmp_path)
    by_series = manifest.groupby("series_key")
    assert len(by_series) == 3 and all(g.patient_key.nunique() == 1 and len(g) == 2 for _, g in by_series)
    patients = manifest.groupby("patient_key").series_key.nunique().sort_values().tolist()
    assert patients == [1, 2]  # P2: one series; P1: two series, one patient key
    # the same study key for P1's two series (same StudyInstanceUID), another for P2
    assert manifest.groupby("patient_key").study_key.nunique().tolist() == [1, 1]
    assert manifest.study_key.nunique() == 2


def enhanced(path: Path, z_per_frame: list[float]) -> None:
    """An Enhanced CT file whose per-frame positions are `z_per_frame` (geometry in functional groups only)."""
    n = len(z_per_frame)
    write_dicom(
        path,
        np.stack([np.full((6, 6), f, np.int16) for f in range(n)]),
        tags={"PatientID": "P9", "SeriesInstanceUID": "1.2.3.9.9", "ImageType": ["ORIGINAL", "PRIMARY"]},
    )
    import pydicom

    ds = pydicom.dcmread(path)
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.6]
    shared.PixelMeasuresSequence[0].SliceThickness = 1.0
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = AXIAL
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in z_per_frame:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, z]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(path)


def test_multiframe_order_and_spacing_from_functional_groups(tmp_path):
    enhanced(tmp_path / "mf.dcm", [4.0, 0.0, 8.0, 2.0, 6.0])
    manifest = scan(tmp_path)
    assert manifest.slice_index.tolist() == [2, 0, 4, 1, 3]
    assert manifest.slice_position_mm.tolist() == [4.0, 0.0, 8.0, 2.0, 6.0]
    assert list(manifest.spacing_mm.iloc[0]) == pytest.approx([0.5, 0.6, 2.0])  # step between positions, not 1 mm


def test_series_checks(tmp_path):
    cases = {
        "dup": [(0, 0, 0), (0, 0, 2), (0, 0, 2), (0, 0, 4)],
        "gap": [(0, 0, 0), (0, 0, 2), (0, 0, 4), (0, 0, 10)],  # 6 mm > 1.5 x the median step 2 mm
        "ok": [(0, 0, 0), (0, 0, 2), (0, 0, 4), (0, 0, 6.5)],  # 2.5 mm <= 1.5 x 2 mm: not a gap
    }
    for i, (name, positions) in enumerate(cases.items()):
        for k, position in enumerate(positions):
            tags = slice_tags(name, f"1.9.9.{i}", position)
            write_dicom(tmp_path / f"{name}/{k}.dcm", np.zeros((8, 8), np.int16), tags=tags)
    for k, (orientation, size) in enumerate([(AXIAL, 8), ([1.0, 0, 0, 0, 0, -1.0], 8), (AXIAL, 12)]):
        tags = slice_tags("m", "1.9.9.9", (0, 0, 2 * k), orientation)
        write_dicom(tmp_path / f"mixed/{k}.dcm", np.zeros((size, size), np.int16), tags=tags)
    result = scan_corpus_full(tmp_path, workers=1, progress=False, key=KEY)
    checks = {name: sorted(found) for name, found in result.series.checks.items()}
    assert [f.split(":")[0] for f in checks["duplicate positions"]] == ["dup/0.dcm"]
    assert "1 slices share" in checks["duplicate positions"][0]
    assert [f.split(":")[0] for f in checks["gaps"]] == ["gap/0.dcm"]
    assert [f.split(":")[0] for f in checks["mixed orientation"]] == ["mixed/0.dcm"]
    assert [f.split(":")[0] for f in checks["mixed size"]] == ["mixed/0.dcm"]
    dup = result.manifest[result.manifest.path.str.startswith("dup/")]
    assert dup.slice_index.tolist() == [0, 1, 1, 2] and set(dup.n_slices) == {3}  # equal positions share an index


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "excluded: localizer/scout (ImageType LOCALIZER)"),
        (
            {"ImageType": ["DERIVED", "PRIMARY", "MPR"]},
            "excluded: derived or secondary image (ImageType DERIVED/PRIMARY)",
        ),
        (
            {"ImageType": ["ORIGINAL", "SECONDARY"]},
            "excluded: derived or secondary image (ImageType ORIGINAL/SECONDARY)",
        ),
        (
            {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"},
            "excluded: secondary capture (SOP class 1.2.840.10008.5.1.4.1.1.7)",
        ),
        (
            {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.2"},
            "excluded: secondary capture (SOP class 1.2.840.10008.5.1.4.1.1.7.2)",
        ),
        ({"BurnedInAnnotation": "YES"}, "excluded: burned-in annotation (BurnedInAnnotation YES)"),
    ],
)
def test_each_exclusion_with_its_reason(tmp_path, tags, reason):
    write_dicom(tmp_path / "keep.dcm", np.zeros((8, 8), np.int16), tags=slice_tags("P", "1.2.3", (0, 0, 0)))
    write_dicom(tmp_path / "x.dcm", np.zeros((8, 8), np.int16), tags=slice_tags("P", "1.2.4", (0, 0, 0)) | tags)
    result = scan_corpus_full(tmp_path, workers=1, progress=False, key=KEY)
    assert result.manifest.path.tolist() == ["keep.dcm"] and result.failures.empty
    assert result.exclusions.values.tolist() == [["x.dcm", reason]]
    kept = scan(tmp_path, keep_excluded=True)
    assert kept.path.tolist() == ["keep.dcm", "x.dcm"]


def test_burned_in_no_and_original_primary_are_kept(tmp_path):
    tags = slice_tags("P", "1.2.3", (0, 0, 0), BurnedInAnnotation="NO")
    write_dicom(tmp_path / "a.dcm", np.zeros((8, 8), np.int16), tags=tags)
    assert scan(tmp_path).path.tolist() == ["a.dcm"]


def test_a_guessed_patient_id_cannot_be_matched_without_the_secret(tmp_path):
    secret_id = "MRN00012345"
    write_dicom(tmp_path / "c/a.dcm", np.zeros((8, 8), np.int16), tags=slice_tags(secret_id, "1.2.3", (0, 0, 0)))
    key = load_or_create_key(tmp_path / "k/corpus.key")[0]
    manifest = scan_corpus(tmp_path / "c", workers=1, progress=False, key=key)[0]
    stored = set(manifest[["patient_key", "study_key", "series_key"]].to_numpy().ravel())
    guesses = {
        hashlib.sha256(secret_id.encode()).hexdigest(),
        hashlib.blake2b(secret_id.encode()).hexdigest(),
        hashlib.md5(secret_id.encode()).hexdigest(),
        *(
            hmac.new(k, m.encode(), hashlib.sha256).hexdigest()
            for k in (b"", b"k" * 32)
            for m in (secret_id, f"patient\0{secret_id}")
        ),
        CorpusKey(b"\0" * 32).key("patient", secret_id),
        CorpusKey(b"k" * 32).key("patient", secret_id),
    }
    assert not any(g[: len(s)] == s for g in guesses for s in stored)
    assert key.key("patient", secret_id) in stored  # with the secret, the key is reproducible


def test_key_file_is_private_stable_and_another_key_gives_other_keys(tmp_path):
    write_dicom(tmp_path / "c/a.dcm", np.zeros((8, 8), np.int16), tags=slice_tags("P", "1.2.3", (0, 0, 0)))
    write_nifti(tmp_path / "c/v.nii.gz", np.zeros((4, 4, 2), np.float32))
    key_file = tmp_path / "keys/corpus.key"
    key, created = load_or_create_key(key_file)
    assert created and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again, created_again = load_or_create_key(key_file)
    assert not created_again and again.fingerprint == key.fingerprint
    assert key.secret.hex() not in repr(again) and key.secret.hex() not in again.fingerprint
    first = scan_corpus(tmp_path / "c", workers=1, progress=False, key=key)[0]
    second = scan_corpus(tmp_path / "c", workers=1, progress=False, key=again)[0]
    other = scan_corpus(tmp_path / "c", workers=1, progress=False, key=load_or_create_key(tmp_path / "other.key")[0])[0]
    pd.testing.assert_frame_equal(first, second)
    for column in ("patient_key", "study_key", "series_key"):
        assert not set(first[column]) & set(other[column])
    key_file.chmod(0o644)
    with pytest.raises(PermissionError, match="readable by others"):
        load_or_create_key(key_file)
    (tmp_path / "bad.key").write_text("nothex")
    os.chmod(tmp_path / "bad.key", 0o600)
    with pytest.raises(ValueError, match="not a corpus key file"):
        load_or_create_key(tmp_path / "bad.key")


def test_scan_refuses_a_manifest_written_with_another_key(tmp_path, capsys):
    write_dicom(tmp_path / "c/a.dcm", np.zeros((8, 8), np.int16), tags=slice_tags("P", "1.2.3", (0, 0, 0)))
    out = tmp_path / "m/manifest.parquet"
    argv = [str(tmp_path / "c"), "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*argv, "--key-file", str(tmp_path / "one.key")]) == 0
    fingerprint = json.loads(summary_path(out).read_text())["key_fingerprint"]
    assert fingerprint == load_or_create_key(tmp_path / "one.key")[0].fingerprint
    assert main([*argv, "--key-file", str(tmp_path / "one.key")]) == 0  # same key: fine
    assert main([*argv, "--key-file", str(tmp_path / "two.key")]) == 2
    assert "another corpus key" in capsys.readouterr().err


def test_nifti_series_from_the_header_and_patients_from_a_pattern_or_a_mapping(tmp_path, capsys):
    affine = np.diag([-0.9, 1.1, -2.5, 1.0])  # x and z flipped on disk: canonical slices run the other way
    for relpath in ("sub-01/ses-1/anat.nii.gz", "sub-01/ses-2/anat.nii.gz", "sub-02/ses-1/anat.nii.gz"):
        write_nifti(tmp_path / "c" / relpath, np.zeros((6, 5, 3), np.float32), affine)
    plain = scan(tmp_path / "c")
    assert plain.patient_key.nunique() == 3  # no grouping: each file its own patient
    r = row(plain, "sub-01/ses-1/anat.nii.gz", 2)
    assert (r.slice_index, r.n_slices) == (2, 3)
    assert list(r.spacing_mm) == pytest.approx([0.9, 1.1, 2.5])
    # canonical slice z of a z-flipped file sits at world z = -2.5 * (2 - z): slice 0 lowest
    assert plain[plain.path == "sub-01/ses-1/anat.nii.gz"].slice_position_mm.tolist() == pytest.approx([-5, -2.5, 0])

    from data.series import Grouping

    bids = Grouping.from_options(pattern=r"sub-(?P<patient>[^/]+)/ses-(?P<study>[^/]+)/")
    grouped = scan(tmp_path / "c", grouping=bids)
    keys = grouped.drop_duplicates("path").set_index("path")
    assert keys.patient_key["sub-01/ses-1/anat.nii.gz"] == keys.patient_key["sub-01/ses-2/anat.nii.gz"]
    assert keys.patient_key["sub-01/ses-1/anat.nii.gz"] != keys.patient_key["sub-02/ses-1/anat.nii.gz"]
    assert keys.study_key["sub-01/ses-1/anat.nii.gz"] != keys.study_key["sub-01/ses-2/anat.nii.gz"]
    assert keys.patient_key["sub-01/ses-1/anat.nii.gz"] == KEY.key("patient", "01")

    mapping = tmp_path / "patients.csv"
    mapping.write_text("path,patient\nsub-01,alpha\nsub-02/ses-1/anat.nii.gz,alpha\n")
    out = tmp_path / "m.parquet"
    argv = [str(tmp_path / "c"), "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*argv, "--patient-map", str(mapping), "--key-file", str(tmp_path / "k.key")]) == 0
    assert read_manifest(out).patient_key.nunique() == 1
    assert "files name no patient" not in capsys.readouterr().err
    assert main([*argv[:2], str(tmp_path / "m2.parquet"), *argv[3:], "--key-file", str(tmp_path / "k.key")]) == 0
    assert (
        "3 files name no patient (no DICOM PatientID, no --patient-map/--patient-pattern match): each is its own"
        in capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="no named group"):
        Grouping.from_options(pattern=r"sub-([^/]+)")


def test_old_manifests_warn_and_a_mix_is_refused(tmp_path, caplog):
    write_dicom(tmp_path / "c/a.dcm", np.zeros((8, 8), np.int16), tags=slice_tags("P", "1.2.3", (0, 0, 0)))
    manifest, failures = scan_corpus(tmp_path / "c", workers=1, progress=False, key=KEY)
    old = write_manifest(manifest.drop(columns=list(SERIES_COLUMNS)), failures, tmp_path / "old.parquet")
    with caplog.at_level(logging.WARNING):
        assert "patient_key" not in read_manifest(old).columns
    assert "before patient/study/series keys" in caplog.text
    manifest.drop(columns=["patient_key"]).to_parquet(tmp_path / "mix.parquet")
    with pytest.raises(ValueError, match="some grouping columns"):
        read_manifest(tmp_path / "mix.parquet")


def test_path_warnings_for_names_record_numbers_and_dates():
    assert looks_like_name("DOE^JOHN") and looks_like_name("Doe, John") and looks_like_name("John_Doe")
    assert not looks_like_name("brain_mri") and not looks_like_name("series_001")
    assert looks_like_record_number("12345678") and looks_like_record_number("mrn_4821390.dcm")
    assert not looks_like_record_number("slice_000001.dcm") and not looks_like_record_number("1.2.840.10008.1.2.3.4")
    assert looks_like_date("2024-01-15") and looks_like_date("scan_20240115") and looks_like_date("2024_01_15")
    assert not looks_like_date("20241315") and not looks_like_date("vol_000")
    warnings = path_warnings(["Doe_John/20240115/a.dcm", "ok/slice_001.dcm", "p/12345678/b.dcm"])
    assert len(warnings) == 3 and all("Doe" not in w and "2024" not in w and "1234" not in w for w in warnings)
    assert path_warnings(["chest_ct/series_000/slice_000.dcm", "brain_mri/vol_000.nii.gz"]) == []


@pytest.fixture(scope="module")
def sample_scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "corpus_root_SECRETPATH"
    write_sample_corpus(root, n=6, seed=3, size=48)
    out = tmp_path_factory.mktemp("out") / "manifest.parquet"
    key_file = tmp_path_factory.mktemp("key") / "corpus.key"
    assert main([str(root), "--out", str(out), "--workers", "1", "--no-progress", "--key-file", str(key_file)]) == 0
    return root, out


def test_sample_corpus_slice_order_comes_from_positions(sample_scan):
    root, out = sample_scan
    manifest = read_manifest(out)
    # n=6: 2 multi-frame items, the other 4 in one series whose file order is not its position order
    series = manifest[manifest.path.str.startswith("chest_ct/series_000/")].sort_values("path")
    ranks = slice_positions(4, 3, 0)
    assert len(series) == 4 and ranks not in ([0, 1, 2, 3], [3, 2, 1, 0])
    assert series.slice_index.tolist() == ranks
    assert series.patient_key.nunique() == 1 and series.series_key.nunique() == 1
    ct = manifest[manifest.modality == "CT"]
    assert ct.patient_key.nunique() == 2  # the series and the multi-frame file: two synthetic patients
    exclusions = pd.read_csv(exclusions_path(out))
    assert sorted(exclusions.path) == [
        "chest_ct/derived_000.dcm",
        "chest_ct/scout_000.dcm",
        "chest_ct/screenshot_000.dcm",
    ]
    assert not manifest.path.isin(exclusions.path).any()


def test_sample_scan_outputs_hold_no_identifier_and_no_absolute_path(sample_scan):
    root, out = sample_scan
    values = {v for p in range(3) for v in sample_patient(3, p)}
    values |= {part for v in list(values) for part in v.split("^") if len(part) > 3}
    values |= {str(root.resolve()), str(root), "SECRETPATH"}
    outputs = [out, failures_path(out), failures_path(out).with_suffix(".csv"), exclusions_path(out), summary_path(out)]
    for path in outputs:
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".parquet":  # compressed pages: compare the decoded cells too
            text += pd.read_parquet(path).astype(str).to_csv()
        found = [v for v in values if v.lower() in text.lower()]
        assert not found, (path.name, found)


def test_pseudonymous_paths_hide_the_real_names_and_still_read(tmp_path, caplog):
    from data.pseudonym import PATH_MAP, read_path_map
    from data.readers import load_image
    from tests._readers_files import write_opencv

    corpus = tmp_path / "corpus"
    write_dicom(
        corpus / "Doe_John/ct/a.dcm",
        np.arange(64, dtype=np.int16).reshape(8, 8),
        tags=slice_tags("P", "1.2", (0, 0, 0)),
    )
    write_opencv(corpus / "Doe_John/chest_xray/b.png", np.full((6, 5), 7, np.uint8))
    (corpus / "Doe_John/notes.txt").write_text("x")
    out, links = tmp_path / "m/manifest.parquet", tmp_path / "links"
    argv = [str(corpus), "--out", str(out), "--workers", "1", "--no-progress", "--key-file", str(tmp_path / "k.key")]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--pseudonymous-paths", str(links)]) == 0
    assert "looks like a person's name" in caplog.text and "Doe" not in caplog.text
    manifest, failures = read_manifest(out), pd.read_parquet(failures_path(out))
    for path in [out, failures_path(out), failures_path(out).with_suffix(".csv"), exclusions_path(out)]:
        assert b"Doe" not in path.read_bytes() and "Doe" not in pd.read_parquet(out).to_csv()
    assert (
        sorted(manifest.modality) == ["CT", "XR"]
        and manifest.path.str.match(r"^(ct|xr)/[0-9a-f]{20}\.(dcm|png)$").all()
    )
    assert failures.path.str.match(r"^other/[0-9a-f]{20}\.txt$").all() and len(failures) == 1
    mapping = read_path_map(links)
    assert stat.S_IMODE((links / PATH_MAP).stat().st_mode) == 0o600
    assert sorted(mapping.values()) == ["Doe_John/chest_xray/b.png", "Doe_John/ct/a.dcm", "Doe_John/notes.txt"]
    xr = manifest[manifest.modality == "XR"].iloc[0]
    assert mapping[xr.path] == "Doe_John/chest_xray/b.png"
    assert load_image(links, xr.path, 0, xr.modality).shape == (6, 5)  # later phases read through the links
    assert main([*argv, "--pseudonymous-paths", str(links)]) == 0  # a rerun replaces its own links
    assert read_manifest(out).path.tolist() == manifest.path.tolist()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/x").write_text("")
    assert main([*argv, "--pseudonymous-paths", str(tmp_path / "busy")]) == 2
