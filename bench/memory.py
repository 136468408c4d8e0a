"""Peak memory of localizing one large image: peak RSS per image size, one fresh process per size.

    python bench/memory.py [--sizes 1000 4000 12000] [--batch-size 8] [--keep DIR]

Prints ONE JSON object. For each size S, a child process writes a corpus of one S x S 8-bit PNG (a synthetic
radiograph: a dark field with two bright ellipses), then another child process runs `localize run` on it in-process
(`run_localization(workers=0)`: scan, read, normalise, CLIP saliency, SAM, post-processing, cache write) with the
untrained stand-in models (`localize.standins.write_standins`), and reports its peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and the peak before the run (Python, torch and the models loaded): the
difference is what the image costs. The stand-ins are tiny, so the figures are those of the pipeline's image-sized
arrays, which do not depend on the models' size (SAM's and CLIP's inputs are resized to their own fixed sizes).

Target (issue 28): 12000 x 12000 under 2 GiB per process.
"""
# ruff: noqa: E402  (the sys.path fix below must run before the project imports)

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder is sys.path[0] and its name would shadow the `localize` package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time

TARGET_12K_GIB = 2.0


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def write_corpus(folder: Path, size: int) -> Path:
    """A corpus of one size x size 8-bit PNG: a dark field with two bright ellipses."""
    import cv2
    import numpy as np

    corpus = folder / f"corpus_{size}"
    (corpus / "xr").mkdir(parents=True, exist_ok=True)
    image = np.full((size, size), 30, np.uint8)
    for cx, cy, ax, ay in ((0.35, 0.5, 0.12, 0.3), (0.68, 0.5, 0.12, 0.3)):
        center, axes = (int(cx * size), int(cy * size)), (int(ax * size), int(ay * size))
        cv2.ellipse(image, center, axes, 0, 0, 360, 200, thickness=-1)
    if not cv2.imwrite(str(corpus / "xr" / "chest.png"), image):
        raise OSError(f"could not write {corpus}")
    return corpus


def measure(config_path: Path, corpus: Path, cache: Path, batch_size: int) -> dict:
    """Localize the corpus in this process; peak RSS before and after."""
    import torch

    from localize.config import LocalizeConfig
    from localize.driver import run_localization
    from localize.localizer import Localizer

    torch.set_num_threads(1)
    config = LocalizeConfig.load(config_path, [f"batch_size={batch_size}"])
    Localizer.from_config(config)  # the models' own memory, counted in the setup peak
    setup = _peak_mib()
    started = time.perf_counter()
    summary = run_localization(config, corpus, cache, workers=0, progress=False)
    return {
        "peak_rss_mib": round(_peak_mib(), 1),
        "setup_peak_rss_mib": round(setup, 1),
        "image_mib": round(_peak_mib() - setup, 1),
        "done": summary.done,
        "failed": summary.failed,
        "wall_s": round(time.perf_counter() - started, 2),
    }


def _child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, env={**os.environ}
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 12000])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "SIZE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        what, size, folder = args.child[0], int(args.child[1]), Path(args.child[2])
        if what == "write":
            write_corpus(folder, size)
            result = {}
        else:
            result = measure(
                folder / "standins" / "localize.yaml",
                folder / f"corpus_{size}",
                folder / f"cache_{size}.zarr",
                args.batch_size,
            )
        print(json.dumps(result))
        return 0

    from localize.standins import write_standins

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        write_standins(folder / "standins")
        sizes = {}
        for size in args.sizes:
            _child(["--child", "write", str(size), str(folder)])
            sizes[str(size)] = _child(["--child", "run", str(size), str(folder), "--batch-size", str(args.batch_size)])
    result = {"benchmark": "memory", "models": "untrained stand-ins", "batch_size": args.batch_size, "sizes": sizes}
    if "12000" in sizes:
        result["peak_12k_gib"] = round(sizes["12000"]["peak_rss_mib"] / 1024, 2)
        result["target_12k_gib"] = TARGET_12K_GIB
        result["pass"] = result["peak_12k_gib"] < TARGET_12K_GIB
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
