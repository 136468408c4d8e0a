"""The sample corpus's synthetic reports (data/sample/reports.py): location words from where lesions were drawn,
the share of images with a report, none for test images, determinism, a table that data/reports.py joins to the
scanned manifest, and the other files untouched by the report share."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.manifest import SCANIGNORE, scan_corpus
from data.reports import read_report_table, reports_for_manifest
from data.sample import write_sample_corpus
from data.sample.ct import SPEC as CT
from data.sample.mr import SPEC as MR
from data.sample.reports import REPORTS_CSV, Location, lesion_locations, write_report
from data.sample.spec import Anatomy, Item, Slice
from data.sample.xr import SPEC as XR


def disk(shape_hw: tuple[int, int], r: int, c: int, radius: int = 2) -> np.ndarray:
    rr, cc = np.mgrid[: shape_hw[0], : shape_hw[1]]
    return (rr - r) ** 2 + (cc - c) ** 2 <= radius**2


def item(spec, lesions_rc, truth_hw=None, anatomy=None, shape=(64, 64)) -> Item:
    lesions = tuple(disk(shape, r, c) for r, c in lesions_rc)
    truth = truth_hw if truth_hw is not None else np.any(lesions, axis=0) if lesions else np.zeros(shape, bool)
    return Item("x.png", 0, spec, Slice(np.zeros(shape, np.float32), truth, lesions, anatomy))


def two_lungs(shape=(64, 64)) -> np.ndarray:
    """Lungs in rows 10-50, columns 5-25 (image left = patient right) and 35-55."""
    lungs = np.zeros(shape, bool)
    lungs[10:51, 5:26] = lungs[10:51, 35:56] = True
    return lungs


# ---------------------------------------------------------------------------------------------- location words
def test_mr_side_and_lobe_in_the_heads_own_axes():
    head = Anatomy(center_rc=(32.0, 32.0), half_rc=(20.0, 24.0), angle_deg=0.0)
    # RAS+ slice: larger row = patient's right, larger column = anterior. (45, 50): 13/20 right, 18/24 = 0.75 front
    assert lesion_locations(item(MR, [(45, 50)], anatomy=head)) == [Location("right", "frontal")]
    # (20, 20): 12/20 left, 12/24 = 0.5 to the back -> occipital; (40, 34): right, 2/24 -> parietal
    assert lesion_locations(item(MR, [(20, 20), (40, 34)], anatomy=head)) == [
        Location("left", "occipital"),
        Location("right", "parietal"),
    ]
    # the head turned by 90 degrees: its left-right axis now runs along -columns (u = -dc), its front along rows
    turned = Anatomy(center_rc=(32.0, 32.0), half_rc=(20.0, 20.0), angle_deg=90.0)
    assert lesion_locations(item(MR, [(32, 50)], anatomy=turned)) == [Location("left", "parietal")]
    assert lesion_locations(item(MR, [(50, 20)], anatomy=turned)) == [Location("right", "frontal")]


def test_chest_sides_as_radiologists_read_them():
    lungs = two_lungs()
    # image left = patient right; CT rows run anterior -> posterior (middle of rows 10-50 is 30)
    assert lesion_locations(item(CT, [(15, 10)], lungs)) == [Location("right", "anterior")]
    assert lesion_locations(item(CT, [(45, 50)], lungs)) == [Location("left", "posterior")]
    # X-ray zones: thirds of rows 10-50 -> upper below 23.3, lower above 36.7
    assert lesion_locations(item(XR, [(15, 50), (30, 10), (45, 45)], lungs)) == [
        Location("left", "upper"),
        Location("right", "middle"),
        Location("left", "lower"),
    ]


def test_report_text_names_the_modality_finding_and_places():
    head = Anatomy(center_rc=(32.0, 32.0), half_rc=(20.0, 24.0), angle_deg=0.0)
    rng = np.random.default_rng(0)
    one = write_report(item(MR, [(45, 50)], anatomy=head), rng)
    assert "the right frontal lobe" in one and ("MR" in one or "MRI" in one)
    two = write_report(item(XR, [(15, 50), (45, 10)], two_lungs()), rng)
    assert "two " in two and "the left upper zone" in two and "the right lower zone" in two
    same_place = write_report(item(CT, [(45, 40), (45, 50)], two_lungs()), rng)
    assert same_place.count("the posterior left lung") == 1 and "two " in same_place
    assert "no" in write_report(item(MR, [], anatomy=head), rng).lower()


# ---------------------------------------------------------------------------------------------- the written table
@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    out = {}
    for name, share, seed in (("half", 0.5, 0), ("again", 0.5, 0), ("all", 1.0, 0), ("none", 0.0, 0), ("s1", 0.5, 1)):
        write_sample_corpus(root / name, n=6, seed=seed, size=64, report_share=share)
        out[name] = root / name
    return out


def test_a_hand_checked_lesion_of_the_generated_corpus(corpora):
    """cxr_002 (n 6, seed 0, 64 px; a training image since the splits are by patient) has one opacity; its COCO box
    and the lungs in its truth mask place it."""
    root = corpora["all"]
    coco = json.loads((root / "coco/instances.json").read_text())
    image = next(i for i in coco["images"] if i["file_name"] == "chest_xray/cxr_002.png")
    (box,) = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
    lungs_rows, lungs_cols = np.nonzero(cv2.imread(str(root / "truth" / f"{image['item_id']}.png"), 0))
    x_mid, y_mid = box[0] + box[2] / 2, box[1] + box[3] / 2
    assert box == [10, 28, 8, 11] and x_mid < (lungs_cols.min() + lungs_cols.max()) / 2  # the image's left side
    third = (lungs_rows.max() - lungs_rows.min()) / 3
    assert lungs_rows.min() + third < y_mid < lungs_rows.min() + 2 * third  # the lungs' middle third
    reports = pd.read_csv(root / REPORTS_CSV).set_index("path")
    assert "an opacity in the right middle zone" in reports.loc["chest_xray/cxr_002.png", "report"]


def test_share_of_images_with_reports_and_none_for_test_images(corpora):
    for name, share in (("half", 0.5), ("all", 1.0), ("none", 0.0)):
        root = corpora[name]
        labels = pd.read_csv(root / "labels.csv")
        reports = pd.read_csv(root / REPORTS_CSV)
        assert list(reports.columns) == ["path", "frame", "report"]
        joined = reports.merge(labels, on=["path", "frame"], how="left", validate="one_to_one")
        assert joined["split"].notna().all() and not (joined["split"] == "test").any()
        for modality, rows in labels.groupby("modality"):
            eligible = int((rows["split"] != "test").sum())
            assert (joined["modality"] == modality).sum() == round(share * eligible), (name, modality)
    # n 6 per modality, split by patient: MR (2 volumes) and CT (a 4-slice series, a 2-frame file) have at most 2
    # patients per stratum, none drawn for test (quantile 1/4 >= 0.2); X-ray has 3 one-image patients per class, the
    # first (quantile 1/6) test. Eligible 6 + 6 + 4, reported at share 0.5: 3 + 3 + 2
    assert len(pd.read_csv(corpora["half"] / REPORTS_CSV)) == 3 + 3 + 2


def test_reports_are_deterministic_for_the_seed(corpora):
    text = {name: (corpora[name] / REPORTS_CSV).read_text() for name in ("half", "again", "s1")}
    assert text["half"] == text["again"] and text["half"] != text["s1"]


def test_the_other_files_do_not_depend_on_the_reports(corpora):
    def digests(root: Path) -> dict[str, str]:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != REPORTS_CSV)
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digests(corpora["none"]) == digests(corpora["all"])


def test_the_table_joins_the_scanned_manifest_and_stays_out_of_scans(corpora):
    root = corpora["half"]
    assert REPORTS_CSV in (root / SCANIGNORE).read_text().split()
    manifest, failures = scan_corpus(root, workers=1, progress=False)
    assert len(failures) == 0 and len(manifest) == 18  # the images only: no table, mask or annotation
    table = read_report_table(root / REPORTS_CSV)
    paired = reports_for_manifest(manifest, table, root / REPORTS_CSV)
    assert sum(r is not None for r in paired) == len(table) == 8  # 3 + 3 + 2, as counted above
