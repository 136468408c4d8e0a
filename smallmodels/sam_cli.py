"""Train the small SAM through LightningCLI (`SamBoxTraining` + `BoxPromptData`, configs/smallmodels/sam.yaml) and
write it as a custom-SAM checkpoint that `localize.sam_loader.load_sam` reads: a state dict + its `.json`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from smallmodels.sam_data import BoxPromptData
from smallmodels.sam_module import SamBoxTraining

SAM_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smallmodels" / "sam.yaml"


class SamCLI(LightningCLI):
    """fit only; the data's input side follows the model's image encoder."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.arch", "data.img_size", compute_fn=lambda arch: arch["image_encoder"]["img_size"])


def train_sam(corpus: Path, checkpoint: Path, seed: int, args: Sequence[str] = ()) -> Path:
    """Fit the small SAM on the objects of `corpus`; write `checkpoint` (.pth) and its `.json` architecture."""
    cli = SamCLI(
        SamBoxTraining,
        BoxPromptData,
        args=[
            "fit",
            "--config",
            str(SAM_CONFIG),
            f"--data.corpus={corpus}",
            f"--data.seed={seed}",
            f"--seed_everything={seed}",
            *args,
        ],
        save_config_callback=None,
    )
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.with_suffix(".json").write_text(json.dumps(cli.model.arch, indent=2), encoding="utf-8")
    torch.save(cli.model.sam.state_dict(), checkpoint)
    return checkpoint
