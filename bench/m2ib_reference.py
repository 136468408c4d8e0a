"""Our M2IB (release preset) against the authors' own M2IB code, same tiny CLIP, same noise, interleaved in one run.

Prints one JSON object. The authors' code (MedCLIP-SAMv2 `saliency_maps/scripts`: iba.py, methods.py, utils.py,
github HealthX-Lab/MedCLIP-SAMv2; MWM's `text2region/saliency_maps/scripts` is the same code) is fetched by the user
and never copied into this repository; it runs unmodified through an adapter:

    python bench/m2ib_reference.py --ref-dir /tmp/m2ib/saliency_maps [--images 2] [--layer 7] [--threads 1]

Without `--ref-dir` (or with a folder lacking scripts/iba.py) it prints `{"skipped": reason}` and exits 0.

The model: an open_clip CLIP of BiomedCLIP's layout at toy width (timm ViT, `--depth` blocks of `--width`
channels, 224 px, patch 16: BiomedCLIP's 14 x 14 grid and depth 12; a one-layer text transformer), random weights.
The adapter (`HFLikeClip`) shows the authors' code the Hugging Face interface it expects: `vision_model` with
`encoder.layers` (each block's output a 1-tuple, as HF layers return) and `hidden_states`, `get_image_features`,
`get_text_features`; it borrows the CLIP's own modules (same weights). The authors' noise comes from the global
generator (`normal_` per step on the (10, T, C) batch); seeding it with our `seed` right before their call gives
the draws our seeded generator gives, so the maps must agree to float rounding (`max_abs_diff`, tolerance
`--tolerance`, default 1e-5 on [0, 1] maps).

Timed: theirs per image (`vision_heatmap_iba`, one prompt: the release's loop), ours per image (one call per
image) and ours batched (all images in one call), in a rotating order; `speedup_*` = their time / ours.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import statistics
import time
import types

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from localize.saliency import M2IBSaliency


def tiny_clip(width: int, depth: int, seed: int = 0) -> open_clip.CLIP:
    """open_clip CLIP with a timm ViT (224 px, patch 16, `depth` blocks of `width`), token pooling, linear head."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(timm_model_name="test_vit", timm_pool="", timm_proj="linear", image_size=224),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=32, width=32, heads=2, layers=1),
    )
    model.visual.trunk = VisionTransformer(
        img_size=224, patch_size=16, embed_dim=width, depth=depth, num_heads=2, mlp_ratio=4.0, num_classes=0
    )
    model.visual.head.proj = nn.Linear(width, 16, bias=False)
    return model.eval()


