"""The machine a GPU run ran on: GPU model and memory, driver, Python, torch/CUDA/cuDNN, the packages the parts use
(and which of them are missing: the first thing to read when a part failed on a fresh machine)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess

# distribution name -> module the parts import (the GPU machine's image lacks some: bench/gpu_wheels.txt)
PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "open_clip_torch": "open_clip",
    "segment-anything": "segment_anything",
    "transformers": "transformers",
    "pytorch-lightning": "pytorch_lightning",
    "jsonargparse": "jsonargparse",
    "zarr": "zarr",
    "numcodecs": "numcodecs",
    "pydicom": "pydicom",
    "nibabel": "nibabel",
    "numpy": "numpy",
    "opencv-python-headless": "cv2",
    "pytest": "pytest",
}
TARGET_GPUS = ("H100", "H200")  # the targets are stated for these


def environment() -> dict:
    """Versions and device, without loading the benchmarks' models."""
    import torch

    cuda = torch.cuda.is_available()
    device = {"name": "cpu", "count": 0}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        device = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "driver": nvidia_smi("driver_version"),
        }
    versions, missing = {}, []
    for dist, module in PACKAGES.items():
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
        if importlib.util.find_spec(module) is None:
            missing.append(dist)
    return {
        "device": device["name"],
        "gpu": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu_count": _cpu_count(),
        "packages": versions,
        "missing_packages": missing,
    }


def targets_apply(info: dict, dry_run: bool) -> bool:
    """The issue's targets are for real sizes on an H100/H200."""
    return not dry_run and any(gpu in info["device"] for gpu in TARGET_GPUS)


def nvidia_smi(field: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
