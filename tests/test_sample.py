"""The synthetic sample corpus: determinism, layout, real file formats, truth/labels/COCO consistency, hardness."""

from __future__ import annotations

import csv
import hashlib
import time
from collections import Counter
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pycocotools.coco import COCO
from pydicom.pixels import apply_rescale

from data.ids import make_item_id
from data.manifest import list_corpus_files
from data.sample import ANNOTATIONS, MODALITIES, main, write_sample_corpus, xray_shape

POSITIVE = {m.code: m.positive for m in MODALITIES}
NEGATIVE = {m.code: m.negative for m in MODALITIES}
MODALITY_TOKEN = {"mri": "MR", "ct": "CT", "xray": "XR"}


def read_labels(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def hu_of(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """HU of single-frame CT (top-level rescale) or Enhanced CT (shared functional groups)."""
    if "SharedFunctionalGroupsSequence" in ds:
        t = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        return stored * float(t.RescaleSlope) + float(t.RescaleIntercept)
    return apply_rescale(stored, ds)


def load_item(root: Path, relpath: str, frame: int) -> np.ndarray:
    """The item's 2-D image in modality units (MR stored values, CT HU, X-ray stored values)."""
    path = root / relpath
    if relpath.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj)[:, :, frame].astype(np.float64)
    if relpath.endswith(".dcm"):
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        stored = stored[frame] if int(ds.get("NumberOfFrames", 1)) > 1 else stored
        return hu_of(ds, stored.astype(np.float64))
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64)


def read_truth(root: Path, item_id: str) -> np.ndarray:
    return cv2.imread(str(root / "truth" / f"{item_id}.png"), cv2.IMREAD_UNCHANGED)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default corpus (n=12, size=128), as `make sample` writes it."""
    root = tmp_path_factory.mktemp("sample") / "corpus"
    start = time.perf_counter()
    summary = write_sample_corpus(root)
    assert time.perf_counter() - start < 30, "the default corpus must stay quick to generate"
    assert summary.items == {"MR": 12, "CT": 12, "XR": 12}
    assert summary.positives == {"MR": 6, "CT": 6, "XR": 6}
    return root


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough items per class for the hardness statistics to mean something."""
    root = tmp_path_factory.mktemp("sample") / "large"
    write_sample_corpus(root, n=96, seed=1, size=64)
    return root


