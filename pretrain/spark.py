"""SparK masked image modelling: sparse encoder -> densify -> light decoder -> loss on masked patches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from pretrain.decoder import SparkDecoder, decoder_widths
from pretrain.densify import Densify, spark_kernel_sizes
from pretrain.shuffle_decoder import PixelShuffleDecoder
from pretrain.sparse_encoder import SparseEncoder

# Prefix of the timm encoder's keys in `SparkMIM.state_dict()` (export strips it).
ENCODER_PREFIX = "encoder.model."
_PATCH_EPS = 1e-6
# SparK's pretraining drop-path rates (`pretrain/models/__init__.py`); other backbones: 0.
SPARK_DROP_PATH = {
    "resnet50": 0.05,
    "resnet101": 0.08,
    "resnet152": 0.10,
    "resnet200": 0.15,
    "convnext_small": 0.2,
    "convnext_base": 0.3,
    "convnext_large": 0.4,
}


def spark_drop_path(backbone: str) -> float:
    """SparK's drop-path rate for `backbone` (a timm name, tag allowed), 0 when SparK lists none."""
    return SPARK_DROP_PATH.get(backbone.split(".")[0], 0.0)


@dataclass(frozen=True)
class FastPath:
    """Speed settings of `SparkMIM` that keep its function (same loss, same gradients up to rounding).

    channels_last: NHWC memory format for the model and its input (oneDNN/cuDNN prefer it on some hardware).
    bf16: bfloat16 autocast of encoder, densify and decoder, on a GPU or on a CPU with native bf16 (AVX-512 BF16
        or AMX; `cpu_has_native_bf16`); elsewhere ignored, since emulated bf16 is slower than fp32. The loss and
        its target stay fp32. Changes numerics (bf16 has 8 bits of mantissa): see docs/FIDELITY.md.
    compile: `torch.compile` of the decoder (the dense part: about four fifths of the step).
    """

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    def describe(self) -> dict[str, bool]:
        return {"channels_last": self.channels_last, "bf16": self.bf16, "compile": self.compile}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Named settings for the benches and the config (`fast_path:` in the pretraining config).
FAST_PATHS: dict[str, FastPath] = {
    "plain": FastPath(),
    "channels_last": FastPath(channels_last=True),
    "bf16": FastPath(bf16=True),
    "compile": FastPath(compile=True),
    "fast": FastPath(bf16=True),
    "fast_cl": FastPath(channels_last=True, bf16=True),
    "all": FastPath(channels_last=True, bf16=True, compile=True),
}


class PatchTarget(NamedTuple):
    """Per-patch normalised input and the per-patch statistics, shaped to broadcast over the patchified
    image (B,C,h,p,w,p): (B,1,h,1,w,1) when normalised over channels jointly, (B,C,h,1,w,1) per channel."""

    normalised_bchpwp: torch.Tensor
    mean_bch1w1: torch.Tensor
    std_bch1w1: torch.Tensor


