"""Image-report pairs: a table of reports joined to a manifest, per image or per study.

Image-level: columns `path, frame, report`, joined by (path, frame): `path` is the image file relative to the
corpus root, as in the manifest; `frame` the 2-D frame/slice index within it (0 for single-frame files). An
optional `study_key` column says which study each report belongs to.
Study-level: columns `study_key, report` (no `path`): a report is a study's, and pairs with every manifest item
of that study (the manifest's `study_key`, a keyed hash as `data scan` writes it).
Every manifest item without a report is unpaired. The table is CSV or parquet (by suffix). A report is text of a
patient's record: error messages here name the file, the row number and the (path, frame) or study, never the
report.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

import numpy as np
import pandas as pd

REPORT_COLUMNS = ("path", "frame", "report")
STUDY_REPORT_COLUMNS = ("study_key", "report")
_SHOWN_ROWS = 5
# a section heading: upper-case words and a colon at the start of a line (MIMIC-CXR's "FINDINGS:", "IMPRESSION:")
_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z &/]*[A-Z])[ \t]*:", re.MULTILINE)


def read_report_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a report table -> DataFrame(path str, frame int64, report str[, study_key str]), one row
    per image, or for a study-level table DataFrame(study_key str, report str), one row per study."""
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
    if "path" not in table.columns and "study_key" in table.columns:
        return _study_table(table, path)
    missing = [column for column in REPORT_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: report table lacks columns {missing} (expected {list(REPORT_COLUMNS)}, or "
            f"{list(STUDY_REPORT_COLUMNS)} for one report per study)"
        )
    columns = [*REPORT_COLUMNS, *(["study_key"] if "study_key" in table.columns else [])]
    table = table.loc[:, columns].reset_index(drop=True)
    # row numbers in messages count from 1 for the first data row (a CSV's line = row + 1)
    frames = pd.to_numeric(table["frame"], errors="coerce")
    bad_frame = frames.isna() | (frames < 0) | (frames != frames.round())
    if bad_frame.any():
        raise ValueError(f"{path}: column 'frame' must hold integers >= 0; rows {_rows(bad_frame)} do not")
    bad_path = ~table["path"].map(_is_text)
    if bad_path.any():
        raise ValueError(f"{path}: column 'path' is empty in rows {_rows(bad_path)}")
    _check_reports(table, path)
    out = pd.DataFrame(
        {"path": table["path"].map(_normalise_path), "frame": frames.astype("int64"), "report": table["report"]}
    )
    if "study_key" in table.columns:
        bad_study = ~table["study_key"].map(_is_text)
        if bad_study.any():
            raise ValueError(f"{path}: column 'study_key' is empty in rows {_rows(bad_study)}")
        out["study_key"] = table["study_key"].astype(str).str.strip()
    duplicated = out.duplicated(["path", "frame"], keep=False)
    if duplicated.any():
        raise ValueError(f"{path}: several reports for one image (same path and frame) in rows {_rows(duplicated)}")
    return out


def _study_table(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A study-level table -> DataFrame(study_key str, report str), one row per study."""
    table = table.loc[:, list(STUDY_REPORT_COLUMNS)].reset_index(drop=True)
    bad_study = ~table["study_key"].map(_is_text)
    if bad_study.any():
        raise ValueError(f"{path}: column 'study_key' is empty in rows {_rows(bad_study)}")
    _check_reports(table, path)
    out = pd.DataFrame({"study_key": table["study_key"].astype(str).str.strip(), "report": table["report"]})
    duplicated = out.duplicated(["study_key"], keep=False)
    if duplicated.any():
        raise ValueError(f"{path}: several reports for one study (same study_key) in rows {_rows(duplicated)}")
    return out


def _check_reports(table: pd.DataFrame, path: Path) -> None:
    bad_report = ~table["report"].map(_is_text)
    if bad_report.any():
        raise ValueError(f"{path}: column 'report' is empty or not text in rows {_rows(bad_report)}")


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def study_level(table: pd.DataFrame) -> bool:
    """Whether a table of `read_report_table` holds one report per study (else one per image)."""
    return "path" not in table.columns


def studies_for_manifest(manifest: pd.DataFrame, table: pd.DataFrame | None) -> np.ndarray:
    """The study each manifest row belongs to (str array): the report table's `study_key` for an image-level row
    that gives one, else the manifest's `study_key` where present and not empty, else the image's path (each
    file its own study: a volume's slices are one study, files of one study stay apart)."""
    paths = manifest["path"].map(_normalise_path).to_numpy(dtype=object)
    studies = paths.copy()
    if "study_key" in manifest.columns:
        keys = manifest["study_key"].map(lambda k: str(k).strip() if _is_text(k) else "").to_numpy(dtype=object)
        studies = np.where(keys != "", keys, studies)
    if table is not None and not study_level(table) and "study_key" in table.columns:
        keys = pd.DataFrame({"path": paths, "frame": manifest["frame"].astype("int64").to_numpy()})
        joined = keys.merge(table[["path", "frame", "study_key"]], on=["path", "frame"], how="left")
        given = joined["study_key"].notna().to_numpy()
        studies = np.where(given, joined["study_key"].to_numpy(dtype=object), studies)
    return studies.astype(str)


def reports_for_manifest(manifest: pd.DataFrame, table: pd.DataFrame, source: str | os.PathLike) -> np.ndarray:
    """Report per manifest row (object array, None = unpaired). Every table row must match a manifest item (by
    (path, frame), or for a study-level table by the manifest's `study_key`); `source` (the table's file) names
    the table in the error otherwise."""
    if study_level(table):
        return _study_reports(manifest, table, source)
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


def _study_reports(manifest: pd.DataFrame, table: pd.DataFrame, source: str | os.PathLike) -> np.ndarray:
    if "study_key" not in manifest.columns:
        raise ValueError(
            f"{source}: a report table per study (study_key, report) needs the manifest's study_key column; "
            "rescan the corpus with `python -m data scan` or give path, frame, report rows"
        )
    keys = manifest["study_key"].map(lambda k: str(k).strip() if _is_text(k) else None)
    by_study = dict(zip(table["study_key"], table["report"], strict=True))
    unmatched = ~table["study_key"].isin(set(keys.dropna()))
    if unmatched.any():
        raise ValueError(
            f"{source}: {int(unmatched.sum())} of {len(table)} report rows match no manifest study by study_key, "
            f"e.g. rows {_rows(unmatched)}"
        )
    return np.array([by_study.get(k) if k is not None else None for k in keys], dtype=object)


def report_sections(text: str, order: tuple[str, ...] = ("impression", "findings")) -> str:
    """The text of the named sections of a report, in `order` (IMPRESSION first: the part a context length keeps
    when it truncates), joined by a space; a section runs from its heading ("IMPRESSION:", upper case, at a line
    start) to the next heading. A report with none of them is returned whole."""
    headings = list(_HEADING.finditer(text))
    bodies: dict[str, str] = {}
    for i, match in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        name = match.group(1).lower()
        body = " ".join(text[match.end() : end].split())
        if body:
            bodies[name] = f"{bodies[name]} {body}" if name in bodies else body
    chosen = [bodies[name.lower()] for name in order if name.lower() in bodies]
    return " ".join(chosen) if chosen else text


def _normalise_path(path: str) -> str:
    return posixpath.normpath(str(path).strip().replace("\\", "/"))


def _rows(flags: pd.Series) -> str:
    rows = (np.flatnonzero(flags.to_numpy()) + 1).tolist()
    shown = ", ".join(map(str, rows[:_SHOWN_ROWS]))
    return shown + (f" (and {len(rows) - _SHOWN_ROWS} more)" if len(rows) > _SHOWN_ROWS else "")