def test_two_runs_are_byte_identical_and_seed_matters(tmp_path: Path) -> None:
    write_sample_corpus(tmp_path / "a", n=6, seed=5, size=64)
    write_sample_corpus(tmp_path / "b", n=6, seed=5, size=64)
    write_sample_corpus(tmp_path / "c", n=6, seed=6, size=64)
    a, b, c = (tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert len(a) > 6 * 3  # images + truth + labels + coco + readme
    assert a["labels.csv"] != c["labels.csv"] or a["chest_xray/cxr_000.png"] != c["chest_xray/cxr_000.png"]
    assert not np.array_equal(
        load_item(tmp_path / "a", "chest_xray/cxr_000.png", 0), load_item(tmp_path / "c", "chest_xray/cxr_000.png", 0)
    )


def test_layout_counts_and_ids(corpus: Path) -> None:
    rows = read_labels(corpus)
    assert list(rows[0]) == ["item_id", "path", "frame", "modality", "label", "split"]
    assert Counter(r["modality"] for r in rows) == {"MR": 12, "CT": 12, "XR": 12}
    assert sorted(p.name for p in (corpus / "brain_mri").iterdir()) == [f"vol_{v:03d}.nii.gz" for v in range(3)]
    assert sorted(p.name for p in (corpus / "chest_ct").glob("series_*")) == [f"series_{s:03d}" for s in range(3)]
    assert len(list((corpus / "chest_ct").glob("series_*/slice_*.dcm"))) == 9
    assert (corpus / "chest_ct" / "multiframe_000.dcm").is_file()
    assert len(list((corpus / "chest_xray").glob("cxr_*.png"))) == 12
    assert "synthetic" in (corpus / "README.txt").read_text().lower()
    for r in rows:
        assert (corpus / r["path"]).is_file()
        assert r["item_id"] == make_item_id(r["path"], int(r["frame"]))
        tokens = set(r["path"].replace("/", "_").replace(".", "_").split("_"))
        assert [MODALITY_TOKEN[t] for t in tokens & MODALITY_TOKEN.keys()] == [r["modality"]]
        assert r["label"] in (POSITIVE[r["modality"]], NEGATIVE[r["modality"]])
    assert len({r["item_id"] for r in rows}) == len(rows)
    assert {p.stem for p in (corpus / "truth").glob("*.png")} == {r["item_id"] for r in rows}


def test_every_annotation_is_written_and_kept_out_of_the_scan(corpus: Path) -> None:
    # the hook a new annotation (e.g. a report per image) plugs into: written, and skipped by `data scan`
    assert [a.name for a in ANNOTATIONS] == ["coco/", "labels.csv", "README.txt", "reports.csv"]
    for annotation in ANNOTATIONS:
        assert (corpus / annotation.name).exists()
    scanned = list_corpus_files(corpus)
    assert scanned and all(p.split("/")[0] in {m.folder for m in MODALITIES} for p in scanned)


def test_splits_are_stratified_and_keep_files_whole(corpus: Path) -> None:
    rows = read_labels(corpus)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for path in {r["path"] for r in rows}:  # a volume's / multi-frame file's slices never straddle a split
        assert len({r["split"] for r in rows if r["path"] == path}) == 1, path
    ct_series = {r["path"].rsplit("/", 1)[0] for r in rows if "/series_" in r["path"]}
    assert ct_series  # each one-file-per-slice CT series is one patient: all its files on one side
    for series in ct_series:
        assert len({r["split"] for r in rows if r["path"].startswith(series + "/")}) == 1, series
    for label in (POSITIVE["XR"], NEGATIVE["XR"]):
        # 6 one-image files per class: rank quantiles 1/12 -> test, 3/12 -> val, the other four train
        stratum = Counter(r["split"] for r in rows if r["modality"] == "XR" and r["label"] == label)
        assert stratum == {"train": 4, "val": 1, "test": 1}, (label, stratum)


def test_ct_dicom_files_are_real_and_rescale_to_hounsfield(corpus: Path) -> None:
    rows = [r for r in read_labels(corpus) if r["modality"] == "CT"]
    slopes, sop_uids, patients = set(), set(), {}
    for relpath in sorted({r["path"] for r in rows}):
        ds = pydicom.dcmread(corpus / relpath)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert str(ds.PatientName).endswith("^SYNTHETIC") and ds.PatientID.startswith("MRN")
        patients.setdefault(relpath.split("/")[1], set()).add((str(ds.PatientName), ds.PatientID))
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        sop_uids.add(ds.SOPInstanceUID)
        frames = [int(r["frame"]) for r in rows if r["path"] == relpath]
        if relpath.endswith("multiframe_000.dcm"):
            assert ds.SOPClassUID == pydicom.uid.EnhancedCTImageStorage
            assert int(ds.NumberOfFrames) == len(frames) == 3 and ds.pixel_array.dtype == np.int16
            assert "RescaleIntercept" not in ds  # the standard puts it in the functional groups
            assert len(ds.PerFrameFunctionalGroupsSequence) == 3
        else:
            assert frames == [0] and "NumberOfFrames" not in ds and ds.pixel_array.dtype == np.uint16
            assert float(ds.RescaleIntercept) == -1024.0
            slopes.add(float(ds.RescaleSlope))
        for frame in frames:
            hu = load_item(corpus, relpath, frame)
            r = next(r for r in rows if r["path"] == relpath and int(r["frame"]) == frame)
            lungs = read_truth(corpus, r["item_id"]) > 0
            assert -1060 < np.median(hu[:4, :4]) < -940, "air in the corner"
            assert -930 < np.median(hu[lungs]) < -720, "lung parenchyma"
            assert hu.max() > 300, "bone"
    assert slopes == {1.0, 0.5}  # a non-unit slope catches readers that ignore it
    assert len(sop_uids) == 10
    # one synthetic patient per series (the multi-frame file is a series): four patients, none shared
    assert all(len(ids) == 1 for ids in patients.values()) and len(set.union(*patients.values())) == 4


def test_nifti_volumes_are_ras_1mm(corpus: Path) -> None:
    rows = [r for r in read_labels(corpus) if r["modality"] == "MR"]
    for relpath in sorted({r["path"] for r in rows}):
        img = nib.load(corpus / relpath)
        assert img.shape == (128, 128, 4) and img.get_data_dtype() == np.int16
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0))
        assert sorted(int(r["frame"]) for r in rows if r["path"] == relpath) == [0, 1, 2, 3]
        data = np.asarray(img.dataobj)
        assert data.min() >= 0 and data.max() > 200


