"""Fusion modules applied at every encoder scale: SGF (the paper's), mean and concatenation baselines.

All share one call contract::

    fused, robustness = fusion(names, feats, valid)
    names       sequence of the M' modality names present in this batch (model order)
    feats       (B, M', C, H, W) per-modality features of one scale (zeros where a sample lacks one)
    valid       (B, M', H, W) bool, True where modality m holds data at that feature pixel
    fused       (B, C, H, W), exactly 0 at pixels where no modality is valid
    robustness  (B, M', H, W) float32 fusion weights: sum to 1 over valid modalities, 0 elsewhere

Only the modalities in ``names`` are touched, so an absent modality costs no compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgma_model.layers import Conv1x1, LayerNorm2d, masked_softmax


def _uniform_weights(valid: Tensor) -> Tensor:
    """(B, M, H, W) bool -> uniform weights over valid modalities, 0 where none."""
    v = valid.float()
    return v / v.sum(dim=1, keepdim=True).clamp_min(1.0)


class ModalityProjector(nn.Module):
    """Depthwise 11x11, 7x7 and 3x3 convs in parallel, summed, then a 1x1 conv (residual, LayerNorm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.ModuleList([nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (11, 7, 3)])
        self.pw = Conv1x1(dim, dim)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        # the three parallel depthwise convs equal one 11x11 depthwise conv with the smaller kernels
        # zero-padded into its centre: same output and gradients, a third of the conv calls
        weight = sum(F.pad(conv.weight, [(11 - conv.kernel_size[0]) // 2] * 4) for conv in self.dw)
        bias = sum(conv.bias for conv in self.dw)
        # channels-last: oneDNN's depthwise 11 x 11 kernel on NCHW runs ~20x slower on a CPU (118 vs 6 ms at
        # 24 x 144 x 144, one thread); that conv was 38 % of a forward
        y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, padding=5, groups=x.shape[1])
        y = y.contiguous()
        return self.norm(x + self.pw(y))


class SGF(nn.Module):
    """Semantic-Guided Fusion at one scale (MODEL.md, steps 1-5).

    1. per-modality projector into a common space z[m];
    2. one shared 1x1 class-aware filter: z[m] -> K class-response maps c[m];
    3. K soft prototypes: per class, a softmax of c[m][k] over all valid (modality, pixel) pairs pools z;
    4. spatial perceptron: at every pixel, K prototype queries attend over the M' modality keys; the
       K outputs are averaged into a semantic reference feature;
    5. robustness perceptron: the reference queries the M' modality keys; the head-averaged attention
       weights over modalities are the robustness maps and, applied to the values, give the fused
       feature (fusion weight == robustness, exactly).

    Absent (modality, pixel) pairs are excluded from the prototype pooling and from both softmaxes over
    modalities; a pixel with no valid modality gets weights 0 and fused feature 0.
    """

    def __init__(self, modalities: Sequence[str], dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SGF dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.num_classes = dim, num_heads, num_classes
        self.projectors = nn.ModuleDict({m: ModalityProjector(dim) for m in modalities})
        self.class_filter = Conv1x1(dim, num_classes)
        self.proto_norm = nn.LayerNorm(dim)
        # spatial perceptron
        self.sp_q = nn.Linear(dim, dim)
        self.sp_k = Conv1x1(dim, dim)
        self.sp_v = Conv1x1(dim, dim)
        self.sp_o = Conv1x1(dim, dim)
        self.ref_norm = LayerNorm2d(dim)
        # robustness perceptron
        self.rp_q = Conv1x1(dim, dim)
        self.rp_k = Conv1x1(dim, dim)
        self.rp_v = Conv1x1(dim, dim)
        self.rp_o = Conv1x1(dim, dim)
        self.out_norm = LayerNorm2d(dim)

    def _per_modality(self, conv: nn.Module, z: Tensor) -> Tensor:
        b, m, c, h, w = z.shape
        return conv(z.reshape(b * m, c, h, w)).reshape(b, m, -1, h, w)

    def forward(self, names: Sequence[str], feats: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        b, m, c, h, w = feats.shape
        nh, hd, n = self.num_heads, c // self.num_heads, h * w
        scale = 1.0 / math.sqrt(hd)
        z = torch.stack([self.projectors[name](feats[:, i]) for i, name in enumerate(names)], dim=1)
        z = z * valid.unsqueeze(2).to(z.dtype)  # (B, M, C, H, W), 0 where absent
        any_valid = valid.any(dim=1)  # (B, H, W)

        # 2-3. class maps and soft prototypes pooled over valid (modality, pixel) pairs
        cls = self._per_modality(self.class_filter, z)  # (B, M, K, H, W)
        cls = cls.permute(0, 2, 1, 3, 4).reshape(b, self.num_classes, m * n)  # (B, K, M*N)
        pool = masked_softmax(cls, valid.reshape(b, 1, m * n), dim=-1)  # (B, K, M*N)
        z_flat = z.permute(0, 1, 3, 4, 2).reshape(b, m * n, c)  # (B, M*N, C)
        protos = self.proto_norm(torch.bmm(pool.to(z_flat.dtype), z_flat))  # (B, K, C)

        # 4. spatial perceptron: K prototype queries over the M keys at each pixel, averaged over K
        q = self.sp_q(protos).reshape(b, self.num_classes, nh, hd)  # (B, K, h, d)
        k = self._per_modality(self.sp_k, z).reshape(b, m, nh, hd, n)  # (B, M, h, d, N)
        v = self._per_modality(self.sp_v, z).reshape(b, m, nh, hd, n)
        scores = torch.einsum("bkhd,bmhdn->bhkmn", q, k) * scale  # (B, h, K, M, N)
        attn = masked_softmax(scores, valid.reshape(b, 1, 1, m, n), dim=3)
        attn = attn.mean(dim=2)  # mean over the K queries: (B, h, M, N)
        ref = torch.einsum("bhmn,bmhdn->bhdn", attn.to(v.dtype), v).reshape(b, c, h, w)
        ref = self.ref_norm(self.sp_o(ref))  # semantic reference (B, C, H, W)

        # 5. robustness perceptron: reference queries the M keys; weights = robustness = fusion weights
        q2 = self.rp_q(ref).reshape(b, nh, hd, n)  # (B, h, d, N)
        k2 = self._per_modality(self.rp_k, z).reshape(b, m, nh, hd, n)
        scores2 = torch.einsum("bhdn,bmhdn->bhmn", q2, k2) * scale  # (B, h, M, N)
        robust = masked_softmax(scores2, valid.reshape(b, 1, m, n), dim=2).mean(dim=1)  # (B, M, N)
        v2 = self._per_modality(self.rp_v, z).reshape(b, m, c, n)  # (B, M, C, N)
        fused = torch.einsum("bmn,bmcn->bcn", robust.to(v2.dtype), v2).reshape(b, c, h, w)
        fused = self.out_norm(self.rp_o(fused)) * any_valid.unsqueeze(1).to(fused.dtype)
        return fused, robust.reshape(b, m, h, w)


class MeanFusion(nn.Module):
    """Baseline: mean of the encoder features over the modalities valid at each pixel."""

    def __init__(self, modalities: Sequence[str], dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()

    def forward(self, names: Sequence[str], feats: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        weights = _uniform_weights(valid)  # (B, M, H, W)
        fused = (feats * weights.unsqueeze(2).to(feats.dtype)).sum(dim=1)  # (B, C, H, W)
        return fused, weights


class ConcatFusion(nn.Module):
    """Baseline: concatenate all model modalities (zeros where absent) and mix with a 1x1 conv."""

    def __init__(self, modalities: Sequence[str], dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.mix = nn.Sequential(Conv1x1(dim * len(self.modalities), dim), LayerNorm2d(dim))

    def forward(self, names: Sequence[str], feats: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        b, _, c, h, w = feats.shape
        slots = [feats.new_zeros(b, c, h, w) for _ in self.modalities]
        for i, name in enumerate(names):
            slots[self.modalities.index(name)] = feats[:, i] * valid[:, i].unsqueeze(1).to(feats.dtype)
        any_valid = valid.any(dim=1).unsqueeze(1)
        fused = self.mix(torch.cat(slots, dim=1)) * any_valid.to(feats.dtype)
        return fused, _uniform_weights(valid)


FUSIONS: dict[str, type[nn.Module]] = {"sgf": SGF, "mean": MeanFusion, "concat": ConcatFusion}
