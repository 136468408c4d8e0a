"""`python -m localize tune --corpus DIR --config FILE --out TUNED.yaml`: choose M2IB's layer and beta, the
binarisation threshold and each modality's prompt on a sample of the corpus, without masks.

The authors tuned these on ground-truth masks; here a criterion needs none (`localize.tune_criteria`). The default,
**prompt agreement**: a modality's prompts are paraphrases of one target, so at a good (layer, beta, threshold)
their ROIs coincide; each prompt scores the mean IoU of its ROIs with the other prompts' (a modality needs two
prompts or more). `--criterion` takes the others: `evidence` (deletion evidence), `crop`, `seed_agreement`. Per
grid triple each modality's best prompt by the criterion; the triple with the best mean over modalities is chosen.
On the small models it tracked Dice best of the four pooled over modalities (Spearman 0.6), but within a modality
none of them tracks Dice (docs/MODELS.md): keep the release's values where truth is missing and much is at stake.

With truth (`DIR/truth/<item_id>.png`, as the sample corpus has) the report also gives each grid point's Dice,
the Dice-optimal choice beside the criterion's, and each computed criterion's rank correlation (Spearman) with
Dice over the grid (`--criteria` adds criteria to compute and report).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm import tqdm

from configs import resolve_config
from data.intensity import IntensityConfig
from data.manifest import scan_corpus
from data.masks import read_mask_image
from data.readers import load_image
from localize.clip_loader import load_biomedclip
from localize.config import LocalizeConfig, anchor_paths, relative_paths
from localize.evaluate import dice_iou
from localize.prompts import PromptConfig
from localize.refine import refine_batch
from localize.saliency import build_saliency, encode_prompts
from localize.sam_loader import load_sam
from localize.tune_criteria import CRITERIA, crop_contrast, deletion_evidence, iou_with_others, mean_pairwise_iou

GRID_KEYS = ("layer", "beta", "threshold")
DEFAULT_CRITERION = "prompt_agreement"


class Tuner:
    """The models of a config and a sample of a corpus; `grid_rows` scores every grid point on them."""

    def __init__(self, config: LocalizeConfig, corpus: Path, per_modality: int, seed: int = 0) -> None:
        self.config, self.corpus, self.seed = config, Path(corpus), seed
        self.clip = load_biomedclip(config.clip, "cpu")
        self.sam = load_sam(config.sam, "cpu") if config.refine.use_sam else None
        self.prompts = PromptConfig.load(config.prompts)
        manifest, _ = scan_corpus(self.corpus, progress=False)
        rng = np.random.default_rng(seed)
        intensity = IntensityConfig(**config.intensity)
        self.items: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        for modality, group in manifest.groupby("modality", sort=True):
            rows = group.iloc[np.sort(rng.permutation(len(group))[:per_modality])]
            images = [
                np.asarray(load_image(self.corpus, r.path, int(r.frame), modality, intensity), np.float32)
                for r in rows.itertuples()
            ]
            self.items[modality] = (list(rows.item_id), images)

    def rois(self, modality: str, prompt: str, saliency: dict[str, Any] | None = None) -> list[np.ndarray]:
        """The config's ROIs (bool (H, W)) of the sampled `modality` images for one `prompt`."""
        _, images = self.items[modality]
        text_1d = encode_prompts(self.clip.model, self.clip.tokenizer, [prompt])
        method = build_saliency(saliency or self.config.saliency)
        torch.manual_seed(self.seed)  # M2IB's noise: the same draw for every prompt, so only the wording differs
        maps_n1hw = method(self.clip.model, self.clip.preprocess(images, torch.device("cpu")), text_1d)
        refined = refine_batch([m[0].float() for m in maps_n1hw], images, self.sam, self.config.refine)
        return [r.roi_hw.astype(bool) for r in refined]

    def grid_rows(
        self, grid: dict[str, list], truth_dir: Path | None, progress: bool = True, criteria: tuple[str, ...] = CRITERIA
    ) -> pd.DataFrame:
        """One row per (modality, prompt, layer, beta, threshold): each criterion's mean over the sampled images
        (`localize.tune_criteria`), and the mean Dice with truth."""
        rows = []
        total = sum(len(self.prompts.for_modality(m).prompts) for m in self.items) * len(grid["layer"])
        bar = tqdm(total=total * len(grid["beta"]), desc="tune", unit="map set", disable=not progress)
        for modality, (item_ids, images) in self.items.items():
            truths = [read_mask_image(truth_dir / f"{i}.png") for i in item_ids] if truth_dir else None
            images_b3hw = self.clip.preprocess(images, torch.device("cpu"))
            by_point: dict[tuple, list[list[np.ndarray]]] = {}  # (layer, beta, threshold) -> ROIs of each prompt
            for prompt in self.prompts.for_modality(modality).prompts:
                text_1d = encode_prompts(self.clip.model, self.clip.tokenizer, [prompt])
                for layer, beta in itertools.product(grid["layer"], grid["beta"]):
                    point = {**self.config.saliency, "layer": layer, "beta": beta}
                    draws = [self._maps(point, images_b3hw, text_1d)]
                    if "seed_agreement" in criteria and point.get("method", "m2ib") == "m2ib":  # M2IB's next seed
                        draws.append(self._maps({**point, "seed": int(point.get("seed", 0)) + 1}, images_b3hw, text_1d))
                    bar.update()
                    for threshold in grid["threshold"]:
                        refine = replace(self.config.refine, threshold=threshold)
                        rois, *others = [
                            [r.roi_hw.astype(bool) for r in refine_batch(maps, images, self.sam, refine)]
                            for maps in draws
                        ]
                        by_point.setdefault((layer, beta, threshold), []).append(rois)
                        row = {"modality": modality, "prompt": prompt, "layer": layer, "beta": beta}
                        row["threshold"] = threshold
                        if "evidence" in criteria:
                            row["evidence"] = float(np.mean(deletion_evidence(self.clip, images, rois, text_1d[0])))
                        if "crop" in criteria:
                            row["crop"] = float(np.mean(crop_contrast(self.clip, images, rois, text_1d[0])))
                        if others:
                            row["seed_agreement"] = float(np.mean(mean_pairwise_iou([rois, *others])))
                        if truths is not None:
                            row["dice"] = float(np.mean([dice_iou(r, t)[0] for r, t in zip(rois, truths, strict=True)]))
                        rows.append(row)
            if "prompt_agreement" in criteria:  # each prompt's ROIs against the other prompts' at the same point
                prompts = list(self.prompts.for_modality(modality).prompts)
                for row in rows:
                    if row["modality"] == modality:
                        point = by_point[(row["layer"], row["beta"], row["threshold"])]
                        agreement = iou_with_others(point, prompts.index(row["prompt"]))
                        row["prompt_agreement"] = float(np.mean(agreement))
        bar.close()
        return pd.DataFrame(rows)

    def _maps(self, saliency: dict[str, Any], images_b3hw: torch.Tensor, text_1d: torch.Tensor) -> list[torch.Tensor]:
        torch.manual_seed(self.seed)  # any torch-random method: the same draw at every grid point and prompt
        return [m[0].float() for m in build_saliency(saliency)(self.clip.model, images_b3hw, text_1d)]


