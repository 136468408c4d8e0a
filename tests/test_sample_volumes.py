"""`python -m data sample --mode volumes`: CT and MR series whose target lies on the middle slices only, in the
order the scan gives them (CT: by ImagePositionPatient, shuffled against the file names)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom

from data.manifest import scan_corpus
from data.sample import main, write_sample_corpus
from data.sample.volumes import VOLUME_DEPTH, target_positions


def test_target_positions_leave_organ_free_ends():
    assert list(target_positions(12)) == [3, 4, 5, 6, 7, 8]  # the middle half
    assert list(target_positions(7)) == [2, 3, 4]  # round(7 * 0.25) = 2 free at each end
    assert list(target_positions(3)) == [1]  # at least one free slice each end


def test_target_on_the_middle_slices_in_scan_order(tmp_path: Path):
    out = tmp_path / "volumes"
    summary = write_sample_corpus(out, n=VOLUME_DEPTH + 7, seed=3, size=48, mode="volumes")
    assert summary.items == {"MR": 19, "CT": 19}
    manifest, _ = scan_corpus(out, progress=False, workers=1)
    manifest = manifest[~manifest["path"].str.startswith("truth/")]
    assert len(manifest) == 38 and manifest["series_key"].nunique() == 4  # 19 = series of 10 and 9, per modality
    for _key, rows in manifest.groupby("series_key"):
        rows = rows.sort_values("slice_index")
        depth = len(rows)
        assert rows["slice_index"].tolist() == list(range(depth))
        has = [cv2.imread(str(out / "truth" / f"{i}.png"), cv2.IMREAD_GRAYSCALE).any() for i in rows["item_id"]]
        assert has == [z in target_positions(depth) for z in range(depth)], rows["path"].iloc[0]
        if rows["modality"].iloc[0] == "CT":  # positions are not the file order: the truth follows the positions
            assert rows["path"].tolist() != sorted(rows["path"])
            for path, lungs in zip(rows["path"], has, strict=True):  # the images agree: dark lungs or none
                ds = pydicom.dcmread(out / path)
                hu_hw = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                centre_hw = hu_hw[12:36, 8:40]  # inside the body on every 48 px slice
                assert ((centre_hw < -500).mean() > 0.1) == lungs, path
        else:  # the tumour's section is largest at the centre of its extent
            areas = [
                int((cv2.imread(str(out / "truth" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) > 0).sum())
                for i in rows["item_id"]
            ]
            middle = [areas[z] for z in target_positions(depth)]
            assert max(middle) == middle[len(middle) // 2] or max(middle) == middle[(len(middle) - 1) // 2]
    labels = np.genfromtxt(out / "labels.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert set(labels["modality"]) == {"MR", "CT"}


def test_cli_mode_volumes(tmp_path: Path, capsys):
    assert main(["--out", str(tmp_path / "v"), "--mode", "volumes", "--n", "12", "--size", "48"]) == 0
    assert "volumes corpus" in capsys.readouterr().out
    assert (tmp_path / "v" / "README.txt").read_text().startswith("MWM synthetic sample corpus")
    # too few slices for one series with free ends
    try:
        main(["--out", str(tmp_path / "w"), "--mode", "volumes", "--n", "5"])
    except SystemExit as err:
        assert err.code == 2
    assert "n must be >= 12" in capsys.readouterr().err
