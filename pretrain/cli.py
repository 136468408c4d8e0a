"""`python -m pretrain {fit,validate} --config configs/pretrain/X.yaml` and `python -m pretrain export CKPT --out F`.

fit / validate are LightningCLI(MaskedPretraining, RoiDataModule): every constructor argument is a config
key (`model.*`, `data.*`, `trainer.*`), plus two always-present callbacks configured under their own keys:
`checkpoint` (ModelCheckpoint, `last.ckpt` kept) and `panel` (ReconstructionPanel). `model.input_size`
and `model.seed` set `data.input_size` and `data.seed`.

Unless `trainer.logger` is given, a run logs to TensorBoard and CSV in one folder,
`trainer.default_root_dir/logs/version_N/` (events, metrics.csv, config.yaml, checkpoints/, panels/).
Resume a run exactly with `--ckpt_path .../version_N/checkpoints/last.ckpt` (it then logs to version_N+1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from configs import resolve_config_args
from pretrain.callbacks import ReconstructionPanel
from pretrain.datamodule import RoiDataModule
from pretrain.export import export_backbone
from pretrain.module import MaskedPretraining
from pretrain.portable import PortableModelCheckpoint, PortableSaveConfig
from pretrain.sigterm import exit_code

LOG_FOLDER = "logs"


def default_loggers(root_dir: str | os.PathLike) -> list[Logger]:
    """TensorBoard + CSV in the same `root_dir/logs/version_N` folder (see PretrainCLI for the shared N)."""
    return [TensorBoardLogger(root_dir, name=LOG_FOLDER), CSVLogger(root_dir, name=LOG_FOLDER)]


class PretrainCLI(LightningCLI):
    """LightningCLI with fit/validate only, the checkpoint and panel callbacks, linked model/data arguments
    and TensorBoard + CSV loggers sharing one run folder by default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", PortableSaveConfig)  # config.yaml without absolute paths
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {key: value for key, value in LightningCLI.subcommands().items() if key in ("fit", "validate")}

    INPUT_SIZE_KEY = "model.input_size"  # the module's key that sets data.input_size

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # one value each: Lightning also refuses module and data hparams that disagree on a shared key
        parser.link_arguments(self.INPUT_SIZE_KEY, "data.input_size")
        parser.link_arguments("model.seed", "data.seed")
        parser.add_lightning_class_args(PortableModelCheckpoint, "checkpoint")  # its state: relative paths
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_epochs": 1})
        parser.add_lightning_class_args(ReconstructionPanel, "panel")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config_init.get(self.subcommand, self.config_init) if self.subcommand else self.config_init
        trainer_config = config.get("trainer") or {}
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(trainer_config.get("default_root_dir") or os.getcwd())
            # The CSV writer warns that the shared folder is not empty; it only ever removes an old
            # metrics.csv, which a fresh version folder cannot hold.
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        return super().instantiate_trainer(**kwargs)

    def _resolve_logger_versions(self) -> None:
        # Fix every logger's version now, before any of them creates its folder: loggers with the same
        # save_dir/name then agree on version_N instead of taking N and N+1.
        for logger in self.trainer.loggers:
            _ = logger.version

    def before_fit(self) -> None:
        self._resolve_logger_versions()

    def before_validate(self) -> None:
        self._resolve_logger_versions()


def export_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain export",
        description="Write the pretrained encoder of a pretraining checkpoint as a plain timm state dict.",
    )
    parser.add_argument("ckpt", help="checkpoint of `python -m pretrain fit`, e.g. .../checkpoints/last.ckpt")
    parser.add_argument("--out", required=True, help="output file, e.g. backbone.pt")
    args = parser.parse_args(list(argv))
    summary = export_backbone(args.ckpt, args.out)
    print(json.dumps(summary, indent=2, default=str))
    return 0


USAGE = """usage: python -m pretrain {fit,validate,export,maskedclip} ...

  fit --config configs/pretrain/X.yaml [--data.corpus DIR --data.cache CACHE.zarr] [--ckpt_path last.ckpt]
  validate --config ... --ckpt_path CKPT
  export CKPT --out backbone.pt      the encoder as a timm state dict
  maskedclip {fit,validate,export} ...           MaskedCLIP pretraining (docs/MASKEDCLIP.md)

Run `python -m pretrain fit --help` (or `--print_config`) for every option."""


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = resolve_config_args(sys.argv[1:] if argv is None else argv)  # shipped configs from any folder
    if from_command_line:  # LightningCLI reads sys.argv itself
        sys.argv[1:] = argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "export":
        return export_main(argv[1:])
    if argv[0] == "experiment":
        print("the masking-strategy study moved: python -m study --config configs/experiment/X.yaml", file=sys.stderr)
        return 2
    if argv[0] == "maskedclip":
        from pretrain.maskedclip.cli import main as maskedclip_main

        return maskedclip_main(argv[1:])
    return exit_code(
        lambda: PretrainCLI(
            MaskedPretraining,
            RoiDataModule,
            args=None if from_command_line else argv,  # LightningCLI reads sys.argv itself
            auto_configure_optimizers=False,  # the module builds LAMB/AdamW and the schedules itself
        )
    )
