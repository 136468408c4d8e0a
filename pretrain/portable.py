"""Lightning's run records without absolute paths (docs/CORPUS.md, "Paths"): the saved config.yaml and the
checkpoint callback's state hold paths relative to the working directory, as `data.portable` does for the rest.

A run resumed or re-run from the same working directory finds every path again; from elsewhere, pass the paths.
"""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback

from data.portable import absolute_path, portable, portable_path

_CKPT_PATH_KEYS = ("best_model_path", "dirpath", "kth_best_model_path", "last_model_path")


class PortableSaveConfig(SaveConfigCallback):
    """LightningCLI's config.yaml, its absolute paths (data folders, `trainer.default_root_dir`, ...) made relative."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.already_saved:
            config = self.config.clone()
            for key, value in config.items():  # leaf keys, dotted
                if isinstance(value, str | os.PathLike | list | tuple | dict):
                    config[key] = portable(value)
            self.config = config
        super().setup(trainer, pl_module, stage)


class PortableModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose state in a checkpoint names its files relative to the working directory; loading
    makes them absolute again, so a resume from the same folder restores `best_k_models` and `last_model_path`."""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: checkpoints written before (and after) this class resume alike
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in _CKPT_PATH_KEYS:
            if state.get(key):
                state[key] = portable_path(state[key])
        state["best_k_models"] = {portable_path(k): v for k, v in (state.get("best_k_models") or {}).items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        for key in _CKPT_PATH_KEYS:
            if state.get(key):
                state[key] = os.path.realpath(absolute_path(state[key]))  # ModelCheckpoint's own dirpath is real
        if "best_k_models" in state:
            state["best_k_models"] = {
                os.path.realpath(absolute_path(k)): v for k, v in (state["best_k_models"] or {}).items()
            }
        super().load_state_dict(state)
