"""Build a timm backbone and initialise it from scratch, timm's ImageNet weights on disk, or an exported backbone.

`init` names where the weights come from:

- ``"scratch"``: random initialisation (timm's own init).
- ``"imagenet"``: timm's ImageNet weights for the model name (a tag such as ``resnet50.a1_in1k`` picks one set),
  taken only from the local Hugging Face cache or timm's legacy torch-hub cache. Nothing is downloaded; when the
  weights are not on disk the error says where they were looked for.
- ``"imagenet:/path/to/weights.safetensors"``: timm's ImageNet weights from a local file (.safetensors/.pth/.bin).
- any other string: the path of a backbone exported by ``python -m pretrain export`` (a plain timm-style state
  dict, ``torch.save(sd, "backbone.pt")``, read by `pretrain.export.read_backbone` with its JSON sidecar) or any
  other timm state dict for the same architecture.

The head (`pretrain.export.head_prefixes`, one definition for both phases) is never loaded and may be absent.
An export's sidecar may also name timm keyword arguments (a MaskedCLIP encoder: the ViT's first `depth` blocks),
used to build the model, and the normalisation the encoder was trained with (`pretrained_statistics`, which the
CLI hands to the data module).

Every load returns a `LoadReport` (what was loaded, missing, unexpected, and which head keys stayed at their fresh
initialisation). By default loading is strict: a key the model expects but the file lacks (other than the
classifier head) or a key the model does not have is an error, so a wrong file never loads silently half-way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from data.hashing import file_sha256
from pretrain.export import architecture_kwargs, input_statistics, read_backbone, read_sidecar
from pretrain.export import head_prefixes as head_keys  # one definition of the head, shared with the export
from pretrain.export import is_head as _is_head
from pretrain.export import read_state_dict as _read_state_dict

SCRATCH = "scratch"
IMAGENET = "imagenet"
PRETRAINED = "pretrained"


class BackboneInitError(RuntimeError):
    """The requested initial weights cannot be found or do not fit the backbone."""


@dataclass(frozen=True)
class InitSpec:
    """Where a backbone's initial weights come from: kind is 'scratch' | 'imagenet' | 'pretrained'."""

    kind: str
    path: Path | None = None  # a weights file; None for scratch and for ImageNet weights looked up in a cache

    @classmethod
    def parse(cls, init: str | os.PathLike) -> InitSpec:
        text = str(init)
        if text == SCRATCH:
            return cls(SCRATCH)
        if text == IMAGENET:
            return cls(IMAGENET)
        if text.startswith(IMAGENET + ":"):
            return cls(IMAGENET, Path(text[len(IMAGENET) + 1 :]).expanduser())
        if not text:
            raise BackboneInitError("init is empty: use 'scratch', 'imagenet', 'imagenet:FILE' or a backbone path")
        return cls(PRETRAINED, Path(text).expanduser())


@dataclass
class LoadReport:
    """What happened when initial weights were loaded into a module."""

    init: str  # 'scratch' | 'imagenet' | 'pretrained'
    source: str | None = None  # file the weights came from
    sha256: str | None = None  # first 16 hex digits of the file's SHA-256
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected by the module, absent from the file (not head)
    unexpected: list[str] = field(default_factory=list)  # in the file, unknown to the module (not head)
    head: list[str] = field(default_factory=list)  # classifier keys left at (or dropped for) a fresh head

    def summary(self, examples: int = 5) -> dict:
        """JSON-friendly summary: counts plus the first few key names of each non-empty list."""
        out: dict = {"init": self.init, "source": self.source, "sha256": self.sha256}
        for name in ("loaded", "missing", "unexpected", "head"):
            keys = getattr(self, name)
            out[f"n_{name}"] = len(keys)
            if keys and name != "loaded":
                out[name] = keys[:examples]
        return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain state dict from .safetensors or a torch file (weights_only); a clear error otherwise."""
    try:
        return _read_state_dict(path)
    except (FileNotFoundError, ValueError) as err:
        raise BackboneInitError(str(err)) from err


def read_exported(path: Path, model_name: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """An exported backbone's weights and sidecar (None without one); the sidecar must name the same architecture."""
    try:
        state_dict, meta = read_backbone(path)
    except (FileNotFoundError, ValueError) as err:
        raise BackboneInitError(str(err)) from err
    if meta is not None and meta["backbone"].split(".")[0] != model_name.split(".")[0]:
        raise BackboneInitError(
            f"{path}: exported from a '{meta['backbone']}' pretraining run (its .json sidecar), not '{model_name}'"
        )
    return state_dict, meta


