"""The two classification recipes, with their references: SparK's fine-tune and MAE's linear probe.

A `ClassifyRecipe` is every training choice of one protocol; `ClassificationModule` starts from the recipe of its
mode and overrides the fields set explicitly. Learning rates are per 256 images (`base_lr`), scaled by the run's
batch (per-device batch x devices x gradient accumulation) as both references do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Optimizer = Literal["lamb", "adamw", "lars", "sgd"]


@dataclass(frozen=True)
class ClassifyRecipe:
    """One classification protocol.

    optimizer:           'lamb' | 'adamw' | 'lars' | 'sgd' (see finetune.optim).
    base_lr:             lr per 256 images; lr = base_lr x batch / 256.
    weight_decay:        on weights only (no decay on 1-D parameters: norms, biases).
    layer_decay:         layer-wise lr decay (finetune.layer_decay); 1 = off.
    warmup_epochs:       linear warm-up from warmup_start_ratio x lr, then cosine to min_lr_ratio x lr, per step.
    mixup, cutmix:       timm Mixup alphas (mixup 0 turns both off, as SparK's `mixup_fn.mixup_enabled`).
    label_smoothing:     applied to the (mixed) one-hot targets.
    drop_path:           stochastic depth rate of the backbone.
    ema_decay:           timm ModelEmaV3 decay of an EMA copy evaluated beside the model; 0 = no EMA.
    loss:                'bce' (timm BinaryCrossEntropy on soft targets, SparK's with LAMB) | 'ce' (soft-target CE).
    """

    optimizer: Optimizer
    base_lr: float
    weight_decay: float
    layer_decay: float
    warmup_epochs: float
    warmup_start_ratio: float
    min_lr_ratio: float
    mixup: float
    cutmix: float
    label_smoothing: float
    drop_path: float
    ema_decay: float
    loss: Literal["bce", "ce"]

    def updated(self, **overrides: Any) -> ClassifyRecipe:
        """This recipe with the fields whose override is not None replaced."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# SparK downstream_imagenet, ResNet-50 row of arg.py's HP_DEFAULT_VALUES (bs 2048, ep 300, wp_ep 5, lamb,
# base_lr 2e-3, lr_scale 0.7, wd 0.02, mixup 0.1, rep_aug 0, drop_path 0.05, ema 0.9999); util.py: cutmix 1.0,
# label smoothing 0.1, BinaryCrossEntropy with LAMB; lr_decay.py: warm-up from 0.005 x lr, cosine to 0.001 x lr.
SPARK_FINETUNE = ClassifyRecipe(
    optimizer="lamb",
    base_lr=2e-3,
    weight_decay=0.02,
    layer_decay=0.7,
    warmup_epochs=5,
    warmup_start_ratio=0.005,
    min_lr_ratio=0.001,
    mixup=0.1,
    cutmix=1.0,
    label_smoothing=0.1,
    drop_path=0.05,
    ema_decay=0.9999,
    loss="bce",
)

# MAE main_linprobe.py: LARS (momentum 0.9, trust 0.001, no decay or adaptation of 1-D parameters), blr 0.1,
# weight decay 0, 90 epochs with 10 of warm-up from 0, half-cycle cosine to min_lr 0, cross-entropy, no mixup.
MAE_LINEAR_PROBE = ClassifyRecipe(
    optimizer="lars",
    base_lr=0.1,
    weight_decay=0.0,
    layer_decay=1.0,
    warmup_epochs=10,
    warmup_start_ratio=0.0,
    min_lr_ratio=0.0,
    mixup=0.0,
    cutmix=0.0,
    label_smoothing=0.0,
    drop_path=0.0,
    ema_decay=0.0,
    loss="ce",
)

RECIPES = {"finetune": SPARK_FINETUNE, "linear_probe": MAE_LINEAR_PROBE}
