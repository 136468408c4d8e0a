"""`python -m pretrain maskedclip {fit,validate} --config configs/maskedclip/X.yaml` and
`python -m pretrain maskedclip export CKPT --open-clip DIR --timm FILE`.

fit / validate: `pretrain fit`'s LightningCLI (PretrainCLI: checkpoint + panel callbacks, TensorBoard + CSV in one
run folder, linked input size and seed) over MaskedClipPretraining and PairedDataModule; the model's text
tokenizer settings (`model.text.model`, `model.text.context_length`) and `model.vision.input_size` also set the
data module's. The model's settings are grouped (`model.vision.*`, `model.text.*`, `model.decoders.*`,
`model.losses.*`: pretrain/maskedclip/config.py); a flat key of the code before (`model.vit`, ...) is refused with
its new name.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import yaml
from pytorch_lightning.cli import LightningArgumentParser

from configs import CONFIG_FLAGS
from pretrain.cli import PretrainCLI
from pretrain.maskedclip.config import flat_key_errors
from pretrain.maskedclip.datamodule import PairedDataModule
from pretrain.maskedclip.module import MaskedClipPretraining
from pretrain.sigterm import exit_code

USAGE = """usage: python -m pretrain maskedclip {fit,validate,export} ...

  fit --config configs/maskedclip/X.yaml [--data.corpus DIR --data.cache CACHE.zarr --data.reports PAIRS.csv]
      [--ckpt_path last.ckpt]
  validate --config ... --ckpt_path CKPT
  export CKPT --open-clip DIR [--timm FILE]   image + text towers as an open_clip folder (BiomedCLIP's layout)
                                              and/or the image encoder as a timm ViT state dict

Run `python -m pretrain maskedclip fit --help` (or `--print_config`) for every option."""


class MaskedClipCLI(PretrainCLI):
    INPUT_SIZE_KEY = "model.vision.input_size"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.text.model", "data.text_model")
        parser.link_arguments("model.text.context_length", "data.context_length")


def flat_model_keys(argv: Sequence[str]) -> list[str]:
    """Errors for the flat `model.*` keys of the code before the grouping (config.FLAT_KEYS) in the `--config`
    files and `--model.KEY` arguments of `argv`, each naming the new key; unreadable files are left to the CLI."""
    errors = []
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv) or arg.startswith("--config="):
            path = Path(argv[i + 1] if arg in CONFIG_FLAGS else arg.split("=", 1)[1])
            try:
                config = yaml.safe_load(path.read_text()) if path.is_file() else None
            except (OSError, yaml.YAMLError):
                continue
            model = config.get("model") if isinstance(config, dict) else None
            if isinstance(model, dict):
                errors += flat_key_errors(list(model), str(path))
        elif arg.startswith("--model."):
            errors += flat_key_errors([arg[len("--model.") :].split("=", 1)[0]], "command line")
    return errors


def export_main(argv: Sequence[str]) -> int:
    from pretrain.maskedclip.export import export_open_clip, export_timm, load_trained_model

    parser = argparse.ArgumentParser(
        prog="python -m pretrain maskedclip export",
        description="Write a MaskedCLIP checkpoint's towers as an open_clip folder and/or its image encoder as timm.",
    )
    parser.add_argument("ckpt", help="checkpoint of `python -m pretrain maskedclip fit`, e.g. .../last.ckpt")
    parser.add_argument("--open-clip", dest="open_clip", help="output folder for the open_clip model (local-dir:)")
    parser.add_argument("--timm", help="output file for the image encoder's timm state dict, e.g. vit.pt")
    args = parser.parse_args(list(argv))
    if not args.open_clip and not args.timm:
        parser.error("give --open-clip DIR, --timm FILE or both")
    trained = load_trained_model(args.ckpt)
    summary = {}
    if args.open_clip:
        summary["open_clip"] = export_open_clip(trained, args.open_clip)
    if args.timm:
        summary["timm"] = export_timm(trained, args.timm)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "export":
        return export_main(argv[1:])
    # LightningCLI reads sys.argv itself when args is None, but here sys.argv starts with `maskedclip`: the
    # arguments go in explicitly, and its warning against mixing the two says nothing to a user.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    errors = flat_model_keys(argv)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    return exit_code(
        lambda: MaskedClipCLI(
            MaskedClipPretraining,
            PairedDataModule,
            args=argv,
            auto_configure_optimizers=False,  # the module builds AdamW and the schedule itself
        )
    )
