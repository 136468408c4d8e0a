"""M2IB saliency: a multi-modal information bottleneck on one vision layer (Wang et al., NeurIPS 2023).

For every (image, prompt) item a per-token, per-channel mask lambda is learnt at the output of ViT block ``layer``:
the block's output is replaced (forward hook on our model instance) by z = lambda*x + (1-lambda)*noise and the
vision tower runs on. Loss per item = beta * mean capacity (KL to the noise prior) - cos(image embedding, prompt
embedding); Adam on the mask parameters for ``steps`` steps. The information map (capacity summed over channels
at the patch tokens) is upsampled bilinearly to the CLIP input and min-max scaled to [0,1].

Defaults: the release (M2IB `scripts/iba.py` + `methods.py`, as MedCLIP-SAMv2 and MWM `text2region` run them):
standard-normal noise on the raw features and capacity against N(0, 1) (``noise_stats='raw'``; the release's
``var`` reaches its bottleneck but is never used, so it always computes with variance 1), 10 noise copies per
step with their fitting terms averaged (``noise_samples=10``), and the map of the last forward pass, i.e. before
the final optimiser step (``map_at='last_forward'``).

Preset "fast" (``build_saliency({'method': 'm2ib', 'preset': 'fast'})``; provenance ``preset: fast``): features
standardised with the item's own per-channel mean/std over tokens, as IBA does with its estimated statistics
(``noise_stats='empirical'``), one noise copy per step, the map at the final mask (``map_at='final'``): ~10x less
work, different maps.

Exact shortcuts (any preset): the noise is drawn once from a generator seeded by ``seed`` and shared by every
item, so a batched result equals the one-image result; the blocks before the bottleneck do not depend on the mask,
so they run once and each step runs only the rest of the tower, its last block for the class token only
(``reuse_prefix``, `vit_suffix.py`; checked against the model's own embedding, else the whole tower runs per step).
``layer`` counts blocks from 0 (the release's ``--vlayer 7`` is ``layer=7``); a layer beyond the tower's depth is
clamped to the last block with a warning. Precision is the caller's (`localize.precision.autocast`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from localize.saliency.bottleneck import TokenBottleneck
from localize.saliency.common import token_grid, tokens_to_image, vit_trunk
from localize.saliency.vit_suffix import VisionSuffix


@contextlib.contextmanager
def forward_hook(module: nn.Module, hook: Callable) -> Iterator[None]:
    """Register a forward hook for the duration of a ``with`` block."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _BottleneckHook:
    """Forward hook: replaces a block's output by the bottleneck's z (noise of the current step), keeps capacity.

    The block's output holds S noise samples per item, item-major ((N*S),T,C): all S copies of an item carry the
    same clean features and get the item's one mask with S different noise draws.
    """

    def __init__(self, bottleneck: TokenBottleneck, eps_kstc: torch.Tensor) -> None:
        self.bottleneck, self.eps_kstc = bottleneck, eps_kstc
        self.step = 0
        self.capacity_ntc: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple, out_mtc: torch.Tensor) -> torch.Tensor:
        eps_stc = self.eps_kstc[self.step]
        out_nstc = out_mtc.unflatten(0, (-1, eps_stc.shape[0]))
        self.capacity_ntc = self.bottleneck.capacity(out_nstc[:, 0])
        return self.bottleneck(out_nstc, eps_stc).flatten(0, 1)


@dataclass(frozen=True)
class M2IBRun:
    """Everything one M2IB call learnt: saliency (B,P,H,W), final lambda (B*P,T,C), loss per step (steps,)."""

    saliency_bphw: torch.Tensor
    lambda_ntc: torch.Tensor
    loss_s: torch.Tensor


NOISE_STATS = ("raw", "empirical")
MAP_AT = ("last_forward", "final")
# Named starting points; the release's values are the dataclass defaults. Provenance lists every parameter.
M2IB_PRESETS: dict[str, dict] = {
    "release": {},
    "fast": {"noise_stats": "empirical", "noise_samples": 1, "map_at": "final"},
}


