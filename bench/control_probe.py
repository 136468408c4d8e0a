"""Diagnostic for the positive control (docs/STUDY.md): is the class in the frozen encoder's features at the
lesion, and does global pooling drown it? Logistic probes trained on the train split, scored on the test split:
global average pool vs the average over the truth ROI's cells on the encoder grid, for a randomly initialised
encoder (one per --init-seeds) and each arm's backbone of a study (seed 0, or each of --study-seeds), and any
--extra NAME=BACKBONE.pt (e.g. an export of an unfinished run's last.ckpt); with --recalibrate-bn also after
re-estimating BatchNorm statistics on the dense training images. Prints one JSON object.

    python bench/control_probe.py --corpus work/experiment/control_corpus_64 \
        --study work/experiment/positive_control_64 --backbone resnet10_narrow_os8
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json

import cv2
import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F

import pretrain.cpu_backbones  # noqa: F401  (registers resnet10_narrow_os16 / _os8)
from pretrain.export import input_statistics, load_backbone, read_sidecar

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--corpus", type=Path, required=True, help="the control corpus (labels.csv, truth/)")
parser.add_argument("--study", type=Path, help="a study's output folder (runs/<arm>/s0/pretrain/backbone.pt)")
parser.add_argument("--backbone", default="resnet10_narrow_os8", help="the randomly initialised encoder's name")
parser.add_argument(
    "--study-seeds", type=int, nargs="+", default=[0], help="the study's seeds whose backbones to probe (s0: name)"
)
parser.add_argument("--init-seeds", type=int, nargs="+", default=[0], help="seeds of the random initialisations")
parser.add_argument(
    "--recalibrate-bn",
    action="store_true",
    help="besides, re-estimate every BatchNorm's running statistics on the dense (unmasked) training images "
    "before probing (keys '*_bn'): pretraining saw masked inputs only",
)
parser.add_argument("--extra", nargs="*", default=[], help="more backbones to probe, NAME=PATH (pretrain export)")
args = parser.parse_args()
torch.set_num_threads(1)
root = args.corpus
labels = pd.read_csv(root / "labels.csv")
classes = sorted(labels.label.unique())


def load(split):
    t = labels[labels.split == split]
    img = np.stack([cv2.imread(str(root / p), cv2.IMREAD_GRAYSCALE) for p in t.path]).astype(np.float32) / 255
    roi = np.stack([cv2.imread(str(root / "truth" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) > 0 for i in t.item_id])
    y = np.array([classes.index(c) for c in t.label])
    return (
        torch.from_numpy(img)[:, None].expand(-1, 3, -1, -1),
        torch.from_numpy(roi)[:, None].float(),
        torch.from_numpy(y),
    )


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def statistics(path: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mean, std) the backbone was pretrained with (its export's sidecar, as `finetune` normalises), else
    ImageNet's: a pretrained encoder's BatchNorm statistics are those of its own input normalisation."""
    mean, std = (input_statistics(read_sidecar(path)) if path is not None else None) or IMAGENET
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def features(model, img, roi, stats):
    mean, std = stats
    g, r = [], []
    for i in range(0, len(img), 100):
        f = model.forward_features((img[i : i + 100] - mean) / std)
        cells = F.interpolate(roi[i : i + 100], size=f.shape[-2:], mode="area") > 0
        g.append(f.mean((2, 3)))
        r.append((f * cells).sum((2, 3)) / cells.sum((2, 3)).clamp_min(1))
    return torch.cat(g), torch.cat(r)


@torch.no_grad()
def recalibrate_bn(model, img, stats) -> None:
    """Running statistics of every BatchNorm as the plain average over the training images, seen densely."""
    mean, std = stats
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for i in range(0, len(img), 100):
        model.forward_features((img[i : i + 100] - mean) / std)
    model.eval()


def probe(xtr, ytr, xte, yte):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], len(classes))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xtr), ytr) + 1e-3 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float((lin(xte).argmax(1) == yte).float().mean())


tr, te = load("train"), load("test")
out = {}
arms: dict[str, tuple[int, Path | None]] = {f"random_init_s{s}": (s, None) for s in args.init_seeds}
if args.study is not None:
    for seed in args.study_seeds:
        found = sorted((args.study / "runs").glob(f"*/s{seed}/pretrain/backbone.pt"))
        arms |= {f"{p.parents[2].name}_s{seed}" if seed else p.parents[2].name: (seed, p) for p in found}
arms |= {name: (0, Path(path)) for name, path in (item.split("=", 1) for item in args.extra)}
for name, (seed, path) in arms.items():
    torch.manual_seed(seed)
    model = timm.create_model(args.backbone, num_classes=0) if path is None else load_backbone(path)
    model.eval()
    stats = statistics(path)
    gtr, rtr = features(model, *tr[:2], stats)
    gte, rte = features(model, *te[:2], stats)
    out[name] = {"global_pool_acc": probe(gtr, tr[2], gte, te[2]), "roi_pool_acc": probe(rtr, tr[2], rte, te[2])}
    if args.recalibrate_bn:
        recalibrate_bn(model, tr[0], stats)
        gtr, rtr = features(model, *tr[:2], stats)
        gte, rte = features(model, *te[:2], stats)
        out[name] |= {
            "global_pool_acc_bn": probe(gtr, tr[2], gte, te[2]),
            "roi_pool_acc_bn": probe(rtr, tr[2], rte, te[2]),
        }
    print(name, out[name], file=sys.stderr, flush=True)
print(json.dumps({"train": len(tr[2]), "test": len(te[2]), "chance": 1 / len(classes), "probes": out}))
