"""The weight-shared 4-stage hierarchical encoder with one input stem per modality.

A ConvNeXt-style design in plain torch (no timm / torchvision): a per-modality 4x4 stride-4 patchify
stem maps each modality's band count to the first stage width; the four stages (depthwise 7x7 conv,
per-pixel LayerNorm, inverted-bottleneck MLP, layer scale, residual) and the three 2x2 stride-2
downsamplings are shared by every modality. Strides are 4, 8, 16, 32.

Per-pixel LayerNorm (no BatchNorm) keeps every sample independent of the others, so encoding only the
samples that hold a modality (a sub-batch) gives the same features as encoding the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sgma_model.layers import Conv1x1, LayerNorm2d


@dataclass(frozen=True)
class FeatureInfo:
    """What one encoder stage outputs."""

    channels: int
    stride: int


@dataclass(frozen=True)
class EncoderConfig:
    """Widths and depths of the four stages."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    layer_scale_init: float = 1e-6


ENCODER_SIZES: Mapping[str, EncoderConfig] = {
    # tiny: the whole SGMA model stays under 3 M parameters (CPU tests, demo model)
    "tiny": EncoderConfig(dims=(24, 48, 96, 192), depths=(2, 2, 4, 2)),
    # small: ~ConvNeXt-nano width
    "small": EncoderConfig(dims=(64, 128, 256, 512), depths=(2, 2, 6, 2)),
    # base: ConvNeXt-T stages (28 M), the size class of the paper's PVT-v2-b2 / ResNet-50 (25 M)
    "base": EncoderConfig(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3)),
}


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale_init: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pw1 = Conv1x1(dim, 4 * dim)
        self.act = nn.GELU()
        self.pw2 = Conv1x1(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale_init)))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        y = self.pw2(self.act(self.pw1(self.norm(self.dwconv(x)))))
        return x + self.gamma * y


class Stem(nn.Module):
    """Per-modality input stem: bands -> stage-1 width at stride 4."""

    def __init__(self, in_bands: int, dim: int) -> None:
        super().__init__()
        self.in_bands = in_bands
        self.conv = nn.Conv2d(in_bands, dim, kernel_size=4, stride=4)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, bands, H, W) -> (B, C1, H/4, W/4)
        return self.norm(self.conv(x))


class SharedEncoder(nn.Module):
    """Per-modality stems in front of four weight-shared stages.

    Args:
        modalities: modality name -> band count, in model order.
        config: stage widths and depths.
    """

    def __init__(self, modalities: Mapping[str, int], config: EncoderConfig) -> None:
        super().__init__()
        dims, depths = config.dims, config.depths
        self.stems = nn.ModuleDict({name: Stem(bands, dims[0]) for name, bands in modalities.items()})
        self.downsamples = nn.ModuleList(
            [
                nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
                for i in range(3)
            ]
        )
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*[ConvNeXtBlock(dims[i], config.layer_scale_init) for _ in range(depths[i])])
                for i in range(4)
            ]
        )
        self.out_norms = nn.ModuleList([LayerNorm2d(d) for d in dims])
        self.feature_info: tuple[FeatureInfo, ...] = tuple(
            FeatureInfo(channels=d, stride=4 * 2**i) for i, d in enumerate(dims)
        )

    @property
    def reduction(self) -> int:
        """Total stride of the deepest stage: inputs must be a multiple of it (the model pads)."""
        return self.feature_info[-1].stride

    def forward(self, x: Tensor, modality: str) -> list[Tensor]:
        """Encode one modality: (B, bands, H, W) -> four (B, C_i, H/s_i, W/s_i) maps."""
        h = self.stems[modality](x)
        feats: list[Tensor] = []
        for i in range(4):
            if i > 0:
                h = self.downsamples[i - 1](h)
            h = self.stages[i](h)
            feats.append(self.out_norms[i](h))
        return feats
