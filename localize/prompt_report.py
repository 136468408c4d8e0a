"""`python -m localize prompts --corpus DIR --config FILE --out REPORT.json`: does the wording of the prompt matter?

For each modality, a sample of its images is localized with each of its candidate prompts alone (the config's
saliency and refinement), and the ROIs of every pair of prompts are compared by IoU (mean over the images; two
empty ROIs agree). High IoU: the prompts find the same region and the choice between them matters little; low
IoU: the wording decides what pretraining will mask, so choose it on purpose (`localize tune`, `localize eval`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from localize.config import LocalizeConfig
from localize.evaluate import dice_iou
from localize.tune import Tuner


def prompt_agreement(tuner: Tuner) -> dict[str, Any]:
    """Per modality: each prompt's mean ROI area (share of the image) and the pairwise mean IoU of the prompts."""
    report: dict[str, Any] = {}
    for modality in tuner.items:
        prompts = tuner.prompts.for_modality(modality).prompts
        rois = {p: tuner.rois(modality, p) for p in prompts}
        pairs = [
            {"a": a, "b": b, "iou": float(np.mean([dice_iou(x, y)[1] for x, y in zip(rois[a], rois[b], strict=True)]))}
            for a, b in itertools.combinations(prompts, 2)
        ]
        report[modality] = {
            "images": len(tuner.items[modality][0]),
            "roi_area": {p: float(np.mean([r.mean() for r in rs])) for p, rs in rois.items()},
            "pairwise_iou": pairs,
            "min_iou": min((q["iou"] for q in pairs), default=None),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localize prompts", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path, help="localize YAML (models, saliency, prompts)")
    parser.add_argument("--out", type=Path, help="write the report JSON here")
    parser.add_argument("--per-modality", type=int, default=6, help="images per modality (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sample of images")
    args = parser.parse_args(argv)
    report = prompt_agreement(Tuner(LocalizeConfig.load(args.config), args.corpus, args.per_modality, args.seed))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    for modality, entry in report.items():
        pairs = ", ".join(f"{q['a']!r}~{q['b']!r} {q['iou']:.2f}" for q in entry["pairwise_iou"]) or "one prompt"
        print(f"prompts {modality}: IoU {pairs}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0
