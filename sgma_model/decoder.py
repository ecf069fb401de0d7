"""All-MLP (SegFormer-style) decoder over the four fused scales."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgma_model.layers import LayerNorm2d


class AllMLPDecoder(nn.Module):
    """Per-scale 1x1 projection to ``embed_dim``, upsampling to stride 4, concat, 1x1 fuse, classifier.

    Uses per-pixel LayerNorm instead of SegFormer's BatchNorm so pixels and samples stay independent.
    Returns logits at stride 4; the model upsamples them to the input resolution.
    """

    def __init__(self, in_channels: Sequence[int], embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(c, embed_dim, 1) for c in in_channels])
        self.fuse = nn.Sequential(
            nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1), LayerNorm2d(embed_dim), nn.GELU()
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:  # list of (B, C_i, H_i, W_i)
        size = feats[0].shape[-2:]
        ups = [
            F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
            for i, (p, f) in enumerate(zip(self.proj, feats, strict=True))
        ]
        x = self.fuse(torch.cat(ups, dim=1))  # (B, E, H/4, W/4)
        return self.classifier(self.dropout(x))  # (B, K, H/4, W/4)
