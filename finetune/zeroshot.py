"""Zero-shot classification by prompt similarity with any open_clip model: `python -m finetune zeroshot`.

A labelled set (the same tables and splits as `finetune classify`: a labels CSV with split column, or an ImageFolder
tree) is classified without training. Each class has phrases in a prompts YAML; every template is filled with
every phrase, their text embeddings are L2-normalised, averaged and normalised again (CLIP's prompt ensemble).
An image's class probabilities are softmax(logit_scale x cosine(image, class)). Images go through the model's
own preprocessing (`data.clip_folder.ClipPreprocess`: the whole image resized, its mean / std), as in `localize`.
Scores: accuracy (micro), AUROC / AUPRC / F1 (macro over classes, one-vs-rest on the probabilities), the
confusion matrix; written as a results JSON (`finetune.results`, task 'zeroshot', n_train 0).

Prompts YAML::

    templates: ["{}.", "a medical image showing {}."]      # '{}' takes each phrase
    classes:                                                # the label names of the set -> phrases
      tumor: ["a brain MRI with a tumor", ...]
      no_tumor: ["a normal brain MRI", ...]

The candidate classes are the labels of the evaluated set (after `--modalities`); each needs phrases.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix
from tqdm import tqdm

from data.clip_folder import ClipPreprocess, LoadedClip, load_open_clip
from data.intensity import IntensityConfig
from data.splits import patient_groups, split_counts
from finetune.classify import classification_metrics, labelled_table
from finetune.data import SPLITS, LabelledImages
from finetune.results import RunResult, write_results


@dataclass(frozen=True)
class ZeroShotPrompts:
    """Templates (each with one '{}') and, per class name, the phrases that fill them."""

    templates: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]

    @classmethod
    def read(cls, path: str | os.PathLike) -> ZeroShotPrompts:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the prompts YAML ({type(err).__name__}: {err})") from err
        if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict) or not raw["classes"]:
            raise ValueError(f"{path}: expected 'classes: {{class name: [phrases]}}' (and optionally 'templates')")
        templates = tuple(raw.get("templates") or ["{}"])
        bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
        if bad:
            raise ValueError(f"{path}: every template needs exactly one '{{}}', not {bad}")
        classes = {}
        for name, phrases in raw["classes"].items():
            phrases = [phrases] if isinstance(phrases, str) else phrases
            if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ValueError(f"{path}: class {name!r} needs one or more phrases")
            classes[str(name)] = tuple(phrases)
        return cls(templates, classes)

    def texts(self, class_name: str) -> list[str]:
        """Every template filled with every phrase of `class_name`."""
        return [t.format(p) for p in self.classes[class_name] for t in self.templates]


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, tokenizer, prompts: ZeroShotPrompts, class_names: Sequence[str]):
    """(K, D) unit class embeddings, in `class_names` order: the normalised mean of each class's normalised
    prompt embeddings."""
    missing = [name for name in class_names if name not in prompts.classes]
    if missing:
        raise ValueError(f"no prompts for classes {missing} (the prompts YAML has {sorted(prompts.classes)})")
    device = next(model.parameters()).device
    rows = []
    for name in class_names:
        text_td = model.encode_text(tokenizer(prompts.texts(name)).to(device)).float()
        mean_d = torch.nn.functional.normalize(text_td, dim=-1).mean(0)
        rows.append(torch.nn.functional.normalize(mean_d, dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def zeroshot_probs(model: torch.nn.Module, image_b3hw: torch.Tensor, classes_kd: torch.Tensor) -> torch.Tensor:
    """(B, K) class probabilities: softmax over classes of logit_scale x cosine(image embedding, class)."""
    image_bd = torch.nn.functional.normalize(model.encode_image(image_b3hw).float(), dim=-1)
    return (model.logit_scale.exp().float() * image_bd @ classes_kd.T).softmax(dim=-1)


class ClipImage:
    """A (3, H, W) image in [0, 1] -> the model's input (its own size and mean / std), picklable for workers."""

    def __init__(self, preprocess: ClipPreprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, image_3hw: torch.Tensor) -> torch.Tensor:
        return self.preprocess([image_3hw.as_subclass(torch.Tensor).permute(1, 2, 0)])[0]


