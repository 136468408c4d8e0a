"""Our SparK/MWM pretraining step against SparK's own reference step, same function, interleaved in one run.

Prints one JSON object. SparK's code (github keyu-tian/SparK, its `pretrain/` folder: spark.py, encoder.py,
decoder.py, models/resnet.py) is fetched by the user and never copied into this repository:

    python bench/spark_reference.py --spark-dir /tmp/spark/pretrain [--backbone resnet18 --size 128 --batch 8]
        [--steps 10] [--threads 1] [--ratio 0.6] [--optimizer adamw] [--variants plain,fast]

Without `--spark-dir` (or with a folder lacking spark.py) it prints `{"skipped": reason}` and exits 0.

Both models are built on the same timm backbone; our weights are copied into SparK's (names mapped one to one),
then one batch checks that both compute the same function: the loss and the gradient norm of every parameter,
same input, same mask, same drop-path draws (`check`). The timed steps are forward + backward + optimizer step
(AdamW or LAMB, same hyper-parameters) on the same batch and the same random mask (SparK's own `mask`, ratio
`--ratio`) for every model, run in a rotating order step after step, so load from other processes hits all alike.

`variants`: our step under named fast-path settings (`pretrain.spark.FAST_PATHS`), each its own copy of the same
weights. Per variant: `time_ratio_vs_reference` (median wall time / SparK's; < 1 = faster), `speedup_vs_reference`
(its inverse), `cpu_time_ratio_vs_reference` (process CPU time, the fairer figure on a shared machine), and
`loss_rel_diff_vs_plain` at the check batch.

Shims for SparK under current timm/torch, applied at run time to SparK's modules only and listed under `shims`:
- `pytz` (imported by SparK's utils/misc.py for log time stamps, absent here) is given an empty module when missing;
- models/resnet.py is loaded from its file, not through models/__init__.py, which imports `timm.models.layers.drop`
  (gone in timm 1.x) and only changes reprs. Loading it still patches timm's ResNet (its `forward(hierarchical=)`,
  `get_downsample_ratio`, `get_feature_map_channels`), as SparK does; our encoder uses `forward_intermediates`.
- SparK's `pretrain_default_model_kwargs` lists no resnet18: its backbone is built with the same kwargs
  (`pretrained=False, num_classes=0, global_pool=''`, drop path as ours).
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import copy
import importlib.util
import json
import os
import statistics
import time
import types
from collections.abc import Callable

import timm
import torch
from torch import nn

from bench.pretrain_step import make_optimizer
from pretrain.spark import FAST_PATHS, SparkMIM, spark_drop_path

SHIMS = [
    "pytz: an empty module when not installed (SparK's utils/misc.py imports it for log time stamps)",
    "models/resnet.py loaded from its file, not via models/__init__.py (imports timm.models.layers.drop, gone in "
    "timm 1.x); it patches timm's ResNet as SparK does",
    "backbone built with SparK's kwargs (pretrained=False, num_classes=0, global_pool='') when SparK lists none",
]


def spark_module_dir(spark_dir: str | None) -> Path | None:
    """The folder holding SparK's spark.py: `spark_dir` itself or its `pretrain/` subfolder; None if neither."""
    if not spark_dir:
        return None
    for folder in (Path(spark_dir), Path(spark_dir) / "pretrain"):
        if (folder / "spark.py").is_file() and (folder / "encoder.py").is_file():
            return folder
    return None


def load_spark(folder: Path) -> types.SimpleNamespace:
    """Import SparK's modules from `folder` with the shims above (SparK imports its modules by bare name)."""
    if importlib.util.find_spec("pytz") is None:
        sys.modules.setdefault("pytz", types.ModuleType("pytz"))
    sys.path.insert(0, str(folder))
    import decoder as spark_decoder  # noqa: PLC0415  (SparK's modules, found only after the path insert)
    import encoder as spark_encoder  # noqa: PLC0415
    import spark as spark_spark  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("spark_models_resnet", folder / "models" / "resnet.py")
    resnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(resnet)
    return types.SimpleNamespace(encoder=spark_encoder, decoder=spark_decoder, spark=spark_spark)


