"""Numerical precision of the localization models: fp32 (the release, the default) or bf16 autocast.

The Localizer runs saliency, prompt encoding and SAM inside ``autocast(device, precision)``; the model code itself
never switches precision, so one setting covers every stage and the fp32 path is plain fp32.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def require_gpu_for_bf16(device: torch.device, precision: str) -> None:
    """A localization run refuses bf16 off the GPU: there it is slower than fp32 and departs from the release for
    nothing (the benchmark can still compare the two on the CPU by building its Localizer directly)."""
    check_precision(precision)
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(
            f"precision bf16 (autocast) is a GPU option and this run is on {device.type}; "
            "use precision: fp32 (the release's), or run on a CUDA device"
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for "bf16"; nothing (plain fp32) for "fp32"."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
