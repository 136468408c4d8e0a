"""`python -m data scan CORPUS --out MANIFEST.parquet`: build the manifest of a corpus and its failures report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.manifest import failures_path, scan_corpus, write_manifest

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
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores; 1: no pool)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if not args.corpus.is_dir():
        print(f"scan: {args.corpus}: not a directory", file=sys.stderr)
        return 2
    failures_parquet = failures_path(args.out)
    manifest, failures = scan_corpus(
        args.corpus,
        nifti_volumes=args.nifti_volumes,
        workers=args.workers,
        progress=not args.no_progress,
        exclude=[args.out, failures_parquet, failures_parquet.with_suffix(".csv")],
        ignore=args.ignore,
    )
    write_manifest(manifest, failures, args.out)

    for path, reason in failures.head(_SHOWN_FAILURES).itertuples(index=False):
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    if len(failures) > _SHOWN_FAILURES:
        print(f"  ... and {len(failures) - _SHOWN_FAILURES} more", file=sys.stderr)
    n_files = manifest["path"].nunique() + len(failures)
    print(
        f"scanned {n_files} files: {len(manifest)} items, {len(failures)} failures -> {args.out} "
        f"(failures: {failures_parquet.with_suffix('.csv')})"
    )
    return 0