def evaluate(
    clip: LoadedClip,
    images: LabelledImages,
    prompts: ZeroShotPrompts,
    class_names: Sequence[str],
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[list[int]]]:
    """Zero-shot scores of `images` (transform: `ClipImage`) -> ({accuracy, auroc, auprc, f1}, confusion)."""
    model, k = clip.model, len(class_names)
    device = next(model.parameters()).device
    classes_kd = class_embeddings(model, clip.tokenizer, prompts, class_names)
    metrics, confusion = classification_metrics(k).to(device), MulticlassConfusionMatrix(k).to(device)
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers)
    for image_b3hw, label_b in tqdm(loader, desc="zero-shot", unit="batch", disable=not progress):
        probs_bk = zeroshot_probs(model, image_b3hw.to(device), classes_kd)
        metrics.update(probs_bk, label_b.to(device))
        confusion.update(probs_bk, label_b.to(device))
    scores = {name: float(value) for name, value in metrics.compute().items()}
    return scores, confusion.compute().cpu().tolist()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune zeroshot",
        description="Zero-shot classification of a labelled set by prompt similarity with an open_clip model.",
    )
    parser.add_argument(
        "--clip", required=True, help="'local-dir:FOLDER' (e.g. a MaskedCLIP export) or 'hf-hub:ORG/REPO'"
    )
    parser.add_argument("--prompts", required=True, help="YAML of templates and class phrases (configs/zeroshot/)")
    parser.add_argument("--root", default="work/corpus", help="folder the image paths are relative to")
    parser.add_argument(
        "--labels-csv",
        default="labels.csv",
        help="labels CSV (relative: under --root); 'none' = --root is an ImageFolder tree",
    )
    parser.add_argument("--modalities", nargs="*", default=None, help="keep only these modalities, e.g. MR")
    parser.add_argument("--split", default="test", choices=[*SPLITS, "all"], help="which split to score (test)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split when the set has none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results-dir", default="work/results/finetune", help="where the results JSON goes")
    args = parser.parse_args(argv)

    labels_csv = None if str(args.labels_csv).lower() == "none" else args.labels_csv
    try:
        prompts = ZeroShotPrompts.read(args.prompts)
        # the labelled set, its classes and splits as `finetune classify` reads them (the classes: all its labels)
        table = labelled_table(Path(args.root), labels_csv, args.modalities, args.split_seed)
        class_names = sorted(table["label"].unique())
        table = table if args.split == "all" else table[table["split"] == args.split]
        if table.empty:
            raise ValueError(f"the {args.split!r} split of the labelled set is empty")
        clip = load_open_clip(args.clip, args.device)
        images = LabelledImages(args.root, table, class_names, ClipImage(clip.preprocess), IntensityConfig())
        scores, confusion = evaluate(clip, images, prompts, class_names, args.batch_size, args.num_workers, True)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        parser.exit(2, f"error: {err}\n")
    result = RunResult(
        task="zeroshot",
        backbone=_short_name(args.clip),
        init="pretrained",
        train_fraction=1.0,
        seed=args.split_seed,
        metrics=scores,
        n_train=0,
        n_test=len(table),
        config=vars(args) | {"labels_csv": labels_csv},
        init_source=clip.source["spec"],
        init_sha256=clip.source["sha256"][:16],
        subset_seed=args.split_seed,
        details={
            "clip": clip.source,
            "split": args.split,
            "splits": split_counts(patient_groups(table), table["split"]),
            "class_names": class_names,
            "templates": list(prompts.templates),
            "class_phrases": {name: list(prompts.classes[name]) for name in class_names},
            "confusion_matrix": confusion,
            "n_per_class": table["label"].value_counts().reindex(class_names, fill_value=0).tolist(),
        },
    )
    path = write_results(result, args.results_dir)
    print(", ".join(f"{name} {value:.4f}" for name, value in scores.items()))
    print(f"results: {path}")
    return 0


def _short_name(spec: str) -> str:
    """A file-name-friendly name of a CLIP spec: the folder or repository name."""
    name = re.split(r"[/:]", spec.rstrip("/"))[-1]
    return name or "clip"
