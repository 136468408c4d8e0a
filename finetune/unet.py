"""A UNet-style segmentation network on a timm backbone's hierarchical features (timm features_only); a plain ViT's
single-stride features first become a pyramid (finetune.vit_pyramid)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from finetune.backbone import create_backbone, plain_vit_depth
from finetune.vit_pyramid import SimplePyramid, vit_levels


class ConvBlock(nn.Sequential):
    """Two 3x3 conv -> BatchNorm -> ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """From the coarsest encoder level up: upsample to the next finer level, concatenate it, ConvBlock.

    encoder_channels: channels of the encoder levels, finest first (timm feature_info order).
    decoder_channels: output channels of the decoder stages, coarsest stage first; one per skip level
                      (len(encoder_channels) - 1), the last one also feeds the classifier.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        skips = list(encoder_channels[:-1])[::-1]  # finer levels, coarse -> fine
        if len(decoder_channels) != len(skips):
            raise ValueError(f"need {len(skips)} decoder channels (one per skip level), got {len(decoder_channels)}")
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        widths = zip(in_channels, skips, decoder_channels, strict=True)
        self.stages = nn.ModuleList(ConvBlock(c_in + c_skip, c_out) for c_in, c_skip, c_out in widths)
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for stage, skip in zip(self.stages, reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.classifier(x)


class UNet(nn.Module):
    """Backbone features (timm features_only) -> UNetDecoder -> logits at the input size (B, num_classes, H, W).

    A plain ViT (e.g. a MaskedCLIP export) gives four of its blocks' outputs at one stride (16); `SimplePyramid`
    rescales them to strides 4, 8, 16 and 32 before the decoder (BEiT / MAE segmentation's neck)."""

    def __init__(
        self,
        backbone: str = "resnet50",
        init: str = "scratch",
        num_classes: int = 2,
        decoder_channels: Sequence[int] | None = None,
        strict_load: bool = True,
    ) -> None:
        super().__init__()
        depth = plain_vit_depth(backbone, init)  # an export's (a MaskedCLIP encoder keeps the ViT's first blocks)
        levels = None if depth is None else vit_levels(depth)
        self.encoder, self.load_report = create_backbone(
            backbone, init, features_only=True, out_indices=levels, strict=strict_load
        )
        channels: list[int] = self.encoder.feature_info.channels()
        self.neck: nn.Module = nn.Identity() if depth is None else SimplePyramid(channels[-1])
        if decoder_channels is None:  # halve the width at every finer level, at least 16
            decoder_channels = [max(16, c // 2) for c in channels[:-1]][::-1]
        self.decoder = UNetDecoder(channels, decoder_channels, num_classes)

    def forward(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        feats = self.neck(self.encoder(image_b3hw))  # finest (stride 2 or 4) ... coarsest (stride 32)
        logits = self.decoder(feats)
        # The finest level has stride 2 (ResNet) or 4 (ConvNeXt): bring logits to the input size.
        return F.interpolate(logits, size=image_b3hw.shape[-2:], mode="bilinear", align_corners=False)
