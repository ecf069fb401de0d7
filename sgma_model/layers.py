"""Small building blocks shared by the encoder, the fusion modules and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor, per pixel.

    Per-pixel (not per-batch, not per-image) statistics keep samples and pixels independent, so a masked
    pixel or an absent sample can never leak into another one through normalisation.
    """

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask``; entries outside the mask get 0.

    A slice with no True entry gives all zeros (not NaN), and so do its gradients. Computed in float32.
    """
    logits = logits.float().masked_fill(~mask, float("-inf"))
    peak = logits.amax(dim=dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)).detach()
    e = torch.exp(logits - peak)  # exp(-inf) = 0 with zero gradient
    return e / e.sum(dim=dim, keepdim=True).clamp_min(1e-30)