def patch_target(img_bCHW: torch.Tensor, patch: int, per_channel: bool = False) -> PatchTarget:
    """Normalise each p x p patch to zero mean, unit variance (unbiased var + 1e-6, as SparK).

    SparK normalises a patch over its C x p x p values jointly (the default); `per_channel` normalises each
    channel of a patch on its own. For grey images repeated to 3 channels the two are identical.
    """
    b, c, H, W = img_bCHW.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {(H, W)} is not a multiple of the patch size {patch}")
    x = img_bCHW.float().reshape(b, c, H // patch, patch, W // patch, patch)
    dims = (3, 5) if per_channel else (1, 3, 5)
    mean = x.mean(dim=dims, keepdim=True)
    std = (x.var(dim=dims, keepdim=True) + _PATCH_EPS).sqrt()
    return PatchTarget((x - mean) / std, mean, std)


def masked_patch_loss(
    pred_bCHW: torch.Tensor, target: PatchTarget, active_b1hw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE between the prediction and the per-patch normalised input, on masked patches only.

    Returns (loss over all masked patches of the batch, loss per image (B,) over its masked patches; 0 for an
    image with none). Visible patches take no part: neither their prediction nor their target matters.
    """
    b, c, h, p, w, _ = target.normalised_bchpwp.shape
    pred = pred_bCHW.float().reshape(b, c, h, p, w, p)
    err_bhw = (pred - target.normalised_bchpwp).square().mean(dim=(1, 3, 5))
    masked_bhw = ~active_b1hw[:, 0]
    err_bhw = torch.where(masked_bhw, err_bhw, 0.0)  # where, not a product: a visible patch cannot even add NaN
    n_masked_b = masked_bhw.sum(dim=(1, 2)).float()
    loss = err_bhw.sum() / n_masked_b.sum().clamp_min(1.0)
    loss_per_image_b = err_bhw.sum(dim=(1, 2)) / n_masked_b.clamp_min(1.0)
    return loss, loss_per_image_b


class SparkMIM(nn.Module):
    """SparK-style masked image modelling on a timm convnet.

    Args:
        backbone: timm model name with hierarchical features (resnet18/50, convnext_tiny/small, ...).
        input_size: default training input side (multiple of the downsample ratio, 32).
        decoder_width: decoder channels at the coarsest level (stride 32), halving at each finer level
            (SparK: 768).
        decoder: "spark" (SparK's decoder: UNet blocks up to full resolution, densify projections 3x3 but 1x1
            at the coarsest level) or "pixel_shuffle" (lighter: blocks up to stride 4, 1x1 projections, a
            pixel-shuffle head; `pretrain.shuffle_decoder`).
        per_channel_target: normalise each channel of a target patch on its own instead of the C x p x p
            values jointly (SparK).
        drop_path_rate: stochastic depth of the encoder; None = SparK's rate for the backbone
            (`SPARK_DROP_PATH`: 0.05 for ResNet-50, 0.2 for ConvNeXt-S, 0 for unlisted ones).
        sync_bn: all-reduce BatchNorm statistics over DDP processes (use this, not Trainer(sync_batchnorm)).

    Inputs to `forward` are images (B,3,H,W) normalised as the caller wishes (the loss target is the same
    image, normalised per patch) and the visible-cell mask (B,1,H/32,W/32), True = visible. The encoder
    zeroes masked pixels itself. `loss` averages over all masked patches of the batch, as SparK does;
    `loss_per_image_b` averages over each image's own masked patches.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        input_size: int = 224,
        decoder_width: int = 768,
        decoder: Literal["spark", "pixel_shuffle"] = "spark",
        per_channel_target: bool = False,
        drop_path_rate: float | None = None,
        sync_bn: bool = False,
        fast: FastPath | None = None,
    ) -> None:
        super().__init__()
        self.fast = fast or FastPath()
        self.backbone = backbone
        self.per_channel_target = per_channel_target
        drop_path = spark_drop_path(backbone) if drop_path_rate is None else drop_path_rate
        self.encoder = SparseEncoder(backbone, sync_bn=sync_bn, drop_path_rate=drop_path)
        self.downsample_ratio: int = self.encoder.downsample_ratio
        self.input_size = input_size
        self.grid_hw((input_size, input_size))  # validates input_size
        enc_channels = self.encoder.channels[::-1]  # coarse to fine
        norm = "layer" if self.encoder.uses_layer_norm else "batch"
        if decoder == "spark":
            widths = decoder_widths(decoder_width, len(enc_channels))
            kernels = spark_kernel_sizes(enc_channels, widths)
            self.decoder = SparkDecoder(self.downsample_ratio, decoder_width, out_channels=3, sync_bn=sync_bn)
        elif decoder == "pixel_shuffle":
            widths, kernels = decoder_widths(decoder_width, len(enc_channels), minimum=8), None
            head = self.encoder.reductions[0]
            self.decoder = PixelShuffleDecoder(widths, head_upsample=head, out_channels=3, sync_bn=sync_bn)
        else:
            raise ValueError(f"unknown decoder {decoder!r}; use 'spark' or 'pixel_shuffle'")
        self.densify = Densify(enc_channels, widths, kernels, norm=norm, sync_bn=sync_bn)
        if self.fast.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.fast.compile:
            self.decoder.compile()  # in place: parameter names (and checkpoints) unchanged

    def grid_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Mask grid (h, w) for an input of size `input_hw`."""
        return self.encoder.grid_hw(tuple(input_hw))

    def forward(self, img_b3HW: torch.Tensor, active_b1hw: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> dict(loss, recon_b3HW, loss_per_image_b); see `masked_patch_loss` and `reconstruction`."""
        x_b3HW = img_b3HW.contiguous(memory_format=torch.channels_last) if self.fast.channels_last else img_b3HW
        with self._autocast(img_b3HW.device):
            # 1. encode the visible cells: sparse features, zero at masked positions, fine to coarse
            feats_bchw = self.encoder(x_b3HW, active_b1hw)
            # 2. densify, coarsest first: masked positions get a learned mask token
            dense_bchw = self.densify(feats_bchw[::-1], active_b1hw)
            # 3. decode to an image of per-patch normalised pixels
            pred_b3HW = self.decoder(dense_bchw)
        # 4. loss on masked patches only
        target = patch_target(img_b3HW, self.downsample_ratio, self.per_channel_target)
        loss, loss_per_image_b = masked_patch_loss(pred_b3HW, target, active_b1hw)
        with torch.no_grad():
            recon_b3HW = self.reconstruction(pred_b3HW, img_b3HW, target, active_b1hw)
        return {"loss": loss, "recon_b3HW": recon_b3HW, "loss_per_image_b": loss_per_image_b.detach()}

    def _autocast(self, device: torch.device) -> torch.autocast:
        """bf16 autocast when the fast path asks for it and the device computes bf16 natively."""
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.fast.bf16 and native)

    def reconstruction(
        self, pred_b3HW: torch.Tensor, img_b3HW: torch.Tensor, target: PatchTarget, active_b1hw: torch.Tensor
    ) -> torch.Tensor:
        """Prediction brought back to pixel values with each patch's own mean/std; visible patches are the
        input itself (for visualisation)."""
        b, c, h, p, w, _ = target.normalised_bchpwp.shape
        pred = pred_b3HW.float().reshape(b, c, h, p, w, p) * target.std_bch1w1 + target.mean_bch1w1
        pred_b3HW = pred.reshape(img_b3HW.shape)
        active_b1HW = active_b1hw.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
        return torch.where(active_b1HW, img_b3HW.float(), pred_b3HW).to(img_b3HW.dtype)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights with plain timm names (classifier head absent).

        `timm.create_model(backbone).load_state_dict(sd, strict=False)` reports no unexpected key and, as
        missing, only the head: `fc.*` for ResNets; `head.norm.*` and `head.fc.*` for ConvNeXts (their head
        LayerNorm is not used by the pretraining). See `pretrain.export.load_backbone` for a checked load.
        """
        return {k: v.detach().clone() for k, v in self.encoder.model.state_dict().items()}
