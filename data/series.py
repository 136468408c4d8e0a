"""Patients, studies and series of a scanned corpus: the manifest's grouping columns and the series checks.

Grouping (per file): a DICOM file's PatientID, StudyInstanceUID and SeriesInstanceUID (keyed hashes, see
`data.keys`); otherwise, or for a DICOM file without them, the user's `Grouping` (a CSV path -> patient[, study]
or a path pattern with named groups); otherwise the file is its own patient, study and series. NIfTI and raster
files are one series each (a raster pattern may name a `series` group).

Slice order within a series is along the slice normal n = row cosines x column cosines: position = IPP . n,
never file names or InstanceNumber. `slice_index` is the dense rank of the position (equal positions share an
index), `n_slices` the number of distinct positions; series without geometry are ordered by (path, frame).
`spacing_mm` is (between rows, between columns, between slices): the slice spacing is the median step between
distinct positions, else SliceThickness.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from data.keys import CorpusKey
from data.readers.geometry import FileGeometry

SERIES_COLUMNS = (
    "patient_key",
    "study_key",
    "series_key",
    "slice_index",
    "slice_position_mm",
    "spacing_mm",
    "n_slices",
)
GAP_FACTOR = 1.5  # a step between slices larger than this times the series' median step is a gap
_POSITION_DECIMALS = 3  # positions equal to 1 µm are the same position
_ORIENTATION_TOLERANCE = 1e-4
_PATH_PREFIX = "\x01path:"  # fallback identities: cannot collide with a real PatientID or UID


@dataclass(frozen=True)
class Grouping:
    """Patient (and study, series) of files that do not name their own: a mapping or a path pattern."""

    mapping: dict[str, tuple[str, str | None]] = field(default_factory=dict, repr=False)
    pattern: re.Pattern | None = None

    @classmethod
    def from_options(cls, mapping_csv: str | os.PathLike | None = None, pattern: str | None = None) -> Grouping:
        """A CSV with columns `path` (corpus-relative file or folder) and `patient` (optional `study`), and/or
        a regular expression searched in the corpus-relative path with a named group `patient` (optional
        `study`, `series`), e.g. BIDS: 'sub-(?P<patient>[^/]+)/(?:ses-(?P<study>[^/]+)/)?'."""
        mapping: dict[str, tuple[str, str | None]] = {}
        if mapping_csv is not None:
            with open(mapping_csv, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not {"path", "patient"} <= set(reader.fieldnames or ()):
                    raise ValueError(f"{mapping_csv}: patient mapping needs columns 'path' and 'patient'")
                for line, row in enumerate(reader, start=2):
                    path = PurePosixPath(str(row["path"]).strip()).as_posix().strip("/")
                    if not path or not str(row["patient"] or "").strip():
                        raise ValueError(f"{mapping_csv}: line {line}: empty path or patient")
                    mapping[path] = (str(row["patient"]).strip(), (row.get("study") or "").strip() or None)
        compiled = None
        if pattern is not None:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patient pattern {pattern!r}: {exc}") from None
            if "patient" not in compiled.groupindex:
                raise ValueError(f"patient pattern {pattern!r} has no named group (?P<patient>...)")
        return cls(mapping, compiled)

    def lookup(self, relpath: str) -> tuple[str | None, str | None, str | None]:
        """(patient, study, series) values for a corpus-relative path; None where neither source says."""
        parts = relpath.split("/")
        for depth in range(len(parts), 0, -1):  # the file itself, then its folders, nearest first
            hit = self.mapping.get("/".join(parts[:depth]))
            if hit:
                return hit[0], hit[1], None
        match = self.pattern.search(relpath) if self.pattern is not None else None
        if match and match.group("patient"):
            groups = match.groupdict()
            return groups["patient"], groups.get("study") or None, groups.get("series") or None
        return None, None, None


@dataclass(frozen=True)
class FileRows:
    """One scanned file: its manifest frames (frame, height, width) and its geometry (None: no header read)."""

    relpath: str
    source_format: str
    frames: list[tuple[int, int, int]]
    geometry: FileGeometry | None


@dataclass
class SeriesReport:
    """What the scan summary says about the corpus' structure."""

    n_patients: int = 0
    n_studies: int = 0
    n_series: int = 0
    patient_source: Counter = field(default_factory=Counter)  # files by where their patient came from
    checks: dict[str, list[str]] = field(default_factory=dict)  # check -> "<first path of the series>: detail"

    def as_dict(self) -> dict:
        return {
            "patients": self.n_patients,
            "studies": self.n_studies,
            "series": self.n_series,
            "patient_source": dict(sorted(self.patient_source.items())),
            "series_checks": {name: len(found) for name, found in self.checks.items()},
        }