def choose(table: pd.DataFrame, score: str) -> dict[str, Any]:
    """Per grid triple each modality's best prompt by `score`; the triple with the best mean over modalities.
    A modality the score cannot judge (NaN: prompt agreement with one prompt) counts 0 at every triple."""
    table = table.assign(**{score: table[score].fillna(0.0)})
    best = table.loc[table.groupby(["modality", *GRID_KEYS])[score].idxmax()]
    means = best.groupby(list(GRID_KEYS))[score].mean()
    triple = dict(zip(GRID_KEYS, means.idxmax(), strict=True))
    chosen = best[np.logical_and.reduce([best[k] == v for k, v in triple.items()])]
    return {
        **{k: v.item() if hasattr(v, "item") else v for k, v in triple.items()},
        "prompts": dict(zip(chosen.modality, chosen.prompt, strict=True)),
        score: float(means.max()),
    }


def spearman(table: pd.DataFrame, score: str = "evidence") -> dict[str, float]:
    """Rank correlation of `score` and Dice over the grid, per modality and over all rows."""
    corr = {m: float(g[score].corr(g.dice, method="spearman")) for m, g in table.groupby("modality")}
    return corr | {"all": float(table[score].corr(table.dice, method="spearman"))}


def tuned_config(raw: dict[str, Any], choice: dict[str, Any], prompts: PromptConfig) -> dict[str, Any]:
    """The input config with the chosen layer, beta, threshold and one prompt per modality."""
    out = copy.deepcopy(raw)
    out["saliency"] = {**out.get("saliency", {"method": "m2ib"}), "layer": choice["layer"], "beta": choice["beta"]}
    out["refine"] = {**(out.get("refine") or {}), "threshold": choice["threshold"]}
    table = prompts.to_dict()
    for modality, prompt in choice["prompts"].items():
        key = modality if modality in table["modalities"] else "default"
        table["modalities"][modality] = {**table["modalities"].get(key, {}), "prompts": [prompt]}
    out["prompts"] = table
    return out


