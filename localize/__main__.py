"""`python -m localize {run,stand-ins,eval,inspect,import,tune,prompts}`: text-guided ROIs into the ROI cache."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from localize.config import ConfigError, LocalizeConfig
from localize.precision import PRECISIONS
from localize.saliency import METHODS


def _run(args: argparse.Namespace) -> int:
    from localize.driver import run_localization, write_error_line

    overrides = list(args.set or [])
    for flag in ("clip", "sam", "prompts", "batch_size", "precision"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{flag}={value}")
    if args.saliency is not None:
        overrides.append(f"saliency={json.dumps({'method': args.saliency})}")
    config = LocalizeConfig.load(args.config, overrides)
    if config.untrained:
        print(
            "localize: using UNTRAINED stand-in models: the ROIs carry no meaning (labelled untrained in the cache)",
            file=sys.stderr,
        )
    if config.models_label:
        print(f"localize: models: {config.models_label}", file=sys.stderr)
    try:
        summary = run_localization(
            config,
            args.corpus,
            args.cache,
            manifest_path=args.manifest,
            workers=args.workers,
            scheduler=args.scheduler,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
            pack_path=args.pack,
            wait_s=args.wait,
            dashboard=args.dashboard or None,
        )
    except Exception as e:  # a full disk or a denied write: one line naming the cache, not a traceback
        line = write_error_line(e, args.cache)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1
    print(summary.line())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from data.roi_cache import RoiCache
    from localize.evaluate import evaluate_cache, write_report

    scores, summary = evaluate_cache(
        RoiCache.open(args.cache), args.truth, label_volumes=args.label_volumes, corpus=args.corpus or "."
    )
    if args.out:
        write_report(scores, summary, args.out)
    print(json.dumps(summary, indent=2))
    if summary["evaluated"]:
        modalities = ", ".join(f"{m} {v['dice_mean']:.3f}" for m, v in summary["per_modality"].items())
        print(f"eval: Dice {summary['overall']['dice_mean']:.3f} overall ({modalities})", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localize", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="localize every pending item of a corpus into a ROI cache (resumable)")
    run.add_argument("--config", help="localize YAML (e.g. the one `stand-ins` writes); defaults otherwise")
    run.add_argument("--corpus", required=True, help="corpus root folder")
    run.add_argument("--cache", required=True, help="ROI cache path (CACHE.zarr); created or resumed")
    run.add_argument("--manifest", help="use this manifest instead of scanning the corpus (new caches only)")
    run.add_argument(
        "--clip",
        help="BiomedCLIP spec: hf-hub:..., local-dir:/path (open_clip layout) or hf-biomedclip:/path "
        "(Hugging Face layout, e.g. MedCLIP-SAMv2's fine-tuned model)",
    )
    run.add_argument("--sam", help="SAM spec: vit_b|vit_l|vit_h:/path/checkpoint.pth, or a custom .pth with .json")
    run.add_argument("--saliency", choices=sorted(METHODS), help="saliency method (the release's M2IB by default)")
    run.add_argument("--precision", choices=PRECISIONS, help="fp32 (the release, default) or bf16 autocast (GPU)")
    run.add_argument("--prompts", help="prompts YAML (configs/prompts.yaml)")
    run.add_argument("--batch-size", type=int, help="images per model batch")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set saliency.preset=fast --set refine.top_k=1",
    )
    run.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    run.add_argument(
        "--dashboard",
        default=":8787",
        help="the local Dask cluster's dashboard address, its link printed (default :8787; '' = none)",
    )
    run.add_argument(
        "--workers", type=int, help="local Dask workers (default: one per GPU, else sized to the CPU); 0 = no Dask"
    )
    run.add_argument(
        "--pack", metavar="STORE.zarr", help="also fill this packed image store in the same pass (docs/PACKING.md)"
    )
    run.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when another run holds the cache, wait up to this long for it (default: refuse at once)",
    )
    run.add_argument("--retry-failed", action="store_true", help="also redo items recorded as failed")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)

    ev = sub.add_parser("eval", help="Dice / IoU of cached ROIs against ground-truth masks, per modality")
    ev.add_argument("--cache", required=True)
    truth = ev.add_mutually_exclusive_group(required=True)
    truth.add_argument("--truth", help="folder of <item_id>.png masks (the sample corpus: DIR/truth)")
    truth.add_argument(
        "--label-volumes",
        metavar="LIST.csv",
        help="CSV (label, images) of NIfTI label volumes / DICOM SEG objects, matched to the images by geometry",
    )
    ev.add_argument("--corpus", help="the corpus the cache's paths are relative to (with --label-volumes)")
    ev.add_argument("--out", help="write the summary JSON here (+ a per-item CSV next to it)")
    ev.set_defaults(func=_eval)

    sub.add_parser("stand-ins", help="write tiny untrained BiomedCLIP/SAM checkpoints + localize.yaml", add_help=False)
    sub.add_parser(
        "tune", help="choose layer, beta, threshold and prompts without masks (+ Dice with truth)", add_help=False
    )
    sub.add_parser("prompts", help="per modality: the ROIs of each prompt and their pairwise IoU", add_help=False)
    sub.add_parser("inspect", help="overlay panels + statistics of a cache, as PNGs and one HTML page", add_help=False)
    sub.add_parser(
        "import", help="ROI masks from <item_id>.png files, or a shuffled-ROI control, into a cache", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # open_clip logs its model construction at INFO on the root logger; keep ours at INFO, theirs quiet.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("localize", "data"):
        logging.getLogger(name).setLevel(logging.INFO)
    # Dask's scheduler/nanny start-stop chatter; read by distributed at import, inherited by local workers.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if argv and argv[0] == "stand-ins":
        from localize.standins import standins_main

        return standins_main(argv[1:])
    if argv and argv[0] == "inspect":
        from localize.viewer.report import main as inspect_main

        return inspect_main(argv[1:])
    if argv and argv[0] == "tune":
        from localize.tune import main as tune_main

        return tune_main(argv[1:])
    if argv and argv[0] == "prompts":
        from localize.prompt_report import main as prompts_main

        return prompts_main(argv[1:])
    if argv and argv[0] == "import":
        from localize.import_masks import main as import_main

        return import_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # ProvenanceMismatch, model loading errors: their messages say what to do
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
