"""Sliding windows with overlap over a halo tile, blended with Hann weights, cropped to the core.

Pure torch: no IO, no Ray. ``predict`` is any callable that maps a batch of windows to class
probabilities, fusion weights and a validity mask, so tests can pass an exact (constant / linear)
predictor and check that blending reproduces it with no seam.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BlendResult", "Predict", "blend_windows", "hann_weight", "lattice_starts", "window_starts"]

# predict(inputs {m: (B, C, h, w)}, masks {m: (B, h, w) bool}) -> (probs (B, K, h, w), robustness
# (B, M, h, w), valid (B, h, w) bool)
Predict = Callable[
    [Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor],
]


@dataclass(frozen=True)
class BlendResult:
    probability: torch.Tensor  # (K, h, w) float32, sums to 1 where valid
    robustness: torch.Tensor  # (M, h, w) float32
    valid: torch.Tensor  # (h, w) bool


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` px every ``stride`` px; the last one ends at ``size``."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def lattice_starts(size: int, window: int, stride: int, *, offset: int, lo: int, hi: int) -> list[int]:
    """Starts of the windows on a global lattice that touch ``[lo, hi)`` of a tile of ``size`` px.

    The lattice is every ``stride`` px of the whole output grid; ``offset`` is the tile's first pixel in
    grid coordinates, so a window starts at ``s`` when ``(s + offset) % stride == 0``. Every tile then
    places its windows exactly where a single whole-area sliding-window pass would, and neighbouring
    tiles agree at their shared border. Windows that would leave the tile (halo narrower than
    ``window - stride``, or the grid's edge) are clamped inside it, so ``[lo, hi)`` is always covered.
    """
    if size <= window:
        return [0]
    first = lo - window + 1  # the leftmost start of a window that still contains pixel lo
    s = first + (-(first + offset)) % stride
    starts = []
    while s < hi:
        starts.append(min(max(s, 0), size - window))
        s += stride
    return sorted(set(starts))


def hann_weight(window_px: int) -> torch.Tensor:
    """Separable (window, window) Hann weight, strictly positive (sampled at pixel centres)."""
    i = torch.arange(window_px, dtype=torch.float64)
    w1 = 0.5 - 0.5 * torch.cos(2 * torch.pi * (i + 0.5) / window_px)  # (W,) in (0, 1]
    return torch.outer(w1, w1).float()  # (W, W)


def blend_windows(
    predict: Predict,
    inputs: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    *,
    window_px: int,
    overlap_px: int,
    crop: tuple[slice, slice] | None = None,
    max_batch: int = 16,
    origin: tuple[int, int] | None = None,
) -> BlendResult:
    """Predict a halo tile window by window and blend the windows' outputs.

    Args:
        predict: see :data:`Predict`.
        inputs: {modality: (C, H, W) float32}, the present modalities only.
        masks: {modality: (H, W) bool}, True = valid pixel.
        window_px: window size the model sees; a tile smaller than that is zero-padded (masked invalid).
        overlap_px: overlap of neighbouring windows (stride = window - overlap).
        crop: (rows, cols) of the core inside the halo tile; default the whole tile.
        max_batch: windows per forward call. The windows of one tile are always batched the same
            way, so a tile's result does not depend on which other tiles run beside it.
        origin: (row, col) of the tile's first pixel in the output grid. When given, windows sit on the
            grid-wide lattice (see :func:`lattice_starts`) and only those touching ``crop`` are
            predicted: with a halo of at least ``window - stride`` and cores on the lattice, the tiled
            result equals one sliding-window pass over the whole area (no seam at chunk borders).
    """
    if not inputs:
        raise ValueError("blend_windows needs at least one present modality")
    if not 0 <= overlap_px < window_px:
        raise ValueError(f"overlap {overlap_px} must be in [0, window {window_px})")
    any_x = next(iter(inputs.values()))
    h, w = any_x.shape[-2:]
    ph, pw = max(h, window_px), max(w, window_px)
    if (ph, pw) != (h, w):  # tile smaller than one window: pad, padded pixels invalid
        inputs = {m: torch.nn.functional.pad(x, (0, pw - w, 0, ph - h)) for m, x in inputs.items()}
        masks = {m: torch.nn.functional.pad(v, (0, pw - w, 0, ph - h), value=False) for m, v in masks.items()}
    stride = window_px - overlap_px
    rows, cols = crop if crop is not None else (slice(0, h), slice(0, w))
    if origin is None:
        ys, xs = window_starts(ph, window_px, stride), window_starts(pw, window_px, stride)
    else:
        ys = lattice_starts(ph, window_px, stride, offset=origin[0], lo=rows.start or 0, hi=rows.stop)
        xs = lattice_starts(pw, window_px, stride, offset=origin[1], lo=cols.start or 0, hi=cols.stop)
    boxes = [(y, x) for y in ys for x in xs]
    weight = hann_weight(window_px).to(any_x.device)  # (W, W)
    prob_acc = rob_acc = None
    valid_acc = torch.zeros((ph, pw), dtype=torch.bool, device=any_x.device)
    wsum = torch.zeros((ph, pw), dtype=torch.float32, device=any_x.device)
    for b0 in range(0, len(boxes), max_batch):
        chunk = boxes[b0 : b0 + max_batch]
        xb = {m: torch.stack([x[:, y : y + window_px, x0 : x0 + window_px] for y, x0 in chunk]) for m, x in inputs.items()}
        mb = {m: torch.stack([v[y : y + window_px, x0 : x0 + window_px] for y, x0 in chunk]) for m, v in masks.items()}
        probs, rob, valid = predict(xb, mb)  # (B, K, W, W), (B, M, W, W), (B, W, W)
        probs, rob = probs.float(), rob.float()
        if prob_acc is None:
            prob_acc = torch.zeros((probs.shape[1], ph, pw), dtype=torch.float32, device=any_x.device)
            rob_acc = torch.zeros((rob.shape[1], ph, pw), dtype=torch.float32, device=any_x.device)
        for i, (y, x0) in enumerate(chunk):
            sl = (slice(y, y + window_px), slice(x0, x0 + window_px))
            prob_acc[(slice(None), *sl)] += probs[i] * weight
            rob_acc[(slice(None), *sl)] += rob[i] * weight
            wsum[sl] += weight
            valid_acc[sl] |= valid[i].bool()
    assert prob_acc is not None and rob_acc is not None
    prob = prob_acc[:, rows, cols] / wsum[rows, cols]  # (K, h, w) of the crop
    rob = rob_acc[:, rows, cols] / wsum[rows, cols]  # (M, h, w)
    return BlendResult(prob, rob, valid_acc[rows, cols])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[0, 1] floats to uint8 (round half to even, clipped)."""
    return np.clip(np.rint(x.detach().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
