"""`python -m data pack --corpus DIR --out STORE.zarr [--cache C.zarr | --manifest M.parquet]`: the packed image store.

The items are the ROI cache's (`--cache`, the usual case: the store then lines up with it item for item), a
manifest's, or a fresh scan's. The intensity rules are the cache's (recorded by `localize run`) unless `--intensity`
sets others (a warning names the differing fields). Re-running resumes (an existing store keeps its settings); a
store of other items or intensity rules is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from data.frame_source import DEFAULT_MAX_BYTES
from data.intensity_follow import follow_intensity, recorded_intensity
from data.manifest import read_manifest, scan_corpus
from data.packed_store import DEFAULT_MAX_SIDE, PACKED_DTYPES, PackedStore
from data.packing import default_workers, pack_corpus
from data.provenance import ProvenanceMismatch
from data.roi_cache import RoiCache


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data pack", description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True, help="corpus root folder")
    parser.add_argument("--out", type=Path, required=True, help="packed store to create or resume (STORE.zarr)")
    items = parser.add_mutually_exclusive_group()
    items.add_argument("--cache", type=Path, help="ROI cache: its items and recorded intensity rules")
    items.add_argument("--manifest", type=Path, help="manifest parquet (default: scan the corpus)")
    parser.add_argument(
        "--intensity",
        help="IntensityConfig fields as YAML, e.g. '{ct_window: lung}' (default: the cache's, else the defaults)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--max-side",
        type=int,
        help=f"longest stored side of a new store (default {DEFAULT_MAX_SIDE}; images up to it "
        "are stored at their own size)",
    )
    size.add_argument(
        "--square",
        type=int,
        metavar="SIDE",
        help="store every image resized to SIDE x SIDE (aspect not kept) as pretraining's `augment: resize` does, "
        "for pretraining at input_size SIDE only (docs/PACKING.md)",
    )
    parser.add_argument("--dtype", choices=PACKED_DTYPES, help="stored pixel type of a new store (default uint8)")
    parser.add_argument(
        "--shard-items", type=int, help="items per shard of a new store (default: the cache's, else 256)"
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores, up to 8; 1: this one)")
    parser.add_argument("--part", default="0/1", metavar="K/N", help="pack every N-th shard from the K-th (0-based)")
    parser.add_argument(
        "--volume-cache-mb",
        type=int,
        default=DEFAULT_MAX_BYTES >> 20,
        help="cap on decoded frames held per process (MiB; 0: read item by item)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="also redo items recorded as failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        part = tuple(int(v) for v in args.part.split("/"))
        if len(part) != 2:
            raise ValueError(f"--part {args.part}: expected K/N")
        store = open_store(args)
        summary = pack_corpus(
            store,
            args.corpus,
            workers=default_workers() if args.workers is None else args.workers,
            part=part,
            max_bytes=args.volume_cache_mb << 20,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ProvenanceMismatch) as e:
        print(f"pack: error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


def open_store(args: argparse.Namespace) -> PackedStore:
    """The store at --out for this run's items and settings: resumed when it exists, created otherwise."""
    if not args.corpus.is_dir():
        raise FileNotFoundError(f"{args.corpus}: corpus is not a directory")
    requested = yaml.safe_load(args.intensity) if args.intensity else None
    if requested is not None and not isinstance(requested, dict):
        raise ValueError(f"--intensity {args.intensity!r}: expected a YAML mapping, e.g. '{{ct_window: lung}}'")
    shard_items = args.shard_items
    if args.cache is not None:
        cache = RoiCache.open(args.cache)
        manifest, shard_items = cache.manifest(), shard_items or cache.shard_items
        intensity = follow_intensity(requested, recorded_intensity(cache.provenance), f"the ROI cache {args.cache}")
    else:
        manifest = (
            read_manifest(args.manifest)
            if args.manifest
            else scan_corpus(args.corpus, progress=not args.no_progress)[0]
        )
        intensity = follow_intensity(requested, None, "")
    settings = {"max_side": args.max_side, "square": args.square, "dtype": args.dtype, "shard_items": shard_items}
    return PackedStore.open_or_create(args.out, manifest, intensity, **settings)
