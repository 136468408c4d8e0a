"""`python -m data sample --out DIR [--mode MODE] [--n N] [--seed S] [--size PX] [--report-share F]`:
a synthetic corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from data.sample.corpus import MODES, write_sample_corpus
from data.sample.reports import REPORT_SHARE


def main(argv: list[str] | None = None) -> int:
    """`python -m data sample --out DIR [--mode MODE] [--n N] [--seed S] [--size PX] [--report-share F]`."""
    parser = argparse.ArgumentParser(
        prog="python -m data sample",
        description="Deterministic synthetic corpus: the sample corpus (brain MRI as NIfTI, chest CT as DICOM, "
        "chest X-ray as 16-bit PNG) or, with --mode control, the masking study's positive control (the class "
        "lies only in a lesion's texture; --mode control_shapes: in its outline) or, with --mode volumes, CT and MR "
        "series whose target lies on the middle "
        "slices only (organ-free end slices).",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (new, empty, or an earlier sample)")
    parser.add_argument("--mode", choices=sorted(MODES), default="sample", help="which corpus (default sample)")
    parser.add_argument(
        "--n",
        type=int,
        default=12,
        help="2-D items per modality (default 12, at least 3; control: items, >= 4; volumes: slices per modality in "
        "series of 12, >= 12)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="image size in pixels (default 128, at least 48; control 96, control_shapes 64, >= 32)",
    )
    parser.add_argument(
        "--report-share",
        type=float,
        default=REPORT_SHARE,
        help=f"sample mode: share of each modality's non-test images given a synthetic report in reports.csv "
        f"(default {REPORT_SHARE}; 0 writes the header only)",
    )
    args = parser.parse_args(argv)
    try:
        summary = write_sample_corpus(
            args.out,
            args.n,
            args.seed,
            size=args.size,
            report_share=args.report_share,
            progress=True,
            mode=args.mode,
        )
    except (ValueError, FileExistsError, NotADirectoryError) as err:
        parser.exit(2, f"error: {err}\n")
    counts = ", ".join(f"{code} {k} ({summary.positives[code]} with lesions)" for code, k in summary.items.items())
    print(f"{args.mode} corpus in {summary.root}: {counts}; {summary.annotations} lesion annotations")
    print(f"  labels: {summary.labels_csv}\n  COCO:   {summary.coco_json}\n  truth:  {summary.root / 'truth'}")
    if summary.reports_csv is not None:
        print(f"  reports: {summary.reports_csv} ({summary.reports} images)")
    print(f"  about:  {summary.root / 'README.txt'}")
    return 0
