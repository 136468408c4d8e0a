"""`python -m data {scan,pack,sample} ...`: a manifest of a corpus, its packed images, or the sample corpus."""

from __future__ import annotations

import sys

USAGE = """usage: python -m data {scan,pack,sample} [options]

  scan CORPUS --out MANIFEST.parquet   one row per 2-D image + a failures table next to it
  pack --corpus DIR --out STORE.zarr [--cache C.zarr | --manifest M]   the packed image store (docs/PACKING.md)
  sample --out DIR [--n N] [--seed S]  write the deterministic synthetic sample corpus

Run `python -m data COMMAND --help` for a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "scan":
        from data.scan import main as scan_main

        return scan_main(rest)
    if command == "pack":
        from data.pack_cli import main as pack_main

        return pack_main(rest)
    if command == "sample":
        from data.sample import main as sample_main

        return sample_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