def main(argv: list[str] | None = None) -> int:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m localize tune",
        description=" ".join(summary.split()),
        epilog=details + "\nWrites OUT (the tuned config), OUT's .grid.csv (every grid point) and .report.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--corpus", required=True, type=Path, help="the corpus folder to sample images from")
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        help="the localize YAML to start from (its models, prompts: prompt_agreement needs 2+ prompts a modality)",
    )
    parser.add_argument("--out", type=Path, help="tuned config to write (default: CONFIG's name + .tuned.yaml)")
    parser.add_argument("--truth", type=Path, help="truth masks for the report (default: CORPUS/truth if present)")
    parser.add_argument("--per-modality", type=int, default=6, help="images per modality (default 6)")
    parser.add_argument("--layers", type=int, nargs="+", help="M2IB layers (default: 2 below .. the config's)")
    parser.add_argument(
        "--betas", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="M2IB betas (default 0.01 0.1 1.0)"
    )
    parser.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.2, 0.3, 0.5],
        help="binarisation thresholds of the saliency map (default 0.2 0.3 0.5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the sample of images (default 0)")
    parser.add_argument(
        "--criterion", choices=CRITERIA, default=DEFAULT_CRITERION, help=f"what chooses (default {DEFAULT_CRITERION})"
    )
    parser.add_argument(
        "--criteria", nargs="+", choices=CRITERIA, help="criteria to compute and report (default: only --criterion)"
    )
    args = parser.parse_args(argv)
    criteria = tuple(dict.fromkeys([args.criterion, *(args.criteria or [])]))
    config = LocalizeConfig.load(args.config)
    layer = int(config.saliency.get("layer", 7))
    grid = {"layer": args.layers or [layer - 2, layer - 1, layer], "beta": args.betas, "threshold": args.thresholds}
    truth = args.truth or (args.corpus / "truth" if (args.corpus / "truth").is_dir() else None)
    table = Tuner(config, args.corpus, args.per_modality, args.seed).grid_rows(grid, truth, criteria=criteria)
    report: dict[str, Any] = {"criterion": args.criterion, "grid": grid, "chosen": choose(table, args.criterion)}
    if truth is not None:
        report["dice_optimal"] = choose(table, "dice")
        report["spearman_with_dice"] = {c: spearman(table, c) for c in criteria}
        chosen = report["chosen"]
        mask = np.logical_and.reduce([table[k] == chosen[k] for k in GRID_KEYS])
        picked = table[mask & table.prompt.isin(chosen["prompts"].values())]
        report["chosen"]["dice"] = float(picked.groupby("modality").dice.max().mean())
    out = args.out or args.config.with_name(args.config.stem + ".tuned.yaml")
    config_path = resolve_config(args.config)  # a shipped config by name too; its relative paths made absolute:
    raw = anchor_paths(yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}, config_path.resolve().parent)
    # ... and written relative to OUT's folder, as a config file's paths are read (no machine's folders in it)
    tuned = relative_paths(tuned_config(raw, report["chosen"], PromptConfig.load(config.prompts)), out.resolve().parent)
    out.write_text("# written by `python -m localize tune`\n" + yaml.safe_dump(tuned, sort_keys=False))
    table.to_csv(out.with_suffix(".grid.csv"), index=False)
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"tune: wrote {out} (+ .grid.csv, .report.json)", file=sys.stderr)
    return 0