def test_xray_pngs_are_16_bit(corpus: Path) -> None:
    for path in sorted((corpus / "chest_xray").glob("*.png")):
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == xray_shape(128) == (128, 112)
        assert img.max() > 255  # really uses more than 8 bits


def test_truth_masks_match_items(corpus: Path) -> None:
    for r in read_labels(corpus):
        image = load_item(corpus, r["path"], int(r["frame"]))
        truth = read_truth(corpus, r["item_id"])
        assert truth.dtype == np.uint8 and truth.shape == image.shape
        assert set(np.unique(truth)) <= {0, 255}
        fraction = (truth > 0).mean()
        if r["modality"] == "MR":  # truth = the tumour
            assert (fraction > 0) == (r["label"] == "tumor")
        else:  # truth = the lungs, present with or without lesions
            assert 0.05 < fraction < 0.6
            # Lungs are darker than the soft tissue around them (CT: than the non-air body; X-ray: than the
            # upper quartile outside them, which is mediastinum, heart and chest wall).
            outside = image[truth == 0]
            tissue = outside[outside > -500] if r["modality"] == "CT" else outside[outside > np.percentile(outside, 75)]
            assert np.median(image[truth > 0]) < np.median(tissue)


def test_coco_loads_and_agrees_with_labels_and_truth(corpus: Path) -> None:
    coco = COCO(str(corpus / "coco" / "instances.json"))
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"tumor", "nodule", "opacity"}
    cat_of = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    rows = read_labels(corpus)
    by_id = {img["item_id"]: img for img in coco.loadImgs(coco.getImgIds())}
    assert set(by_id) == {r["item_id"] for r in rows}
    n_two = 0
    for r in rows:
        img = by_id[r["item_id"]]
        assert (img["file_name"], img["frame"]) == (r["path"], int(r["frame"]))
        truth = read_truth(corpus, r["item_id"]) > 0
        assert (img["height"], img["width"]) == truth.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert (len(anns) > 0) == (r["label"] == POSITIVE[r["modality"]])
        assert len(anns) <= 2
        n_two += len(anns) == 2
        union = np.zeros_like(truth)
        for a in anns:
            assert a["category_id"] == cat_of[POSITIVE[r["modality"]]] and a["iscrowd"] == 0
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and 0 < a["area"] <= w * h
            assert 0 <= x and x + w <= img["width"] and 0 <= y and y + h <= img["height"]
            assert a["segmentation"] and all(len(poly) >= 6 for poly in a["segmentation"])
            for poly in a["segmentation"]:
                xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
                assert xs.min() >= x and xs.max() <= x + w and ys.min() >= y and ys.max() <= y + h
            mask = coco.annToMask(a).astype(bool)
            assert not (mask & union).any(), "instances are disjoint"
            union |= mask
            assert (mask & truth).sum() >= 0.9 * mask.sum(), "lesion lies in the ROI (CT/XR) / is the truth (MR)"
        if r["modality"] == "MR" and anns:
            assert (union & truth).sum() / (union | truth).sum() > 0.8
    assert n_two > 0  # some items have two lesions


