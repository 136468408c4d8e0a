"""The image-report table: reading, joining to the manifest by (path, frame), and errors that never quote a report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.reports import read_report_table, reports_for_manifest

SECRET = "confidential-phrase-qwerty"


def manifest() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "path": ["ct/series1.dcm", "ct/series1.dcm", "xr/img.png", "mr/vol.nii.gz"],
            "frame": [0, 1, 0, 7],
        }
    )


def write_csv(path, rows) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)


def test_rows_join_by_path_and_frame_and_every_other_item_is_unpaired(tmp_path):
    table_path = tmp_path / "pairs.csv"
    # frame 1 of the multi-frame file only; "./" and a backslash path still name the manifest's files
    write_csv(
        table_path,
        [
            {"path": "./ct/series1.dcm", "frame": 1, "report": "second slice"},
            {"path": "mr\\vol.nii.gz", "frame": 7, "report": "NA"},  # "NA" is text, not a missing value
        ],
    )
    table = read_report_table(table_path)
    assert table["frame"].dtype == np.int64 and list(table["report"]) == ["second slice", "NA"]
    reports = reports_for_manifest(manifest(), table, table_path)
    assert list(reports) == [None, "second slice", None, "NA"]


def test_parquet_tables_read_alike(tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame({"path": ["xr/img.png"], "frame": [0], "report": ["clear"], "extra": [1]}).to_parquet(path)
    assert list(reports_for_manifest(manifest(), read_report_table(path), path)) == [None, None, "clear", None]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"path": "xr/img.png", "report": SECRET}], r"lacks columns \['frame'\]"),
        ([{"path": "xr/img.png", "frame": "x", "report": SECRET}], "'frame' must hold integers >= 0; rows 1 "),
        ([{"path": "xr/img.png", "frame": 0, "report": SECRET}, {"path": "", "frame": 0, "report": SECRET}], "'path'"),
        ([{"path": "xr/img.png", "frame": 0, "report": " "}], "'report' is empty or not text in rows 1"),
        (
            [{"path": "xr/img.png", "frame": 0, "report": SECRET}, {"path": "xr/img.png", "frame": 0, "report": "b"}],
            r"several reports for one image .* rows 1, 2",
        ),
    ],
)
def test_malformed_tables_fail_naming_the_file_and_rows_never_the_report(tmp_path, rows, message):
    path = tmp_path / "pairs.csv"
    write_csv(path, rows)
    with pytest.raises(ValueError, match=message) as caught:
        read_report_table(path)
    assert str(path) in str(caught.value) and SECRET not in str(caught.value)


def test_a_row_matching_no_manifest_item_fails_naming_the_file_row_and_image(tmp_path):
    path = tmp_path / "pairs.csv"
    write_csv(
        path,
        [
            {"path": "xr/img.png", "frame": 0, "report": "fine"},
            {"path": "ct/series1.dcm", "frame": 2, "report": SECRET},  # no frame 2 in the manifest
        ],
    )
    with pytest.raises(ValueError) as caught:
        reports_for_manifest(manifest(), read_report_table(path), path)
    message = str(caught.value)
    assert str(path) in message and "1 of 2 report rows" in message and "row 2 ('ct/series1.dcm', frame 2)" in message
    assert SECRET not in message


def test_unreadable_or_unknown_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report table"):
        read_report_table(tmp_path / "absent.csv")
    odd = tmp_path / "pairs.json"
    odd.write_text("{}")
    with pytest.raises(ValueError, match="unknown report table format '.json'"):
        read_report_table(odd)
    broken = tmp_path / "pairs.parquet"
    broken.write_text(f"path,frame,report\nx,0,{SECRET}\n")
    with pytest.raises(ValueError, match="not a readable report table") as caught:
        read_report_table(broken)
    assert SECRET not in str(caught.value) and caught.value.__cause__ is None
