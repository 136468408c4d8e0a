"""The dataset's per-channel mean and std, as the MWM fork normalises its inputs (`utils/custom.py`).

The fork resizes each of the first 1000 images (file names sorted) to the input size, takes per image the
channel means and the channel standard deviations (population, NumPy's default) and averages both over the
images. ImageNet's statistics are the alternative (SparK; the fork's fallback when the computation fails).
In a corpus sorted by path the first 1000 images are the first few series of the first few patients, so the
data module draws a seeded random sample across the training items instead (`sample="random"`, the departure in
docs/FIDELITY.md); `sample="first"` is the fork's rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_info
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Subset


@dataclass(frozen=True)
class PixelStats:
    """Per-channel normalisation statistics and where they come from ('dataset' or 'imagenet')."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    n_images: int = 0

    @classmethod
    def imagenet(cls) -> PixelStats:
        return cls(tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), "imagenet")

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


def dataset_stats(
    dataset: Dataset,
    n_images: int = 1000,
    batch_size: int = 32,
    num_workers: int = 0,
    sample: Literal["first", "random"] = "first",
    seed: int = 0,
) -> PixelStats:
    """Mean over `n_images` items of `dataset` of each image's channel means and channel stds: the first ones
    (`sample="first"`, the fork) or a random sample without replacement seeded by `seed` ("random").

    `dataset` yields dicts with `image` (C,H,W) already resized to a common size (deterministically: the
    statistics are a function of the data only). Computed in float64.
    """
    total = len(dataset)  # type: ignore[arg-type]
    n = min(n_images, total)
    if n == 0:
        raise ValueError("no images to compute the normalisation statistics from")
    if sample not in ("first", "random"):
        raise ValueError(f"sample must be 'first' or 'random', got {sample!r}")
    if sample == "random" and n < total:
        indices = sorted(np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())
    else:
        indices = list(range(n))
    what = f"a random sample (seed {seed}) of {n} of {total}" if sample == "random" else f"the first {n}"
    rank_zero_info(f"pixel statistics: reading {what} images")
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
    mean_sum = std_sum = 0.0
    for batch in loader:
        img_bchw = batch["image"].to(torch.float64)
        mean_sum = mean_sum + img_bchw.mean(dim=(2, 3)).sum(0)
        std_sum = std_sum + img_bchw.std(dim=(2, 3), correction=0).sum(0)
    mean, std = (mean_sum / n).tolist(), (std_sum / n).tolist()
    if min(std) < 1e-6:
        raise ValueError(f"{what} images have no contrast (channel stds {std}): cannot normalise by them")
    rank_zero_info(f"pixel statistics of {n} images: mean {mean}, std {std}")
    return PixelStats(tuple(mean), tuple(std), "dataset", n)