def build_reference(sp: types.SimpleNamespace, backbone: str, size: int, width: int, drop_path: float) -> nn.Module:
    """SparK's model as its `main.py` builds it (BatchNorm densify, no SyncBN on one process)."""
    cnn = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="", drop_path_rate=drop_path)
    enc = sp.encoder.SparseEncoder(cnn, input_size=size, sbn=False)
    dec = sp.decoder.LightDecoder(enc.downsample_raito, width=width, sbn=False)
    return sp.spark.SparK(enc, dec, mask_ratio=0.6, densify_norm="bn", sbn=False)


def reference_name(ours: str) -> str:
    """The SparK name of one of our parameter/buffer names."""
    parts = ours.split(".")
    if ours.startswith("encoder.model."):
        return "sparse_encoder.sp_cnn." + ".".join(parts[2:])
    if ours.startswith("decoder.blocks."):
        i, j, rest = parts[2], int(parts[3]), parts[4:]
        sub = "up_sample" if j == 0 else f"conv.{j - 1}"
        return ".".join(["dense_decoder.dec", i, sub, *rest])
    if ours.startswith("decoder.proj."):
        return "dense_decoder." + ".".join(parts[1:])
    if ours.startswith("densify."):
        kind = {"norms": "densify_norms", "projs": "densify_projs", "mask_tokens": "mask_tokens"}[parts[1]]
        return ".".join([kind, *parts[2:]])
    raise KeyError(ours)


def copy_into_reference(ours: nn.Module, ref: nn.Module) -> None:
    """Load our parameters and buffers into SparK's model; every one of ours must land, shapes equal."""
    ref_state = ref.state_dict()
    mapped = {reference_name(k): v for k, v in ours.state_dict().items()}
    missing = [k for k in mapped if k not in ref_state or ref_state[k].shape != mapped[k].shape]
    if missing:
        raise ValueError(f"our weights have no SparK counterpart of the same shape: {missing[:5]}")
    left = [k for k in ref_state if k not in mapped and k not in ("imn_m", "imn_s", "norm_black")]
    if left:
        raise ValueError(f"SparK weights with no counterpart in ours: {left[:5]}")
    ref.load_state_dict({**ref_state, **mapped})


