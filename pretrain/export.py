"""The exported backbone: one writer (`export_backbone`), one reader (`read_backbone`), one head definition.

The exported file is what `torch.save(state_dict)` writes: tensors under the names of
`timm.create_model(backbone)`, head absent. The head (`head_prefixes`) is whatever the timm model has that
pretraining does not train: `fc` for ResNets; `head.norm` and `head.fc` for ConvNeXts (the final LayerNorm
sits in timm's head and pretraining prunes it, as SparK does). Downstream tasks (`finetune`) re-initialise the
head and load everything else strictly. A JSON sidecar (`<out>.json`) records the backbone name, the export
summary, the intensity rules pretraining used (fine-tuning follows them) and its input convention (`input:
{channels: "2d" | "2.5d"}`, `input_convention`; fine-tuning refuses the other); `read_backbone` returns it with the
weights. `load_backbone` builds a checked timm model.

Other exports use the same sidecar (e.g. MaskedCLIP's ViT, `pretrain.maskedclip.export`) and may record more:
`timm_kwargs` (what `timm.create_model` needs beyond the name, e.g. `{"depth": 10}` for the first blocks of a
ViT; `architecture_kwargs`) and `mean` / `std` (the normalisation the encoder was trained with;
`input_statistics`). Without them the architecture is the name's and the statistics ImageNet's.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from data.provenance import code_version
from pretrain.spark import ENCODER_PREFIX
from pretrain.sparse_encoder import build_timm_trunk

# The LightningModule keeps SparkMIM at attribute `model`.
CHECKPOINT_PREFIX = "model." + ENCODER_PREFIX


def head_prefixes(backbone: str) -> tuple[str, ...]:
    """Module prefixes of the head of timm `backbone`: what pretraining does not export and a downstream task
    initialises afresh (('fc',) for ResNets, ('head.fc', 'head.norm') for ConvNeXts).

    It is the difference between `timm.create_model(backbone)` and the trunk pretraining builds
    (`build_timm_trunk`); for a model pretraining cannot build (no hierarchical features), timm's classifier.
    """
    with torch.device("meta"):  # names only: no memory, no init time
        full = timm.create_model(backbone, pretrained=False)
        try:
            trunk, _ = build_timm_trunk(backbone)
        except ValueError:
            classifier = full.pretrained_cfg.get("classifier") or "fc"
            return tuple([classifier] if isinstance(classifier, str) else classifier)
    return tuple(sorted({key.rsplit(".", 1)[0] for key in set(full.state_dict()) - set(trunk.state_dict())}))


def is_head(key: str, prefixes: Iterable[str]) -> bool:
    """Whether state-dict `key` belongs to a module under one of `prefixes` (see `head_prefixes`)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def backbone_from_hparams(hparams: Mapping[str, Any], source: str) -> str:
    """The timm name saved by the LightningModule: hparams['backbone'] or hparams['model']['backbone']."""
    if isinstance(hparams.get("backbone"), str):
        return hparams["backbone"]
    model = hparams.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("backbone"), str):
        return model["backbone"]
    raise ValueError(
        f"{source}: cannot tell the backbone: the checkpoint's hyper_parameters have neither "
        f"'backbone' nor 'model.backbone' (keys: {sorted(hparams)})"
    )


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        # Lightning stores Path-typed hyper-parameters (e.g. corpus folders) as pathlib objects
        with torch.serialization.safe_globals([pathlib.PosixPath, pathlib.WindowsPath]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file and the reason
        raise ValueError(
            f"{path}: cannot load as a weights-only checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def check_timm_compatible(state_dict: Mapping[str, torch.Tensor], backbone: str, source: str) -> list[str]:
    """Load `state_dict` into `timm.create_model(backbone)` (non-strict); raise unless the only problem is
    the documented missing head. Returns the missing (head) keys."""
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False)
    return _checked_load(model, state_dict, backbone, source, assign=True)


def _checked_load(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], backbone: str, source: str, assign: bool = False
) -> list[str]:
    try:
        result = model.load_state_dict(state_dict, strict=False, assign=assign)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise ValueError(
            f"{source}: weights do not fit timm '{backbone}': {str(err).splitlines()[-1].strip()}"
        ) from err
    unexpected, missing = list(result.unexpected_keys), sorted(result.missing_keys)
    heads = head_prefixes(backbone)
    not_head = [k for k in missing if not is_head(k, heads)]
    if unexpected or not_head:
        raise ValueError(
            f"{source}: weights do not fit timm '{backbone}': unexpected keys {unexpected[:5]}, "
            f"missing non-head keys {not_head[:5]}"
        )
    return missing