def series_columns(files: list[FileRows], key: CorpusKey, grouping: Grouping) -> tuple[pd.DataFrame, SeriesReport]:
    """Per manifest row (path, frame, *SERIES_COLUMNS), and the report with the series checks."""
    rows, report = (
        [],
        SeriesReport(checks={"duplicate positions": [], "gaps": [], "mixed orientation": [], "mixed size": []}),
    )
    for file in files:
        patient, study, series, source = _identity(file, key, grouping)
        report.patient_source[source] += 1
        geometry = file.geometry
        for i, (frame, height, width) in enumerate(file.frames):
            position = orientation = None
            if geometry is not None and i < len(geometry.positions):
                position, orientation = geometry.positions[i], geometry.orientations[i]
            rows.append(
                (
                    file.relpath,
                    frame,
                    height,
                    width,
                    file.source_format,
                    patient,
                    study,
                    series,
                    position,
                    orientation,
                    geometry,
                )
            )
    table = pd.DataFrame(
        rows,
        columns=[
            "path",
            "frame",
            "height",
            "width",
            "source_format",
            "patient_key",
            "study_key",
            "series_key",
            "_position",
            "_orientation",
            "_geometry",
        ],
    )
    index = np.zeros(len(table), np.int64)
    position_mm = np.full(len(table), np.nan)
    n_slices = np.zeros(len(table), np.int64)
    spacing = [None] * len(table)
    for _, group in table.groupby("series_key", sort=True):
        idx, pos, count, step, problems = _order_series(group)
        index[group.index], position_mm[group.index], n_slices[group.index] = idx, pos, count
        first = group.iloc[np.argsort(idx, kind="stable")[0]]
        rc = first["_geometry"].spacing_rc if first["_geometry"] is not None else None
        thickness = first["_geometry"].thickness if first["_geometry"] is not None else None
        slice_mm = step if np.isfinite(step) else (thickness if thickness else np.nan)
        value = [float(rc[0]) if rc else np.nan, float(rc[1]) if rc else np.nan, float(slice_mm)]
        for i in group.index:
            spacing[i] = value
        for name, detail in problems:
            report.checks[name].append(f"{group['path'].min()}: {detail}")
    out = table.loc[:, ["path", "frame", "patient_key", "study_key", "series_key"]].copy()
    out["slice_index"], out["slice_position_mm"], out["spacing_mm"], out["n_slices"] = (
        index,
        position_mm,
        spacing,
        n_slices,
    )
    report.n_patients = int(out["patient_key"].nunique())
    report.n_studies = int(out["study_key"].nunique())
    report.n_series = int(out["series_key"].nunique())
    return out, report


def _identity(file: FileRows, key: CorpusKey, grouping: Grouping) -> tuple[str, str, str, str]:
    """(patient, study, series keys, where the patient came from: 'dicom', 'mapping' or 'path')."""
    geometry = file.geometry
    patient = geometry.patient_key if geometry is not None else None
    study = geometry.study_key if geometry is not None else None
    series = geometry.series_key if geometry is not None else None
    source = "dicom" if patient else "path"
    if not patient or not study or (not series and file.source_format != "dicom"):
        mapped_patient, mapped_study, mapped_series = grouping.lookup(file.relpath)
        if not patient and mapped_patient:
            patient, source = key.key("patient", mapped_patient), "mapping"
        if not study and mapped_study:
            study = key.key("study", f"{mapped_patient}\0{mapped_study}")
        if not series and mapped_series:
            series = key.key("series", f"{mapped_patient}\0{mapped_study}\0{mapped_series}")
    series = series or key.key("series", _PATH_PREFIX + file.relpath)
    patient = patient or key.key("patient", _PATH_PREFIX + "series:" + series)  # its own patient
    study = study or key.key("study", _PATH_PREFIX + "patient:" + patient)  # one study per patient
    return patient, study, series, source


def _order_series(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int, float, list[tuple[str, str]]]:
    """(slice_index, position along the normal, n distinct positions, median step, [(check, detail)])."""
    n = len(group)
    problems: list[tuple[str, str]] = []
    if len({(h, w) for h, w in zip(group["height"], group["width"], strict=True)}) > 1:
        problems.append(("mixed size", f"{len(set(zip(group['height'], group['width'], strict=True)))} sizes"))
    orientations = [o for o in group["_orientation"] if o is not None]
    geometric = len(orientations) == n and all(p is not None for p in group["_position"])
    if not geometric:
        order = np.lexsort((group["frame"].to_numpy(), group["path"].to_numpy()))
        index = np.empty(n, np.int64)
        index[order] = np.arange(n)
        return index, np.full(n, np.nan), n, np.nan, problems
    reference = np.asarray(orientations[0])
    if any(np.abs(np.asarray(o) - reference).max() > _ORIENTATION_TOLERANCE for o in orientations[1:]):
        problems.append(("mixed orientation", "slices with different ImageOrientationPatient"))
    normal = np.cross(reference[:3], reference[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:  # degenerate cosines: no normal to order along
        problems.append(("mixed orientation", "degenerate ImageOrientationPatient"))
        normal = np.array([0.0, 0.0, 1.0])
    else:
        normal = normal / norm
    position = np.round(np.array([np.dot(p, normal) for p in group["_position"]]), _POSITION_DECIMALS)
    distinct, index = np.unique(position, return_inverse=True)  # dense rank along the normal
    steps = np.diff(distinct)
    step = float(np.median(steps)) if steps.size else np.nan
    if group["source_format"].iloc[0] == "dicom":  # NIfTI volumes are regular by construction (4-D: repeated)
        duplicates = n - distinct.size
        if duplicates:
            problems.append(("duplicate positions", f"{duplicates} slices share a position with another"))
        gaps = int((steps > GAP_FACTOR * step).sum()) if steps.size else 0
        if gaps:
            problems.append(("gaps", f"{gaps} steps above {GAP_FACTOR}x the median spacing {step:.3g} mm"))
    return index.astype(np.int64), position.astype(float), int(distinct.size), step, problems