def check_same_function(ours: nn.Module, ref: nn.Module, img: torch.Tensor, active: torch.Tensor) -> dict:
    """Loss and per-parameter gradient norms of both models on one batch (weights already copied)."""
    ours, ref = copy.deepcopy(ours), copy.deepcopy(ref)
    torch.manual_seed(1)  # the same drop-path draws: both run the timm blocks in the same order
    loss_o = ours(img, active)["loss"]
    loss_o.backward()
    torch.manual_seed(1)
    loss_r = ref(img, active)
    loss_r.backward()
    ref_params = dict(ref.named_parameters())
    worst, worst_name = 0.0, None
    for name, p in ours.named_parameters():
        g_o, g_r = p.grad, ref_params[reference_name(name)].grad
        n_o = 0.0 if g_o is None else g_o.norm().item()
        n_r = 0.0 if g_r is None else g_r.norm().item()
        rel = abs(n_o - n_r) / max(n_r, 1e-12)
        if rel > worst:
            worst, worst_name = rel, name
    return {
        "loss_ours": loss_o.item(),
        "loss_reference": loss_r.item(),
        "loss_rel_diff": abs(loss_o.item() - loss_r.item()) / abs(loss_r.item()),
        "grad_norm_max_rel_diff": worst,
        "grad_norm_worst_param": worst_name,
    }


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--spark-dir",
        default=os.environ.get("SPARK_DIR"),
        help="SparK's repository or its pretrain/ folder (fetched by the user); default $SPARK_DIR",
    )
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each model (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--ratio", type=float, default=0.6, help="SparK's random mask ratio")
    parser.add_argument("--decoder-width", type=int, default=768)
    parser.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw")
    parser.add_argument("--variants", default="plain,fast", help=f"our settings, from {sorted(FAST_PATHS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    folder = spark_module_dir(args.spark_dir)
    if folder is None:
        why = "no --spark-dir given" if not args.spark_dir else f"{args.spark_dir}: no spark.py/encoder.py there"
        result = {"skipped": f"{why}; fetch github.com/keyu-tian/SparK and pass its pretrain/ folder"}
        print(json.dumps(result))
        return result
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in FAST_PATHS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(FAST_PATHS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sp = load_spark(folder)
    drop_path = spark_drop_path(args.backbone)

    torch.manual_seed(0)
    base = SparkMIM(args.backbone, args.size, decoder_width=args.decoder_width, drop_path_rate=drop_path)
    ref = build_reference(sp, args.backbone, args.size, args.decoder_width, drop_path)
    copy_into_reference(base, ref)
    base, ref = base.to(device).train(), ref.to(device).train()
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    ref.mask_ratio = args.ratio
    ref.len_keep = round(ref.fmap_h * ref.fmap_w * (1 - args.ratio))
    active = ref.mask(args.batch, device, generator=gen)
    check = check_same_function(base, ref, img, active)

    models: dict[str, nn.Module] = {}
    losses: dict[str, float] = {}
    for name in variants:
        m = SparkMIM(
            args.backbone, args.size, decoder_width=args.decoder_width, drop_path_rate=drop_path, fast=FAST_PATHS[name]
        )
        m.load_state_dict(base.state_dict())
        m = m.to(device).train()
        with torch.no_grad():
            torch.manual_seed(1)
            losses[name] = m(img, active)["loss"].item()
        models[name] = m
    optims = {name: make_optimizer(args.optimizer, m.parameters()) for name, m in models.items()}
    ref_opt = make_optimizer(args.optimizer, ref.parameters())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours_step(name: str) -> Callable[[], None]:
        def step() -> None:
            models[name](img, step_active[0])["loss"].backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
            sync()

        return step

    def ref_step() -> None:
        ref(img, step_active[0]).backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        sync()

    steps = {"reference": ref_step, **{name: ours_step(name) for name in variants}}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    step_active = [active]
    for i in range(args.warmup + args.steps):
        step_active[0] = ref.mask(args.batch, device, generator=gen)
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            w, c = timed(steps[name])
            if i >= args.warmup:
                wall[name].append(w)
                cpu[name].append(c)
        print(f"[spark_reference] step {i + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)

    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "check": {k: (round(v, 8) if isinstance(v, float) else v) for k, v in check.items()},
        "reference_step_s": round(med_w["reference"], 4),
        "variants": {
            name: {
                "settings": FAST_PATHS[name].describe(),
                "step_s": round(med_w[name], 4),
                "time_ratio_vs_reference": round(med_w[name] / med_w["reference"], 3),
                "speedup_vs_reference": round(med_w["reference"] / med_w[name], 3),
                "cpu_time_ratio_vs_reference": round(med_c[name] / max(med_c["reference"], 1e-9), 3),
                "loss_rel_diff_vs_plain": round(abs(losses[name] - check["loss_ours"]) / abs(check["loss_ours"]), 8),
            }
            for name in variants
        },
        **{f"speedup_{name}": round(med_w["reference"] / med_w[name], 3) for name in variants},
        "shims": SHIMS,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)",
        "config": {
            "backbone": args.backbone,
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "ratio": args.ratio,
            "optimizer": args.optimizer,
            "decoder_width": args.decoder_width,
            "drop_path": drop_path,
            "spark_dir": str(folder),
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