@dataclass(frozen=True)
class M2IBSaliency:
    """Information-bottleneck attribution; defaults are the release's (see the module docstring)."""

    layer: int = 7
    beta: float = 0.1
    steps: int = 10
    lr: float = 1.0
    noise_samples: int = 10
    noise_stats: str = "raw"
    map_at: str = "last_forward"
    noise_var: float = 1.0  # variance of the noise prior; the release's bottleneck always uses 1
    seed: int = 0
    preset: str = "release"  # the name of the preset these parameters started from (provenance)
    # Run the blocks before `layer` once instead of every step (exact, so not part of the provenance).
    reuse_prefix: bool = True

    @classmethod
    def from_preset(cls, preset: str = "release", **params) -> M2IBSaliency:
        """The preset's parameters, then ``params`` on top."""
        if preset not in M2IB_PRESETS:
            raise ValueError(f"Unknown m2ib preset {preset!r}: use one of {sorted(M2IB_PRESETS)}.")
        return cls(**{**M2IB_PRESETS[preset], **params, "preset": preset})

    def __post_init__(self) -> None:
        if (
            self.layer < 0
            or self.steps < 1
            or self.noise_var <= 0
            or self.lr <= 0
            or self.beta < 0
            or self.noise_samples < 1
        ):
            raise ValueError(
                f"m2ib needs layer >= 0, steps >= 1, noise_var > 0, lr > 0, beta >= 0, noise_samples >= 1; got {self}."
            )
        if self.noise_stats not in NOISE_STATS:
            raise ValueError(f"m2ib noise_stats must be one of {NOISE_STATS}, got {self.noise_stats!r}.")
        if self.map_at not in MAP_AT:
            raise ValueError(f"m2ib map_at must be one of {MAP_AT}, got {self.map_at!r}.")
        if self.preset not in M2IB_PRESETS:
            raise ValueError(f"Unknown m2ib preset {self.preset!r}: use one of {sorted(M2IB_PRESETS)}.")

    def provenance(self, model: nn.Module | None = None) -> dict:
        """Method and parameters; with ``model``, also the block actually used (``effective_layer``)."""
        params = asdict(self)
        params.pop("reuse_prefix")  # a speed option: results are identical either way
        described = {"method": "m2ib", "gradient_free": False, **params}
        if model is not None:
            described["effective_layer"] = self.effective_layer(model)
        return described

    def effective_layer(self, model: nn.Module) -> int:
        depth = len(vit_trunk(model).blocks)
        if self.layer >= depth:
            warnings.warn(
                f"m2ib layer {self.layer} does not exist in a {depth}-block vision tower; using the last "
                f"block ({depth - 1}).",
                stacklevel=3,
            )
            return depth - 1
        return self.layer

    def __call__(self, model: nn.Module, images_b3hw: torch.Tensor, text_pd: torch.Tensor) -> torch.Tensor:
        """Saliency (B,P,H,W) in [0,1] for CLIP-preprocessed images and unit-norm prompt embeddings (P,D)."""
        return self.run(model, images_b3hw, text_pd, map_only=True).saliency_bphw

    def run(
        self, model: nn.Module, images_b3hw: torch.Tensor, text_pd: torch.Tensor, map_only: bool = False
    ) -> M2IBRun:
        """The optimisation and its map. ``map_only`` with ``map_at='last_forward'`` skips the work of the last step
        that cannot change the map (its tower pass, backward and optimiser update: the map is that step's capacity,
        which depends only on the mask before its update): the same map, one step less work; the run's lambda and
        losses then stop one step short."""
        trunk = vit_trunk(model)
        block = trunk.blocks[self.effective_layer(model)]
        n_img, n_txt = images_b3hw.shape[0], text_pd.shape[0]
        device = images_b3hw.device

        # 1. The layer's clean output (and, for noise_stats 'empirical', each image's statistics).
        captured: list[torch.Tensor] = []
        with torch.no_grad(), forward_hook(block, lambda m, i, out: captured.append(out)):
            clean_bd = model.encode_image(images_b3hw)
        feat_btc = captured[0].float()
        # The blocks up to `layer` do not depend on the mask: run only the rest of the tower per step when that
        # reproduces the model's own embedding (timm ViT + open_clip head); otherwise re-run the whole tower.
        suffix = VisionSuffix(model, trunk, self.effective_layer(model))
        use_suffix = False
        if self.reuse_prefix:
            use_suffix = suffix.reproduces(captured[0], clean_bd)
        if self.noise_stats == "empirical":
            mean_b1c = feat_btc.mean(dim=1, keepdim=True)
            std_b1c = feat_btc.std(dim=1, keepdim=True).clamp_min(1e-6)
        else:
            mean_b1c, std_b1c = torch.zeros_like(feat_btc[:, :1]), torch.ones_like(feat_btc[:, :1])

        # 2. Items = images x prompts, item b*P + p, each run as S noise samples (rows m = item*S + s); noise shared
        #    by all items (seeded, batch-independent).
        n_tokens, channels = feat_btc.shape[1:]
        n_samples = self.noise_samples
        bottleneck = TokenBottleneck(
            mean_b1c.repeat_interleave(n_txt, 0),
            std_b1c.repeat_interleave(n_txt, 0),
            n_tokens,
            noise_var=self.noise_var,
        )
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        eps_kstc = torch.randn((self.steps, n_samples, n_tokens, channels), generator=generator).to(device)
        images_m3hw = images_b3hw.repeat_interleave(n_txt * n_samples, 0)
        text_md = text_pd.float().repeat_interleave(n_samples, 0).repeat(n_img, 1)
        optimizer = torch.optim.Adam(bottleneck.parameters(), lr=self.lr)

        # 3. Optimise the mask: the hook swaps the block's output for the bottleneck's z.
        hook = _BottleneckHook(bottleneck, eps_kstc)
        feat_mtc = captured[0].repeat_interleave(n_txt * n_samples, 0) if use_suffix else None
        losses = []
        with forward_hook(block if not use_suffix else suffix.bottleneck_site, hook):
            for step in range(self.steps):
                if map_only and self.map_at == "last_forward" and step == self.steps - 1:
                    with torch.no_grad():  # the capacity the hook would record on this step's forward pass
                        hook.capacity_ntc = bottleneck.capacity(feat_btc.repeat_interleave(n_txt, 0))
                    break
                hook.step = step
                with torch.enable_grad():
                    image_md = suffix(feat_mtc) if use_suffix else model.encode_image(images_m3hw)
                    fitting_m = F.cosine_similarity(image_md.float(), text_md, dim=-1)
                    fitting_n = fitting_m.view(-1, n_samples).mean(dim=1)
                    # Sum over items: each item's gradient reaches only its own mask, so batching changes nothing.
                    loss = (self.beta * hook.capacity_ntc.mean(dim=(1, 2)) - fitting_n).sum()
                    (grad,) = torch.autograd.grad(loss, bottleneck.alpha_ntc)
                bottleneck.alpha_ntc.grad = grad
                optimizer.step()
                losses.append(loss.detach() / len(fitting_n))

        # 4. Information map: capacity summed over channels at the patch tokens, from the last forward pass (the
        #    release: lambda before the final update) or at the final lambda.
        with torch.no_grad():
            if self.map_at == "last_forward":
                capacity_ntc = hook.capacity_ntc.detach()
            else:
                capacity_ntc = bottleneck.capacity(feat_btc.repeat_interleave(n_txt, 0))
            info_nt = capacity_ntc.sum(dim=-1)
            grid_hw = token_grid(trunk, images_b3hw.shape[-2:])
            saliency_nhw = tokens_to_image(info_nt[:, trunk.num_prefix_tokens :], grid_hw, images_b3hw.shape[-2:])
        return M2IBRun(
            saliency_nhw.view(n_img, n_txt, *saliency_nhw.shape[-2:]),
            torch.sigmoid(bottleneck.alpha_ntc.detach()),
            torch.stack(losses) if losses else torch.empty(0, device=device),
        )
