"""Modality dropout for training: random non-empty modality subsets per sample and cloud-like holes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def cloud_holes(
    shape: tuple[int, int, int],
    coverage: Tensor,
    generator: torch.Generator | None = None,
    *,
    scale_px: int = 16,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Cloud-like blobs: smooth noise thresholded per sample at its ``coverage`` quantile.

    Args:
        shape: (B, H, W).
        coverage: (B,) fraction of pixels to cover per sample, in [0, 1].
        scale_px: typical blob size in pixels (noise is drawn on a grid this much coarser, then upsampled).
    Returns:
        (B, H, W) bool, True inside a hole.
    """
    b, h, w = shape
    gh, gw = max(2, -(-h // scale_px) + 1), max(2, -(-w // scale_px) + 1)
    noise = torch.randn((b, 1, gh, gw), generator=generator, device=device)
    noise = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[:, 0]  # (B, H, W)
    flat = noise.flatten(1)
    q = torch.quantile(flat, (1.0 - coverage.to(flat)).clamp(0, 1), dim=1).diagonal()  # (B,)
    holes = noise > q.view(b, 1, 1)
    return holes & (coverage.view(b, 1, 1) > 0)


def modality_dropout(
    inputs: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None,
    generator: torch.Generator | None = None,
    *,
    subset_prob: float = 0.7,
    hole_prob: float = 0.3,
    max_hole_coverage: float = 0.6,
    hole_modalities: Sequence[str] | None = None,
    scale_px: int = 16,
) -> dict[str, Tensor]:
    """Return new masks that drop whole modalities per sample and punch cloud-like holes.

    With probability ``subset_prob`` a sample keeps a uniformly drawn non-empty subset of the modalities
    it has (otherwise all of them); then each kept (sample, modality) gets, with probability ``hole_prob``,
    cloud-like holes covering up to ``max_hole_coverage`` of its pixels (only modalities in
    ``hole_modalities``; default all). Inputs are not modified: the model zero-fills masked pixels.

    Args:
        inputs: modality -> (B, C, H, W).
        masks: optional modality -> (B, H, W) bool, True = valid.
        generator: torch.Generator on the inputs' device.
    Returns:
        modality -> (B, H, W) bool for every modality in ``inputs``.
    """
    names = list(inputs)
    first = inputs[names[0]]
    b, _, h, w = first.shape
    dev = first.device
    base = {
        n: (
            masks[n].bool()
            if masks is not None and n in masks
            else torch.ones(b, h, w, dtype=torch.bool, device=dev)
        )
        for n in names
    }
    has = torch.stack([base[n].flatten(1).any(dim=1) for n in names], dim=1)  # (B, M)
    m = len(names)
    # uniform non-empty subset of the present ones: redraw bits until non-empty (bounded, vectorised)
    apply = torch.rand(b, generator=generator, device=dev) < subset_prob
    draw = torch.zeros_like(has)
    todo = apply & has.any(dim=1)
    for _ in range(64):
        if not bool(todo.any()):
            break
        bits = (torch.rand((b, m), generator=generator, device=dev) < 0.5) & has
        ok = bits.any(dim=1) & todo
        draw[ok] = bits[ok]
        todo = todo & ~ok
    draw[todo] = has[todo]  # practically never: fall back to all present
    keep = torch.where(apply.unsqueeze(1), draw, has)  # (B, M)
    holes_for = set(names if hole_modalities is None else hole_modalities)
    out: dict[str, Tensor] = {}
    for i, n in enumerate(names):
        mask = base[n] & keep[:, i].view(b, 1, 1)
        if n in holes_for and hole_prob > 0:
            on = torch.rand(b, generator=generator, device=dev) < hole_prob
            cov = torch.rand(b, generator=generator, device=dev) * max_hole_coverage * on
            mask = mask & ~cloud_holes((b, h, w), cov, generator, scale_px=scale_px, device=dev)
        out[n] = mask
    return out