def pretrained_statistics(init: str | os.PathLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) to normalise images with for a backbone started from `init`: those an export's sidecar records
    (a MaskedCLIP encoder: OpenAI's CLIP statistics), else ImageNet's (timm's models, SparK's fine-tuning)."""
    return input_statistics(_sidecar(init)) or (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))


def plain_vit_depth(model_name: str, init: str | os.PathLike = SCRATCH) -> int | None:
    """Number of blocks of the backbone started from `init` when it is a plain (single-stride) timm
    VisionTransformer (an export may keep fewer blocks than the name's), else None. Built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, **architecture_kwargs(_sidecar(init)))
    return len(model.blocks) if isinstance(model, VisionTransformer) else None


def _sidecar(init: str | os.PathLike) -> dict | None:
    spec = InitSpec.parse(init)
    if spec.kind != PRETRAINED:
        return None
    try:
        return read_sidecar(spec.path)
    except ValueError as err:
        raise BackboneInitError(str(err)) from err


def find_imagenet_weights(model_name: str, hf_cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of timm's ImageNet weights for `model_name` if they are on disk; never downloads.

    Looks in the Hugging Face cache (`hf_cache_dir`, default the hub's cache; the hub id of timm's pretrained
    config) and in timm's legacy torch-hub checkpoint folder.
    """
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception as err:  # noqa: BLE001 - unknown model/tag
        raise BackboneInitError(f"timm has no pretrained config for {model_name!r}: {err}") from err
    if cfg is None:
        raise BackboneInitError(f"timm has no ImageNet weights for {model_name!r}")
    looked: list[str] = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hf_cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
            looked.append(f"HF cache {cfg.hf_hub_id}/{filename}")
    if cfg.url:
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if legacy.is_file():
            return legacy
        looked.append(str(legacy))
    raise BackboneInitError(
        f"ImageNet weights for {model_name!r} are not on disk (looked in: {'; '.join(looked) or 'nowhere'}); "
        "nothing is downloaded. Put them in the Hugging Face cache or pass init='imagenet:/path/to/weights'."
    )


def resolve_weights(model_name: str, init: str | os.PathLike) -> tuple[InitSpec, Path | None]:
    """Parse `init` and return it with the weights file to read (None for scratch)."""
    spec = InitSpec.parse(init)
    if spec.kind == SCRATCH:
        return spec, None
    if spec.kind == IMAGENET and spec.path is None:
        return spec, find_imagenet_weights(model_name)
    return spec, spec.path


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    init: str,
    source: Path | None,
    head_prefixes: Iterable[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Load `state_dict` into `module`, head keys excluded; report what loaded.

    Head keys (those under `head_prefixes`) are never loaded: the task brings its own head. With `strict`, keys
    missing from the file or unknown to the module raise `BackboneInitError`; shape mismatches always raise.
    """
    prefixes = tuple(head_prefixes)
    body_sd = {k: v for k, v in state_dict.items() if not _is_head(k, prefixes)}
    dropped_head = sorted(k for k in state_dict if _is_head(k, prefixes))
    where = str(source) if source is not None else "state dict"
    own = module.state_dict()
    wrong = [k for k, v in body_sd.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong:  # a different architecture or width
        k = wrong[0]
        raise BackboneInitError(
            f"{where}: weights do not fit the backbone: {len(wrong)} tensor(s) with other shapes, e.g. {k}: "
            f"file {tuple(body_sd[k].shape)} vs model {tuple(own[k].shape)}"
        )
    result = module.load_state_dict(body_sd, strict=False)
    missing = [k for k in result.missing_keys if not _is_head(k, prefixes)]
    model_head = [k for k in result.missing_keys if _is_head(k, prefixes)]
    unexpected = list(result.unexpected_keys)
    report = LoadReport(
        init=init,
        source=None if source is None else str(source),
        sha256=file_sha256(source, length=16) if source is not None and source.is_file() else None,
        loaded=sorted(set(body_sd) - set(unexpected)),
        missing=missing,
        unexpected=unexpected,
        head=sorted(set(dropped_head) | set(model_head)),
    )
    if not report.loaded:
        raise BackboneInitError(f"{where}: no key matches the backbone (first keys: {list(state_dict)[:3]})")
    if strict and (missing or unexpected):
        raise BackboneInitError(
            f"{where}: weights do not match the backbone: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); pass strict=False to load anyway"
        )
    return report


def create_backbone(
    model_name: str,
    init: str | os.PathLike = SCRATCH,
    *,
    num_classes: int = 0,
    features_only: bool = False,
    out_indices: Iterable[int] | None = None,
    strict: bool = True,
    drop_path_rate: float = 0.0,
) -> tuple[nn.Module, LoadReport]:
    """A timm model named `model_name` with initial weights from `init` (see the module docstring).

    num_classes:   classifier outputs (0: no head, the model returns pooled features).
    features_only: return timm's hierarchical feature extractor instead (a list of (B, C_i, H/r_i, W/r_i));
                   `out_indices` picks levels (model.feature_info lists channels and reductions).
    drop_path_rate: timm's stochastic-depth rate (SparK fine-tunes ResNet-50 with 0.05).
    The weights are loaded into the plain model first (so the report is exact), then timm wraps that same
    state into its feature extractor.
    """
    spec, weights = resolve_weights(model_name, init)
    state_dict, meta = None, None
    if spec.kind == PRETRAINED:
        state_dict, meta = read_exported(weights, model_name)
    elif weights is not None:
        state_dict = read_state_dict(weights)
    arch = architecture_kwargs(meta)  # e.g. a MaskedCLIP encoder's depth
    base = timm.create_model(
        model_name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path_rate, **arch
    )
    heads = head_keys(model_name)
    if state_dict is None:
        report = LoadReport(init=SCRATCH, head=sorted(k for k in base.state_dict() if _is_head(k, heads)))
    else:
        report = load_into(base, state_dict, init=spec.kind, source=weights, head_prefixes=heads, strict=strict)
    if not features_only:
        return base, report
    kwargs = {"drop_path_rate": drop_path_rate, **arch}
    kwargs |= {} if out_indices is None else {"out_indices": tuple(out_indices)}
    if weights is None:
        return timm.create_model(model_name, pretrained=False, features_only=True, **kwargs), report
    # timm's features_only builder renames modules (e.g. stages.0 -> stages_0); let it map the loaded state.
    loaded_sd = {k: v for k, v in base.state_dict().items() if not _is_head(k, heads)}
    features = timm.create_model(
        model_name,
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay={"state_dict": loaded_sd, "source": "", "file": None, "hf_hub_id": None},
        **kwargs,
    )
    return features, report
