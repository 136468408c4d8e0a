"""Classification image pipelines (torchvision v2 on float images in [0, 1]), normalised with the statistics the
backbone was pretrained with: timm's ImageNet mean / std unless given (an export's, `finetune.backbone.
pretrained_statistics`: OpenAI's CLIP statistics for a MaskedCLIP encoder).

Training policies:
  spark: SparK downstream_imagenet/data.py for images under 384 px (timm create_transform): random-resized crop
         (scale 0.08-1, bicubic), horizontal flip, TrivialAugmentWide, normalise, random erasing p 0.25 with
         per-pixel noise. TrivialAugment's geometric ops run bilinear here (torchvision's tensor kernels have no
         bicubic); SparK applies them to PIL images bicubic.
  mae:   MAE main_linprobe.py: random-resized crop (scale 0.08-1, bicubic) + horizontal flip.
  light: random-resized crop (scale 0.5-1) + horizontal flip: milder, for small medical images where a 0.08 crop
         can miss the finding.
  none:  the evaluation pipeline.
Evaluation: resize the shorter side to size / eval_crop and centre-crop `size` (SparK crop_pct 0.95, MAE 0.875);
eval_crop 1 resizes the whole image to size x size (nothing cut off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

Policy = Literal["spark", "mae", "light", "none"]
BICUBIC = v2.InterpolationMode.BICUBIC


Stats = tuple[Sequence[float], Sequence[float]]


def normalize(stats: Stats | None = None) -> v2.Normalize:
    """(mean, std) per channel; None: ImageNet's, as timm's models and SparK's fine-tuning expect."""
    mean, std = stats if stats is not None else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return v2.Normalize(list(mean), list(std))


def classify_transform(
    policy: Policy, size: int, train: bool, eval_crop: float = 1.0, stats: Stats | None = None
) -> v2.Transform:
    """The image pipeline of `policy` for training, or the evaluation pipeline (see the module docstring), ending
    with `normalize(stats)`."""
    if policy not in ("spark", "mae", "light", "none"):
        raise ValueError(f"unknown augmentation policy {policy!r}; use 'spark', 'mae', 'light' or 'none'")
    if not 0 < eval_crop <= 1:
        raise ValueError(f"eval_crop must be in (0, 1], got {eval_crop}")
    if not train or policy == "none":
        if eval_crop == 1:
            return v2.Compose([v2.Resize((size, size), interpolation=BICUBIC, antialias=True), normalize(stats)])
        resize = v2.Resize(int(size / eval_crop), interpolation=BICUBIC, antialias=True)
        return v2.Compose([resize, v2.CenterCrop(size), normalize(stats)])
    scale = (0.5, 1.0) if policy == "light" else (0.08, 1.0)
    crop = [v2.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC, antialias=True), v2.RandomHorizontalFlip()]
    if policy != "spark":
        return v2.Compose([*crop, normalize(stats)])
    trivial = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR)
    return v2.Compose([*crop, trivial, normalize(stats), v2.RandomErasing(p=0.25, value="random")])
