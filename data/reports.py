"""Image-report pairs: a table of `path, frame, report` joined to a manifest by (path, frame).

`path` is the image file relative to the corpus root, as in the manifest; `frame` the 2-D frame/slice index
within it (0 for single-frame files). Every manifest item without a row is unpaired. The table is CSV or
parquet (by suffix). A report is text of a patient's record: error messages here name the file, the row
number and the (path, frame), never the report.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd

REPORT_COLUMNS = ("path", "frame", "report")
_SHOWN_ROWS = 5


def read_report_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a report table -> DataFrame(path str, frame int64, report str), one row per image."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no report table there (a CSV or parquet file with columns path, frame, report)"
        )
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        raise ValueError(f"{path}: unknown report table format {path.suffix!r}; use .csv, .tsv or .parquet")
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
        else:  # strings stay strings: no "NA" -> NaN, no numeric guessing of paths
            table = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; the reason is named, the content is not
        # `from None`: a parser message may quote the offending line, which may be report text
        raise ValueError(f"{path}: not a readable report table ({type(exc).__name__})") from None
    missing = [column for column in REPORT_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: report table lacks columns {missing} (expected {list(REPORT_COLUMNS)})")
    table = table.loc[:, list(REPORT_COLUMNS)].reset_index(drop=True)
    # row numbers in messages count from 1 for the first data row (a CSV's line = row + 1)
    frames = pd.to_numeric(table["frame"], errors="coerce")
    bad_frame = frames.isna() | (frames < 0) | (frames != frames.round())
    if bad_frame.any():
        raise ValueError(f"{path}: column 'frame' must hold integers >= 0; rows {_rows(bad_frame)} do not")
    bad_path = ~table["path"].map(lambda p: isinstance(p, str) and p.strip() != "")
    if bad_path.any():
        raise ValueError(f"{path}: column 'path' is empty in rows {_rows(bad_path)}")
    bad_report = ~table["report"].map(lambda r: isinstance(r, str) and r.strip() != "")
    if bad_report.any():
        raise ValueError(f"{path}: column 'report' is empty or not text in rows {_rows(bad_report)}")
    table = pd.DataFrame(
        {"path": table["path"].map(_normalise_path), "frame": frames.astype("int64"), "report": table["report"]}
    )
    duplicated = table.duplicated(["path", "frame"], keep=False)
    if duplicated.any():
        raise ValueError(f"{path}: several reports for one image (same path and frame) in rows {_rows(duplicated)}")
    return table


def reports_for_manifest(manifest: pd.DataFrame, table: pd.DataFrame, source: str | os.PathLike) -> np.ndarray:
    """Report per manifest row (object array, None = unpaired). Every table row must match a manifest item;
    `source` (the table's file) names the table in the error otherwise."""
    keys = pd.DataFrame({"path": manifest["path"].map(_normalise_path), "frame": manifest["frame"].astype("int64")})
    keys["row"] = np.arange(len(keys))
    joined = table.reset_index(names="table_row").merge(keys, on=["path", "frame"], how="left", validate="one_to_one")
    unmatched = joined["row"].isna()
    if unmatched.any():
        examples = ", ".join(
            f"row {r + 1} ({p!r}, frame {f})"
            for r, p, f in joined.loc[unmatched, ["table_row", "path", "frame"]].head(_SHOWN_ROWS).itertuples(False)
        )
        raise ValueError(
            f"{source}: {int(unmatched.sum())} of {len(table)} report rows match no manifest item by (path, frame), "
            f"e.g. {examples}; paths are relative to the corpus root, as in the manifest"
        )
    reports = np.full(len(keys), None, dtype=object)
    reports[joined["row"].astype("int64").to_numpy()] = joined["report"].to_numpy()
    return reports


def _normalise_path(path: str) -> str:
    return posixpath.normpath(str(path).strip().replace("\\", "/"))


def _rows(flags: pd.Series) -> str:
    rows = (np.flatnonzero(flags.to_numpy()) + 1).tolist()
    shown = ", ".join(map(str, rows[:_SHOWN_ROWS]))
    return shown + (f" (and {len(rows) - _SHOWN_ROWS} more)" if len(rows) > _SHOWN_ROWS else "")
