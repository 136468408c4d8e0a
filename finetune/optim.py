"""Optimizers of the fine-tuning recipes, built from library classes (timm's LAMB and LARS, torch's AdamW and SGD)."""

from __future__ import annotations

import torch
from timm.optim import Lamb, Lars
from torch.optim import Optimizer


def make_optimizer(name: str, groups: list[dict], lr: float) -> Optimizer:
    """`name` over parameter `groups` (each may carry its own 'lr' and 'weight_decay').

    lamb:  timm Lamb as SparK's downstream_imagenet sets it: no bias correction, trust ratio on every parameter
           (always_adapt), no built-in gradient clipping (SparK's max_grad_norm 1e7 never clips).
    adamw: torch AdamW.
    lars:  timm Lars with MAE's (MoCo v3's) rule: momentum 0.9, trust coefficient 0.001, the trust ratio on
           weights of 2 or more dims only; 1-D parameters are neither adapted nor decayed.
    sgd:   torch SGD, momentum 0.9.
    """
    if name == "lamb":
        return Lamb(groups, lr=lr, bias_correction=False, always_adapt=True, max_grad_norm=None)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "lars":
        for group in groups:
            matrices = all(p.ndim > 1 for p in group["params"])
            group["always_adapt"] = matrices
            if not matrices:
                group["weight_decay"] = 0.0
        return Lars(groups, lr=lr, momentum=0.9, trust_coeff=0.001)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; use 'lamb', 'adamw', 'lars' or 'sgd'")
