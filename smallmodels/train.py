"""`python -m smallmodels train --out DIR [--corpus DIR] [--seed S]`: the small localizer models and their config.

Steps (each skipped when its output exists, so an interrupted run resumes):
  1. a training corpus: `data.sample` drawn with seed `TRAIN_CORPUS_SEED + seed` (never the demo's 0), every
     non-test image with a report, unless `--corpus` names one (a sample corpus: labels.csv, truth/, reports.csv);
  2. its ROI cache from its truth masks (`localize import`): MaskedCLIP's data module needs one (the small CLIP
     trains L_CLIP alone, so the ROIs do not change its training);
  3. the small CLIP: `pretrain maskedclip fit` (LightningCLI, configs/smallmodels/clip.yaml), exported in
     BiomedCLIP's open_clip layout (`pretrain maskedclip export --open-clip`) -> DIR/clip/;
  4. the small SAM (`smallmodels.sam_cli`, configs/smallmodels/sam.yaml) -> DIR/sam_small.pth + .json;
  5. DIR/localize.yaml (`smallmodels.localize_config`) for `python -m localize run --config`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from data.sample import write_sample_corpus
from localize.import_masks import import_masks
from pretrain.maskedclip.cli import main as maskedclip_main
from pretrain.maskedclip.export import export_open_clip, load_trained_model
from smallmodels.localize_config import write_localize_config
from smallmodels.sam_cli import train_sam

TRAIN_CORPUS_SEED = 1000  # + --seed: the training corpora never share the demo's (0) or the tests' seeds
CLIP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smallmodels" / "clip.yaml"


def train_small_models(
    out: Path, corpus: Path | None = None, seed: int = 0, n: int = 48, clip_args=(), sam_args=()
) -> Path:
    """Train both models into `out` (see the module docstring); returns `out/localize.yaml`."""
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = out / "train_corpus"
        if not (corpus / "labels.csv").is_file():
            _say(f"training corpus: sample seed {TRAIN_CORPUS_SEED + seed}, {n} images per modality -> {corpus}")
            write_sample_corpus(corpus, n, TRAIN_CORPUS_SEED + seed, size=128, report_share=1.0)
    corpus = Path(corpus).resolve()
    clip_dir, sam_ckpt = out / "clip", out / "sam_small.pth"
    if not (clip_dir / "open_clip_config.json").is_file():
        cache = out / "train_roi.zarr"
        if not cache.exists():
            import_masks(corpus / "truth", cache, corpus=corpus, progress=False)
        _say("small CLIP: MaskedCLIP trainer, L_CLIP on the corpus's image-report pairs")
        run_dir = out / "clip_run"
        code = maskedclip_main(
            [
                "fit",
                "--config",
                str(CLIP_CONFIG),
                f"--data.corpus={corpus}",
                f"--data.cache={cache}",
                f"--data.reports={corpus / 'reports.csv'}",
                f"--trainer.default_root_dir={run_dir}",
                f"--seed_everything={seed}",
                f"--model.seed={seed}",
                *clip_args,
            ]
        )
        if code != 0:  # stopped (SIGTERM): its last checkpoint is not the trained model; a rerun resumes
            raise SystemExit(code)
        last = max((run_dir / "logs").glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        export_open_clip(load_trained_model(last), clip_dir)
    if not sam_ckpt.is_file():
        _say("small SAM: box prompts over the corpus's objects, SAM's loss terms (weights: sam.yaml)")
        train_sam(corpus, sam_ckpt, seed, sam_args)
    return write_localize_config(out / "localize.yaml", clip_dir, sam_ckpt, seed)


def _say(message: str) -> None:
    print(f"smallmodels: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smallmodels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the small CLIP and SAM on synthetic data; write DIR/localize.yaml")
    train.add_argument("--out", required=True, type=Path, help="output folder (resumed if it exists)")
    train.add_argument("--corpus", type=Path, help="a sample corpus to train on (default: one drawn here)")
    train.add_argument("--n", type=int, default=48, help="images per modality of the drawn corpus (default 48)")
    train.add_argument("--seed", type=int, default=0, help="seeds the corpus draw and both trainings")
    train.add_argument("--clip-steps", type=int, help="small CLIP steps (default: configs/smallmodels/clip.yaml's)")
    train.add_argument("--sam-steps", type=int, help="small SAM steps (default: configs/smallmodels/sam.yaml's)")
    train.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these models are too small to gain from more, and on a busy machine "
        "extra threads wait on each other: 15x slower measured on 2 shared cores)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    clip_args = [] if args.clip_steps is None else [f"--trainer.max_steps={args.clip_steps}"]
    sam_args = [] if args.sam_steps is None else [f"--data.steps={args.sam_steps}"]
    path = train_small_models(args.out, args.corpus, args.seed, args.n, clip_args, sam_args)
    _say(f"done in {time.perf_counter() - start:.0f} s")
    print(path)
    return 0
