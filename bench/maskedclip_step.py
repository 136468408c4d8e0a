"""One MaskedCLIP training step against one MAE-style step of the same ViT, batch and masking.

Prints one JSON object. The MaskedCLIP step is mask sampling + `MaskedCLIP` forward (L_MIM + L_CLIP on the
paired images + L_MKD with the stop-gradient teacher) + backward + AdamW step. The baseline is the same class
with L_CLIP and L_MKD off: the image encoder on the visible patches + the image decoder, i.e. MAE. Both run in
the same process, interleaved step by step after warm-up (alternating which goes first); medians are reported.

    python bench/maskedclip_step.py [--size tiny|vit-b16] [--batch N] [--paired-share 0.5] [--steps 10]
    python bench/maskedclip_step.py --dry-run          # one untimed-quality step of each: checks that it runs
    python bench/maskedclip_step.py --breakdown        # + the CLIP image pass and D_F timed alone

`step_ratio_vs_mim` = MaskedCLIP step / MAE step; `step_flop_ratio_vs_mim` = the same for the FLOPs of one
forward + backward (matrix products, convolutions, attention: `torch.utils.flop_counter`), which no other load on
the machine moves: where the time ratio exceeds it, the extra passes are less efficient per FLOP than the MAE
step. The shares are of the MaskedCLIP step, each measured on its own in the same loop: `text_tower_share` = text
tower forward + backward on the batch's paired reports; `teacher_pass_share` = the gradient-free full-image pass
through encoder + bridge over the unpaired images from the step's shared patch embedding, to B's tokens (the
stop-gradient teacher; paired images take their target from the CLIP pass). `--breakdown` also times the CLIP
pass of the paired images through E and B (forward + backward, `clip_image_share`) and D_F (forward + backward on
fixed encoder tokens, `feature_decoder_share`), and reports `objective_passes_ratio` = (MAE step + those four
passes) / MAE step: the ratio if the step cost nothing beyond the passes its objective defines. Sizes: `tiny` is
configs/maskedclip/cpu_tiny.yaml's model (test_vit2 at 96 px, 2-layer BERT, batch 8); `vit-b16` is
configs/maskedclip/gpu_vitb16.yaml's (ViT-B/16 at 224, BERT-base, context 256, MAE decoder, batch 64).
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder is sys.path[0]; the project root must come first for its packages.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from pretrain.maskedclip.config import DecoderCfg, LossCfg, TextCfg, VisionCfg
from pretrain.maskedclip.model import MaskedCLIP
from pretrain.maskedclip.tokenizer import ReportTokenizer
from pretrain.masking import DifferentiatedMasking, RandomMasking

SIZES = {
    "tiny": dict(
        vit="test_vit2",
        input_size=96,
        embed_dim=32,
        bert=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        context_length=96,
        decoder=(64, 2, 2, 1),
        batch=8,
        report_words=12,
    ),
    "vit-b16": dict(
        vit="vit_base_patch16_224",
        input_size=224,
        embed_dim=512,
        bert=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
        ),
        context_length=256,
        decoder=(512, 8, 16, 4),
        batch=64,
        report_words=60,
    ),
}
WORDS = "left right upper lower lobe frontal lesion mass nodule opacity no acute finding small large rim".split()


def build(size: dict, tokenizer: ReportTokenizer, clip_and_mkd: bool) -> MaskedCLIP:
    width, depth, heads, feature_depth = size["decoder"]
    weight = 1.0 if clip_and_mkd else 0.0
    return MaskedCLIP(
        size["embed_dim"],
        VisionCfg(vit=size["vit"], bridge_depth=2, input_size=size["input_size"]),
        TextCfg(bert=size["bert"], context_length=size["context_length"]),
        DecoderCfg(width=width, depth=depth, heads=heads, feature_depth=feature_depth),
        LossCfg(lambda_clip=weight, lambda_mkd=weight),
        tokenizer=tokenizer,
    )


def synthetic_batch(batch: int, size: int, report_words: int, paired_share: float, tokenizer: ReportTokenizer):
    """Random images, one elliptic ROI each (every eighth empty), random reports for the first paired_share."""
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(batch, 3, size, size, generator=gen)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    centre = torch.rand(batch, 2, 1, 1, generator=gen) * 0.5 + 0.25
    radius = torch.rand(batch, 2, 1, 1, generator=gen) * 0.25 + 0.05
    roi = ((yy - centre[:, 0]) / radius[:, 0]) ** 2 + ((xx - centre[:, 1]) / radius[:, 1]) ** 2 < 1
    roi[::8] = False
    words = torch.randint(len(WORDS), (batch, report_words), generator=gen).tolist()
    ids = tokenizer([" ".join(WORDS[w] for w in row) for row in words])
    paired = torch.arange(batch) < round(paired_share * batch)
    # report and study numbers (two images a study), so L_CLIP masks related pairs as in training
    groups = torch.stack([torch.arange(batch), torch.arange(batch) // 2], dim=1)
    return img, roi[:, None].float(), ids, paired, groups


def breakdown(median: dict[str, float]) -> dict[str, float]:
    """Shares of the CLIP image pass and D_F in the step, and the ratio of MAE + the objective's extra passes."""
    passes = median["clip_image"] + median["text"] + median["teacher"] + median["feature_decoder"]
    return {
        "clip_image_share": round(median["clip_image"] / median["step"], 4),
        "feature_decoder_share": round(median["feature_decoder"] / median["step"], 4),
        "objective_passes_ratio": round((median["mim"] + passes) / median["mim"], 3),
        "clip_image_s_median": round(median["clip_image"], 4),
        "feature_decoder_s_median": round(median["feature_decoder"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, help="images per step (default: the size's preset)")
    parser.add_argument("--paired-share", type=float, default=0.5, help="share of the batch with a report")
    parser.add_argument("--masking", choices=["differentiated", "random"], default="differentiated")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="1 step of each, no warm-up: checks that it runs")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the CLIP image pass and the feature decoder alone"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.warmup = 1, 0

    torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    size = SIZES[args.size]
    batch_size = args.batch or size["batch"]
    tokenizer = ReportTokenizer(None, size["context_length"])
    torch.manual_seed(0)
    full = build(size, tokenizer, clip_and_mkd=True).to(device).train()
    torch.manual_seed(0)
    mim = build(size, tokenizer, clip_and_mkd=False).to(device).train()
    optimizers = {
        id(m): torch.optim.AdamW(
            [p for p in m.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95), foreach=True
        )
        for m in (full, mim)
    }
    img, roi, ids, paired, groups = (
        t.to(device)
        for t in synthetic_batch(batch_size, size["input_size"], size["report_words"], args.paired_share, tokenizer)
    )
    masking = DifferentiatedMasking() if args.masking == "differentiated" else RandomMasking(ratio=0.75)
    grid_hw = full.grid_hw((size["input_size"], size["input_size"]))
    gen = torch.Generator(device=device).manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        """(wall seconds, process CPU seconds): on a shared CPU the second is what the step itself used."""
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    def train_step(model: MaskedCLIP) -> Callable[[], None]:
        def step() -> None:
            active, _ = masking(roi, grid_hw, generator=gen)
            with autocast:
                loss = model(img, active, ids, paired, groups)["loss"]
            loss.backward()
            optimizers[id(model)].step()
            optimizers[id(model)].zero_grad(set_to_none=True)
            model.clamp_logit_scale()

        return step

    def text_tower() -> None:
        with autocast:
            out = full.text(ids[paired])
        out.float().sum().backward()
        full.zero_grad(set_to_none=True)

    # the step embeds the batch once for all its passes: the parts below start from that embedding (fixed here;
    # the weights move, which does not matter for timing) and from the encoder's tokens of fixed masks
    with torch.no_grad(), autocast:
        embedded = full.encoder.embed(img)
        fixed_visible, _ = masking(roi, grid_hw, generator=torch.Generator(device=device).manual_seed(1))
        hidden = full.encoder.encode(embedded, fixed_visible.flatten(1))

    def teacher_pass() -> None:
        with torch.no_grad(), autocast:
            full.bridge.tokens(full.encoder.stream(embedded[~paired]))

    def clip_image_pass() -> None:
        with autocast:
            _, img_pd = full.bridge(full.encoder.stream(embedded[paired]))
        img_pd.float().sum().backward()
        full.zero_grad(set_to_none=True)

    def feature_decoder() -> None:
        with autocast:
            pred_bnc = full.feature_decoder(hidden, grid_hw)
        pred_bnc.float().sum().backward()
        full.zero_grad(set_to_none=True)

    # the baseline is the same E and D_I: same initial weights, hence the same L_MIM on the same masks
    with torch.no_grad(), autocast:
        active, _ = masking(roi, grid_hw, generator=torch.Generator(device=device).manual_seed(1))
        same_mim_loss = bool(full(img, active, ids, paired)["loss_mim"] == mim(img, active, ids, paired)["loss_mim"])

    def step_flops(model: MaskedCLIP) -> int:
        """FLOPs of one forward + backward on the masks above (no optimizer step: the weights stay)."""
        with FlopCounterMode(display=False) as counter:
            with autocast:
                loss = model(img, active, ids, paired, groups)["loss"]
            loss.backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    flops = {"step": step_flops(full), "mim": step_flops(mim)}

    kinds = {"step": train_step(full), "mim": train_step(mim), "text": text_tower, "teacher": teacher_pass}
    if args.breakdown:
        kinds |= {"clip_image": clip_image_pass, "feature_decoder": feature_decoder}
    times: dict[str, list[float]] = {name: [] for name in kinds}
    cpu_times: dict[str, list[float]] = {name: [] for name in kinds}
    for i in range(args.warmup + args.steps):
        order = list(kinds) if i % 2 == 0 else list(kinds)[::-1]  # neither kind always runs first
        for name in order:
            seconds, cpu_seconds = timed(kinds[name])
            if i >= args.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_times.items()}
    result = {
        "step_ratio_vs_mim": round(median["step"] / median["mim"], 3),
        # the same ratio by process CPU time: steadier than wall time when other jobs share the cores
        "step_ratio_vs_mim_cpu": round(cpu_median["step"] / cpu_median["mim"], 3),
        "step_flop_ratio_vs_mim": round(flops["step"] / flops["mim"], 3),
        "text_tower_share": round(median["text"] / median["step"], 4),
        "teacher_pass_share": round(median["teacher"] / median["step"], 4),
        "step_s_median": round(median["step"], 4),
        "mim_s_median": round(median["mim"], 4),
        "text_s_median": round(median["text"], 4),
        "teacher_s_median": round(median["teacher"], 4),
        "step_gflop": round(flops["step"] / 1e9, 3),
        "mim_gflop": round(flops["mim"] / 1e9, 3),
        "baseline_same_mim_loss": same_mim_loss,
        **(breakdown(median) if args.breakdown else {}),
        "images_per_s": round(batch_size / median["step"], 2),
        "mim_images_per_s": round(batch_size / median["mim"], 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)",
        "config": {
            "size": args.size,
            "vit": size["vit"],
            "input_size": size["input_size"],
            "batch": batch_size,
            "paired_share": args.paired_share,
            "paired_images": int(paired.sum()),
            "masking": args.masking,
            "context_length": size["context_length"],
            "steps": args.steps,
            "warmup": args.warmup,
            "teacher": "stop_gradient",
            "autocast": "bf16" if device.type == "cuda" else "fp32",
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
