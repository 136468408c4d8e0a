"""Exports of a MaskedCLIP checkpoint: (a) image + text towers as an open_clip folder in BiomedCLIP's layout,
(b) the image encoder as a timm ViT state dict.

(a) The open_clip model is a `CustomTextCLIP`: vision = timm ViT `vit` (E's blocks then B's, B's final norm,
the ViT's own pooling, P_I as `head.proj`), text = HF BERT with CLS pooling and an mlp projection (T + P_T),
and the learned `logit_scale`. Its `encode_image` is P_I(pool(B(E(x)))) and its `encode_text` P_T(T(t)), the
embeddings L_CLIP trained. The folder::

    open_clip_config.json  open_clip_model.safetensors          CLIP config (OpenAI mean/std) and weights
    config.json  vocab.txt  tokenizer.json  tokenizer_config.json  BERT config and the training tokenizer

loads offline with `open_clip.create_model('local-dir:DIR')` and as `clip: local-dir:DIR` in `localize`.

(b) `timm.create_model(vit, depth=<E's depth>, num_classes=0)` loads the file strictly; the sidecar
`<file>.json` records the name, those keyword arguments, the input size and the normalisation.
"""

from __future__ import annotations

import inspect
import json
import pathlib
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch

from data.clip_folder import (
    OPENAI_MEAN,
    OPENAI_STD,
    clip_config,
    with_text_folder,
    write_clip_config,
    write_clip_weights,
    write_tokenizer,
)
from pretrain.export import sidecar_path
from pretrain.maskedclip.config import nest_flat_args
from pretrain.maskedclip.losses import MAX_LOGIT_SCALE
from pretrain.maskedclip.model import MaskedCLIP
from pretrain.maskedclip.module import MaskedClipPretraining
from pretrain.maskedclip.text_encoder import UNUSED_TEXT_KEYS
from pretrain.maskedclip.tokenizer import ReportTokenizer


class TrainedMaskedClip(NamedTuple):
    model: MaskedCLIP
    tokenizer: ReportTokenizer
    hparams: dict[str, Any]  # the module's, grouped (`vision`, `text`, ... as dicts)
    source: dict[str, Any]  # checkpoint file name, epoch, global step


def load_trained_model(ckpt_path: str | Path) -> TrainedMaskedClip:
    """Rebuild the MaskedCLIP of a `pretrain maskedclip fit` checkpoint (weights-only load) with its weights."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals([pathlib.PosixPath, pathlib.WindowsPath]):
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file and the reason
        raise ValueError(f"{ckpt_path}: cannot load as a weights-only checkpoint ({type(err).__name__})") from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if isinstance(hparams, dict):
        hparams = nest_flat_args(dict(hparams))  # checkpoints of the code before the grouping are flat
    if not isinstance(hparams, dict) or "vit" not in hparams["vision"] or "state_dict" not in ckpt:
        raise ValueError(f"{ckpt_path}: not a MaskedCLIP checkpoint (no state_dict or no 'vit' hyper-parameter)")
    accepted = inspect.signature(MaskedClipPretraining.__init__).parameters
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    # the checkpoint holds the weights: no pretrained start to read again (its file may be gone)
    kwargs["vision"] = {**hparams["vision"], "init": None}
    module = MaskedClipPretraining(**kwargs)
    module.load_state_dict(ckpt["state_dict"])
    source = {"checkpoint": ckpt_path.name, "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
    text = module.text_cfg
    return TrainedMaskedClip(module.model.eval(), ReportTokenizer(text.model, text.context_length), hparams, source)


def open_clip_state_dict(model: MaskedCLIP) -> dict[str, torch.Tensor]:
    """The CustomTextCLIP state dict: E's and B's weights under the whole ViT's names, T's without BERT's
    unused pooler, and the logit scale."""
    trunk = {k: v for k, v in model.encoder.vit.state_dict().items() if not k.startswith("norm.")}
    first = model.bridge.first_block
    for k, v in model.bridge.state_dict().items():
        if k.startswith("blocks."):
            index, rest = k[len("blocks.") :].split(".", 1)
            trunk[f"blocks.{first + int(index)}.{rest}"] = v
        elif k.startswith(("norm.", "fc_norm.")):
            trunk[k] = v
    state = {f"visual.trunk.{k}": v for k, v in trunk.items()}
    state["visual.head.proj.weight"] = model.bridge.proj.weight
    for k, v in model.text.state_dict().items():
        if not k.startswith(UNUSED_TEXT_KEYS):
            state["text." + k[len("tower.") :]] = v
    # clamped as training clamps it after each step (a checkpoint of older code may hold a raw value above the cap)
    state["logit_scale"] = model.logit_scale.detach().clamp(0, MAX_LOGIT_SCALE)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def export_open_clip(trained: TrainedMaskedClip, folder: str | Path) -> dict[str, Any]:
    """Write the open_clip folder (see the module docstring); the weights are checked to fit open_clip's own
    model of the written config, key for key, before they are saved."""
    from open_clip import CustomTextCLIP

    folder = Path(folder).expanduser().resolve()
    hp, model = trained.hparams, trained.model
    vision = hp["vision"]
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder, trained.tokenizer.hf)
    model.text.config.save_pretrained(folder)
    vision_cfg = {
        "timm_model_name": vision["vit"],
        "timm_model_pretrained": False,
        "timm_pool": "",  # the ViT's own pooling, as BiomedCLIP
        "timm_proj": "linear",
        "image_size": vision["input_size"],
    }
    context_length = hp["text"]["context_length"]
    config = clip_config(folder, embed_dim=hp["embed_dim"], vision_cfg=vision_cfg, context_length=context_length)
    state = open_clip_state_dict(model)
    model_cfg = with_text_folder(config, folder)["model_cfg"]
    check = CustomTextCLIP(
        model_cfg["embed_dim"], model_cfg["vision_cfg"], {**model_cfg["text_cfg"], "hf_model_pretrained": False}
    )
    check.load_state_dict(state, strict=True)  # raises on any missing, unexpected or misshapen key
    write_clip_config(folder, config)
    weights = write_clip_weights(folder, state)
    return {
        "folder": str(folder),
        "clip_spec": f"local-dir:{folder}",
        "weights": weights.name,
        "vit": vision["vit"],
        "embed_dim": hp["embed_dim"],
        "image_size": vision["input_size"],
        "context_length": context_length,
        **trained.source,
    }


def export_timm(trained: TrainedMaskedClip, out_path: str | Path) -> dict[str, Any]:
    """Write E as a plain timm state dict + sidecar JSON; checked to load strictly before it is saved."""
    out_path = Path(out_path)
    vision, encoder = trained.hparams["vision"], trained.model.encoder
    timm_kwargs = {"depth": len(encoder.vit.blocks), "num_classes": 0}
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.vit.state_dict().items()}
    with torch.device("meta"):
        reference = timm.create_model(vision["vit"], pretrained=False, **timm_kwargs)
    reference.load_state_dict(state, strict=True, assign=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_path)
    summary = {
        "backbone": vision["vit"],
        "timm_kwargs": timm_kwargs,
        "input_size": vision["input_size"],
        "mean": list(OPENAI_MEAN),  # what the encoder saw in training
        "std": list(OPENAI_STD),
        "out": out_path.name,  # the sidecar sits beside it: no absolute path
        "n_tensors": len(state),
        "n_parameters": int(sum(v.numel() for v in state.values())),
        **trained.source,
    }
    sidecar_path(out_path).write_text(json.dumps(summary, indent=2))
    return summary