def test_trivial_intensity_features_do_not_separate_classes(large: Path) -> None:
    """Image mean/std/max (raw or percentile-normalised) with the best threshold on the data stay well below 0.8."""
    rows = read_labels(large)

    def best_threshold_accuracy(feature: np.ndarray, positive: np.ndarray) -> float:
        return max(
            max(((feature >= t) == positive).mean(), ((feature >= t) != positive).mean()) for t in np.unique(feature)
        )

    for code in ("MR", "CT", "XR"):
        items = [r for r in rows if r["modality"] == code]
        positive = np.array([r["label"] == POSITIVE[code] for r in items])
        assert 0.4 < positive.mean() < 0.6  # about half the images carry no lesion
        features: dict[str, list[float]] = {}
        for r in items:
            image = load_item(large, r["path"], int(r["frame"]))
            lo, hi = np.percentile(image, [1, 99])
            norm = (image - lo) / (hi - lo)
            for name, value in (
                ("mean", image.mean()),
                ("std", image.std()),
                ("max", image.max()),
                ("norm_mean", norm.mean()),
                ("norm_std", norm.std()),
                ("norm_max", norm.max()),
            ):
                features.setdefault(name, []).append(float(value))
        for name, values in features.items():
            accuracy = best_threshold_accuracy(np.array(values), positive)
            assert accuracy < 0.8, f"{code}: a threshold on image {name} reaches {accuracy:.2f}"


def test_lesions_are_visible_and_masks_differ_between_classes(large: Path) -> None:
    """Hard for trivial features, yet solvable: lesions stand out locally (median contrast-to-noise > 1)."""
    coco = COCO(str(large / "coco" / "instances.json"))
    by_id = {img["item_id"]: img for img in coco.loadImgs(coco.getImgIds())}
    ring_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    gap_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    cnr: dict[str, list[float]] = {}
    for r in read_labels(large):
        truth = read_truth(large, r["item_id"]) > 0
        anns = coco.loadAnns(coco.getAnnIds(imgIds=by_id[r["item_id"]]["id"]))
        if r["modality"] == "MR":
            assert truth.any() == (r["label"] == "tumor")
        else:
            assert truth.any()
        image = load_item(large, r["path"], int(r["frame"]))
        for a in anns:
            lesion = coco.annToMask(a)
            ring = cv2.dilate(lesion, ring_kernel).astype(bool) & ~cv2.dilate(lesion, gap_kernel).astype(bool)
            around = image[ring]
            noise = 1.4826 * np.median(np.abs(around - np.median(around)))  # robust std: vessels, ribs, edges
            contrast = abs(np.median(image[lesion > 0]) - np.median(around)) / noise
            cnr.setdefault(r["modality"], []).append(contrast)
    for code, values in cnr.items():
        assert len(values) >= 25
        assert np.median(values) > 1.0, f"{code} lesions are too faint to learn from"
        assert np.min(values) < 1.0, f"{code} has no faint lesions"


def test_cli_writes_rewrites_and_refuses_foreign_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--n", "4", "--seed", "2", "--size", "48"]) == 0
    assert str(out) in capsys.readouterr().out
    assert len(read_labels(out)) == 12
    # Rewriting a sample corpus with a smaller n leaves no stale files behind.
    assert main(["--out", str(out), "--n", "3", "--size", "48"]) == 0
    assert len(read_labels(out)) == 9
    assert len(list((out / "truth").glob("*.png"))) == 9
    assert len(list((out / "chest_xray").glob("*.png"))) == 3

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(foreign)])
    assert exit_info.value.code == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "small"), "--n", "2"])
    with pytest.raises(ValueError, match="size"):
        write_sample_corpus(tmp_path / "tiny", size=16)