def export_backbone(ckpt_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write the encoder of a pretraining checkpoint as a plain timm state dict; return a summary.

    The checkpoint is a Lightning checkpoint whose module holds `SparkMIM` at attribute `model` and saved the
    timm name as hyper-parameter `backbone` (or `model.backbone`). Loaded with `weights_only=True`.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    ckpt = _load_checkpoint(ckpt_path)
    backbone = backbone_from_hparams(ckpt.get("hyper_parameters") or {}, str(ckpt_path))
    state_dict = {
        k[len(CHECKPOINT_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(CHECKPOINT_PREFIX)
    }
    if not state_dict:
        raise ValueError(
            f"{ckpt_path}: no weights under '{CHECKPOINT_PREFIX}' (is SparkMIM stored at the "
            "LightningModule's attribute 'model'?)"
        )
    missing = check_timm_compatible(state_dict, backbone, str(ckpt_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    safetensors_out = safetensors_path(out_path)
    summary = {
        "backbone": backbone,
        "out": str(out_path),
        "source": ckpt_path.name,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "n_tensors": len(state_dict),
        "n_parameters": int(
            sum(
                v.numel()
                for k, v in state_dict.items()
                if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
            )
        ),
        "missing_in_timm_model": missing,
        # the intensity rules pretraining used (IntensityConfig fields): fine-tuning follows them by default
        "intensity": (ckpt.get("datamodule_hyper_parameters") or {}).get("intensity_used"),
        # what the three input channels held in pretraining (data.slice_neighbours): fine-tuning must feed the same
        "input": {"channels": (ckpt.get("datamodule_hyper_parameters") or {}).get("input_channels", "2d")},
        "code_version": code_version(),  # this export's code; the checkpoint's is below
        "checkpoint_code_version": ckpt.get("code_version"),
        "safetensors": safetensors_out.name,  # beside the export: file names only, no absolute path
    }
    write_weights(state_dict, out_path, summary)
    if safetensors_out != out_path:
        write_weights(state_dict, safetensors_out, summary)
    return summary


def safetensors_path(out_path: str | Path) -> Path:
    """The safetensors copy of the export at `out_path`: `backbone.pt` -> `backbone.safetensors` (or itself)."""
    out_path = Path(out_path)
    return out_path if out_path.suffix == ".safetensors" else out_path.with_suffix(".safetensors")


def write_weights(state_dict: Mapping[str, torch.Tensor], path: Path, summary: Mapping[str, Any]) -> None:
    """`state_dict` at `path` (safetensors for a .safetensors suffix, with the summary's scalars as its metadata;
    a torch file otherwise) and the JSON sidecar beside it."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {k: str(v) for k, v in summary.items() if isinstance(v, str | int | float) and k != "out"}
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
    else:
        torch.save(dict(state_dict), path)
    sidecar_path(path).write_text(json.dumps({**summary, "out": path.name}, indent=2))


def sidecar_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".json")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from .safetensors or a torch file (weights_only). Raises FileNotFoundError or
    ValueError naming the file (a Lightning checkpoint is told to go through `export` first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one message naming the file
        raise ValueError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: not a plain state dict of tensors (a Lightning checkpoint? export the backbone first with "
            "`python -m pretrain export CKPT --out backbone.pt`)"
        )
    return dict(obj)


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The export's JSON sidecar (`<path>.json`: backbone name, source, step, ...), or None without one."""
    meta = sidecar_path(path)
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta}: unreadable export sidecar ({err})") from err
    if not isinstance(info, dict) or not isinstance(info.get("backbone"), str):
        raise ValueError(f"{meta}: export sidecar without a 'backbone' name")
    return info


def read_backbone(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The weights written by `export_backbone` and its sidecar (None for a state dict from elsewhere)."""
    return read_state_dict(path), read_sidecar(path)


def input_convention(meta: Mapping[str, Any] | None) -> str:
    """What an export's encoder saw as its three input channels: "2d" (one slice copied thrice, also for a sidecar
    from before the record or a state dict without one) or "2.5d" (slices z-1, z, z+1; `data.slice_neighbours`)."""
    recorded = ((meta or {}).get("input") or {}).get("channels")
    return str(recorded) if recorded else "2d"


def architecture_kwargs(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """`timm.create_model` keyword arguments a sidecar records beyond the name (its `timm_kwargs`, e.g. a
    MaskedCLIP encoder's {'depth': 10}), without `num_classes`, which the user of the weights chooses."""
    kwargs = dict((meta or {}).get("timm_kwargs") or {})
    kwargs.pop("num_classes", None)
    return kwargs


def input_statistics(meta: Mapping[str, Any] | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per channel the exported encoder was trained with, when the sidecar records them."""
    if not meta or meta.get("mean") is None or meta.get("std") is None:
        return None
    return tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])


def load_backbone(path: str | Path, backbone: str | None = None, num_classes: int = 0, **timm_kwargs) -> nn.Module:
    """A `timm.create_model(backbone, num_classes=num_classes, **timm_kwargs)` with the exported weights.

    `backbone` defaults to the one recorded in the export's JSON sidecar, `timm_kwargs` to its
    `architecture_kwargs` (given ones win). The load is checked: no unexpected key, and missing keys only in
    the head (`head_prefixes`).
    """
    path = Path(path)
    state_dict, meta = read_backbone(path)
    if backbone is None:
        if meta is None:
            raise ValueError(f"{path}: no sidecar {sidecar_path(path).name}; pass the backbone name")
        backbone = meta["backbone"]
    timm_kwargs = architecture_kwargs(meta) | timm_kwargs
    model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **timm_kwargs)
    _checked_load(model, state_dict, backbone, str(path))
    return model