class _TupleLayer(nn.Module):
    """A timm block returning (out,), as a Hugging Face encoder layer does (the authors' bottleneck expects it)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.block(x),)


class _VisionModel(nn.Module):
    def __init__(self, clip: open_clip.CLIP) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_TupleLayer(b) for b in clip.visual.trunk.blocks)
        self._clip = (clip,)  # borrowed, not a submodule: the authors' layer search sees `encoder.layers` only

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> dict:
        clip = self._clip[0]
        trunk = clip.visual.trunk
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(pixel_values))))
        hidden = [x]
        for layer in self.encoder.layers:
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out
            hidden.append(x)
        pooled = clip.visual.head(trunk.forward_head(trunk.norm(x)))
        return {"pooler_output": pooled, "hidden_states": hidden if output_hidden_states else None}


class HFLikeClip(nn.Module):
    """The Hugging Face CLIP interface the authors' M2IB code calls, over an open_clip CLIP's own modules."""

    def __init__(self, clip: open_clip.CLIP) -> None:
        super().__init__()
        self.vision_model = _VisionModel(clip)
        self.text_model = nn.Module()
        self._clip = (clip,)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values)["pooler_output"]

    def get_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._clip[0].encode_text(input_ids)


def reference_dir(ref_dir: str | None) -> Path | None:
    """The folder holding `scripts/iba.py`: `ref_dir` or its `saliency_maps/` subfolder; None if neither."""
    if not ref_dir:
        return None
    for folder in (Path(ref_dir), Path(ref_dir) / "saliency_maps", Path(ref_dir) / "text2region" / "saliency_maps"):
        if (folder / "scripts" / "iba.py").is_file() and (folder / "scripts" / "methods.py").is_file():
            return folder
    return None


def load_reference(folder: Path) -> types.ModuleType:
    """The authors' `scripts.methods` (it imports `scripts.iba` and `scripts.utils` by that package name)."""
    sys.path.insert(0, str(folder))
    import scripts.methods as methods  # noqa: PLC0415  (found only after the path insert)

    return methods


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ref-dir",
        default=os.environ.get("M2IB_REF_DIR"),
        help="MedCLIP-SAMv2's saliency_maps/ folder (or the repository), fetched; default $M2IB_REF_DIR",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when present; the authors' code picks it too)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--layer", type=int, default=7, help="the release's --vlayer")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max |map difference| counted as equal")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    folder = reference_dir(args.ref_dir)
    if folder is None:
        why = "no --ref-dir given" if not args.ref_dir else f"{args.ref_dir}: no scripts/iba.py there"
        result = {"skipped": f"{why}; fetch github.com/HealthX-Lab/MedCLIP-SAMv2 and pass its saliency_maps/ folder"}
        print(json.dumps(result))
        return result
    torch.set_num_threads(args.threads)
    methods = load_reference(folder)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = torch.device("cuda" if cuda else "cpu")
    clip = tiny_clip(args.width, args.depth).to(device)
    adapter = HFLikeClip(clip)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.images, 3, 224, 224, generator=gen).to(device)
    tokens = torch.randint(1, 32, (1, 8), generator=gen).to(device)
    with torch.no_grad():
        text_pd = F.normalize(clip.encode_text(tokens).float(), dim=-1)
    ours = M2IBSaliency.from_preset("release", layer=args.layer, beta=args.beta, steps=args.steps, seed=args.seed)

    def theirs_one(i: int) -> torch.Tensor:
        torch.manual_seed(args.seed)  # their noise: normal_ on the global generator, (10, T, C) per step
        vmap = methods.vision_heatmap_iba(
            tokens, images[i : i + 1], adapter, args.layer, args.beta, 1.0, lr=1, train_steps=args.steps, progbar=False
        )
        for p in clip.parameters():  # their backward filled the weights' .grad (work ours does not do)
            p.grad = None
        return torch.as_tensor(vmap).to(device)

    def theirs() -> list[torch.Tensor]:
        return [theirs_one(i) for i in range(args.images)]

    def ours_each() -> list[torch.Tensor]:
        return [ours(clip, images[i : i + 1], text_pd)[0, 0] for i in range(args.images)]

    def ours_batched() -> list[torch.Tensor]:
        return list(ours(clip, images, text_pd)[:, 0])

    runs = {"theirs": theirs, "ours_per_image": ours_each, "ours_batched": ours_batched}
    times: dict[str, list[float]] = {k: [] for k in runs}
    maps: dict[str, list[torch.Tensor]] = {}
    names = list(runs)
    for r in range(args.repeats + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            maps[name] = runs[name]()
            if cuda:
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - t0)
        print(f"[m2ib_reference] round {r + 1}/{args.repeats + 1}", file=sys.stderr, flush=True)

    # their maps are interpolated to 224 whatever the input; ours to the input size, here 224 as well
    diff = {
        name: max((a.float() - b.float()).abs().max().item() for a, b in zip(maps[name], maps["theirs"], strict=True))
        for name in ("ours_per_image", "ours_batched")
    }
    med = {k: statistics.median(v) / args.images for k, v in times.items()}
    result = {
        "maps_equal": all(d <= args.tolerance for d in diff.values()),
        "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diff.items()},
        "tolerance": args.tolerance,
        "theirs_s_per_image": round(med["theirs"], 4),
        "ours_per_image_s_per_image": round(med["ours_per_image"], 4),
        "ours_batched_s_per_image": round(med["ours_batched"], 4),
        "speedup_per_image": round(med["theirs"] / med["ours_per_image"], 3),
        "speedup_batched": round(med["theirs"] / med["ours_batched"], 3),
        "adapter": "HFLikeClip: vision_model.encoder.layers (1-tuples), hidden_states, get_image/text_features",
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({args.threads} threads)",
        "config": {
            "images": args.images,
            "width": args.width,
            "depth": args.depth,
            "layer": args.layer,
            "beta": args.beta,
            "steps": args.steps,
            "noise_samples": ours.noise_samples,
            "seed": args.seed,
            "repeats": args.repeats,
            "ref_dir": str(folder),
            "torch": torch.__version__,
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
