"""Does a localizer's CLIP know whether a slice holds its target? The precondition of the volume-aware presence rule.

    python bench/clip_presence.py --corpus V0 --config SMALL/localize.yaml [--modality MR]
                                  [--zeroshot configs/zeroshot/sample.yaml --classes tumor no_tumor]

For the `--modality` items of a corpus with truth (`truth/<item_id>.png`; a slice is positive when its mask is not
empty), prints ONE JSON object of AUROCs (0.5 = chance, the positives' scores against the negatives'):

- `presence_auroc`: the presence score `localize` computes for `volume: series` (the image-text cosine similarity,
  highest over the config's prompts of the modality), over all the items;
- `within_series_auroc`: the same score within each series (a NIfTI volume or multi-frame file; one-file-per-slice
  series are not grouped here) that has both positive and negative slices, mean over those series: what the rule,
  which scales the score to its series, needs close to 1;
- `zeroshot_auroc` (with `--zeroshot`): cosine to the first of `--classes`' prompt ensemble minus cosine to the
  second (`finetune zeroshot`'s class embeddings), over all the items.

Images are read and scaled as `finetune zeroshot` reads them (default intensity rules, the CLIP's own preprocessing).
Seconds on a CPU, against about 12 minutes for bench/volume_rule.py's two localization runs: a CLIP whose
`within_series_auroc` is far from 1 cannot make the rule meet its target (docs/BENCHMARKS.md).
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

# run as `python bench/clip_presence.py`: bench/localize.py would shadow the `localize` package
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from data.clip_folder import load_open_clip
from data.intensity import IntensityConfig
from data.splits import patient_groups
from finetune.classify import labelled_table
from finetune.data import LabelledImages
from finetune.zeroshot import ClipImage, ZeroShotPrompts, class_embeddings
from localize.config import LocalizeConfig
from localize.prompts import PromptConfig
from localize.saliency.common import encode_prompts, image_text_scores


def auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counting one half; None without both classes."""
    positive, score = np.asarray(positive, dtype=bool), np.asarray(score, dtype=np.float64)
    pos, neg = score[positive], score[~positive]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def within_series_auroc(positive: np.ndarray, score: np.ndarray, series: Sequence) -> tuple[float | None, int]:
    """(mean of `auroc` over the series holding both classes, how many such series)."""
    series = np.asarray(series, dtype=object)
    values = [auroc(positive[series == s], score[series == s]) for s in dict.fromkeys(series)]
    values = [v for v in values if v is not None]
    return (float(np.mean(values)) if values else None), len(values)


def _truth_positive(corpus: Path, item_ids: Sequence[str]) -> np.ndarray:
    masks = [cv2.imread(str(corpus / "truth" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in item_ids]
    missing = [i for i, m in zip(item_ids, masks, strict=True) if m is None]
    if missing:
        raise FileNotFoundError(f"{corpus / 'truth' / (missing[0] + '.png')}: no truth mask ({len(missing)} missing)")
    return np.array([bool(m.any()) for m in masks])


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a corpus with labels.csv and truth/<item_id>.png")
    parser.add_argument("--config", type=Path, required=True, help="localize config: its CLIP and prompts")
    parser.add_argument("--modality", default="MR", help="score the items of this modality (default MR)")
    parser.add_argument("--zeroshot", type=Path, help="zero-shot prompts YAML (configs/zeroshot/) for zeroshot_auroc")
    parser.add_argument("--classes", nargs=2, default=("tumor", "no_tumor"), help="positive, negative class")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a few dozen small images: more threads only wait on each other on a busy machine

    try:  # a bad corpus or config: one line naming the file, as `finetune zeroshot` says it
        config = LocalizeConfig.load(args.config)
        table = labelled_table(args.corpus, "labels.csv", [args.modality], 0)
        positive = _truth_positive(args.corpus, table["item_id"].tolist())
        clip = load_open_clip(config.clip, "cpu")
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        parser.exit(2, f"error: {err}\n")
    classes = sorted(table["label"].unique())
    images = LabelledImages(args.corpus, table, classes, ClipImage(clip.preprocess), IntensityConfig())
    x_b3hw = torch.stack([images[i][0] for i in range(len(images))])
    model = clip.model
    prompts = PromptConfig.load(config.prompts).for_modality(args.modality).prompts
    presence = image_text_scores(model, x_b3hw, encode_prompts(model, clip.tokenizer, prompts)).max(1).values.numpy()
    within, n_series = within_series_auroc(positive, presence, patient_groups(table))
    result = {
        "corpus": str(args.corpus),
        "clip": config.clip,
        "modality": args.modality,
        "items": int(len(table)),
        "positives": int(positive.sum()),
        "prompts": list(prompts),
        "presence_auroc": auroc(positive, presence),
        "within_series_auroc": within,
        "series_with_both": n_series,
    }
    if args.zeroshot is not None:
        classes_kd = class_embeddings(model, clip.tokenizer, ZeroShotPrompts.read(args.zeroshot), args.classes)
        image_bd = torch.nn.functional.normalize(model.encode_image(x_b3hw).float(), dim=-1)
        cos_bk = image_bd @ classes_kd.T
        result["zeroshot_auroc"] = auroc(positive, (cos_bk[:, 0] - cos_bk[:, 1]).numpy())
        result["zeroshot_classes"] = list(args.classes)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
