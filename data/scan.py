"""`python -m data scan CORPUS --out MANIFEST.parquet`: build the manifest of a corpus and its failures report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.keys import KEY_ENV, default_key_file, load_or_create_key
from data.manifest import (
    exclusions_path,
    failures_path,
    manifest_key_fingerprint,
    scan_corpus_full,
    summary_path,
    write_manifest,
)
from data.pseudonym import PATH_MAP, pseudonymize
from data.series import Grouping

_SHOWN_FAILURES = 20


def main(argv: list[str] | None = None) -> int:
    """Scan CORPUS, write the manifest and failures; print one summary line. Returns 0 even when files failed
    (they are listed in the failures table); 2 for a CORPUS that is not a folder. `argv` excludes 'scan'."""
    parser = argparse.ArgumentParser(
        prog="python -m data scan",
        description="Decode every image file under CORPUS once and write one manifest row per 2-D image "
        "(DICOM frame, NIfTI slice, PNG/JPEG/TIFF page). Unreadable files are listed, with a reason, "
        "in MANIFEST.failures.parquet and .csv next to the manifest.",
    )
    parser.add_argument("corpus", type=Path, help="root folder of the corpus; manifest paths are relative to it")
    parser.add_argument("--out", type=Path, required=True, help="manifest parquet file to write")
    parser.add_argument(
        "--nifti-volumes",
        choices=("all", "first"),
        default="all",
        help="4-D NIfTI: slice every volume ('all', default) or only the first",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PATTERN",
        help="skip files matching this glob ('truth/', '*.csv'; repeatable); CORPUS/.scanignore lists more",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help=f"corpus secret for the patient/study/series keys; created (mode 0600) when missing "
        f"(default: ${KEY_ENV}, else ~/.config/mwm/corpus.key). Keep it: keys change with another key",
    )
    parser.add_argument(
        "--patient-map",
        type=Path,
        default=None,
        metavar="CSV",
        help="CSV with columns path,patient[,study] (corpus-relative file or folder) naming the patient of files "
        "that do not (NIfTI, PNG/JPEG/TIFF, DICOM without PatientID)",
    )
    parser.add_argument(
        "--patient-pattern",
        default=None,
        metavar="REGEX",
        help="regular expression on the corpus-relative path with a named group 'patient' (optional 'study', "
        "'series'), e.g. BIDS: 'sub-(?P<patient>[^/]+)/(?:ses-(?P<study>[^/]+)/)?'",
    )
    parser.add_argument(
        "--keep-excluded",
        action="store_true",
        help="keep DICOM scouts, derived/secondary images, secondary captures and images with burned-in annotation "
        "(excluded by default, listed in MANIFEST.exclusions.csv)",
    )
    parser.add_argument(
        "--pseudonymous-paths",
        type=Path,
        default=None,
        metavar="LINKS",
        help="store pseudonymous paths: link every file as LINKS/<modality>/<keyed hash><suffix> and write those "
        f"paths; use LINKS as the corpus afterwards (the private map is LINKS/{PATH_MAP}; keep LINKS private)",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores; 1: no pool)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if not args.corpus.is_dir():
        print(f"scan: {args.corpus}: not a directory", file=sys.stderr)
        return 2
    try:
        key, created = load_or_create_key(args.key_file)
        grouping = Grouping.from_options(args.patient_map, args.patient_pattern)
    except (OSError, ValueError) as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return 2
    previous = manifest_key_fingerprint(args.out)
    if previous is not None and previous != key.fingerprint:
        print(
            f"scan: {args.out} was written with another corpus key (fingerprint {previous}, this key "
            f"{key.fingerprint}): its patient/study/series keys would not match the new ones. Use the key file "
            f"of that scan (--key-file), or write to a new manifest and remake everything built on the old one.",
            file=sys.stderr,
        )
        return 2
    if created:
        print(
            f"  created corpus key {args.key_file or default_key_file()} (mode 0600): keep it private and keep it",
            file=sys.stderr,
        )
    failures_parquet = failures_path(args.out)
    outputs = [
        args.out,
        failures_parquet,
        failures_parquet.with_suffix(".csv"),
        exclusions_path(args.out),
        summary_path(args.out),
    ]
    result = scan_corpus_full(
        args.corpus,
        nifti_volumes=args.nifti_volumes,
        workers=args.workers,
        progress=not args.no_progress,
        exclude=outputs,
        ignore=args.ignore,
        key=key,
        grouping=grouping,
        keep_excluded=args.keep_excluded,
    )
    manifest, failures, exclusions = result.manifest, result.failures, result.exclusions
    if args.pseudonymous_paths is not None:
        try:
            manifest, failures, exclusions = pseudonymize(
                args.corpus, args.pseudonymous_paths, key, manifest, failures, exclusions
            )
        except (OSError, ValueError) as exc:
            print(f"scan: {exc}", file=sys.stderr)
            return 2
        result.exclusions = exclusions
        print(
            f"  paths pseudonymised: use {args.pseudonymous_paths} as the corpus from now on "
            f"(map: {args.pseudonymous_paths / PATH_MAP}, private)",
            file=sys.stderr,
        )
    write_manifest(manifest, failures, args.out, exclusions=exclusions, summary=result.summary())

    for path, reason in failures.head(_SHOWN_FAILURES).itertuples(index=False):
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    if len(failures) > _SHOWN_FAILURES:
        print(f"  ... and {len(failures) - _SHOWN_FAILURES} more", file=sys.stderr)
    for path, reason in exclusions.head(_SHOWN_FAILURES).itertuples(index=False):
        print(f"  {reason}: {path}", file=sys.stderr)
    if len(exclusions) > _SHOWN_FAILURES:
        print(f"  ... and {len(exclusions) - _SHOWN_FAILURES} more excluded", file=sys.stderr)
    for line in _structure_lines(result):
        print(f"  {line}", file=sys.stderr)
    n_files = manifest["path"].nunique() + len(failures) + len(exclusions)
    print(
        f"scanned {n_files} files: {len(manifest)} items, {len(failures)} failures -> {args.out} "
        f"(failures: {failures_parquet.with_suffix('.csv')})"
    )
    return 0


def _structure_lines(result) -> list[str]:
    """The scan summary's structure: patients, studies, series, where patients came from, series checks."""
    series = result.series
    lines = [
        f"{series.n_patients} patients, {series.n_studies} studies, {series.n_series} series; "
        f"{len(result.exclusions)} files excluded (--keep-excluded keeps them)"
    ]
    by_path = series.patient_source.get("path", 0)
    if by_path:
        lines.append(
            f"{by_path} files name no patient (no DICOM PatientID, no --patient-map/--patient-pattern match): "
            "each is its own patient"
        )
    for check, found in series.checks.items():
        if found:
            lines.append(f"series check '{check}': {len(found)} series, e.g. {found[0]}")
    return lines
