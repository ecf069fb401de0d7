"""Small building blocks shared by the encoder, the fusion modules and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 conv, ``weight`` (out, in, 1, 1): on a channels-last input one GEMM per sample over its pixels,
    so the output stays channels-last and no layout copy is made.

    The encoder's and the fusion's LayerNorms leave their outputs channels-last (a permuted view); a 1x1
    ``conv2d`` on one CPU thread would copy each to NCHW first. Per sample, so a sample's result does not
    depend on the batch it is in (bitwise).
    """
    if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return F.conv2d(x, weight, bias)
    w = weight[:, :, 0, 0]
    if x.shape[0] == 1:
        return F.linear(x.permute(0, 2, 3, 1), w, bias).permute(0, 3, 1, 2)
    y = torch.stack([F.linear(xi.permute(1, 2, 0), w, bias) for xi in x])  # (B, H, W, out)
    return y.permute(0, 3, 1, 2)


class Conv1x1(nn.Conv2d):
    """``nn.Conv2d(in, out, 1)`` (same parameters and state dict) that runs :func:`pointwise`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return pointwise(x, self.weight, self.bias)


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
