"""Windows over the output grid and how their predictions are blended. Pure numpy / torch: no IO, no Ray.

* Halo-tile windows (the default): each tile's halo box is one window, forwarded once. Its prediction is
  weighted with a cross-fade over the halo (:func:`crossfade_1d`) and cut into parts by the tile each
  piece lies in (:func:`split_window`); each tile's writer blends the parts over its core
  (:func:`combine`). Neighbouring windows overlap by twice the halo, so the mosaic is one sliding-window
  pass over the whole area (window = tile + 2 halo, stride = tile), with each pixel forwarded
  (1 + 2 halo / tile)^2 times.
* Sliding windows inside a tile (``--window-px``): below.

Sliding windows with overlap over a halo tile, blended with Hann weights, cropped to the core.

Pure torch: no IO, no Ray. ``predict`` is any callable that maps a batch of windows to class
probabilities, fusion weights and a validity mask, so tests can pass an exact (constant / linear)
predictor and check that blending reproduces it with no seam.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BlendResult", "Part", "Predict", "blend_windows", "combine", "crossfade_1d", "hann_weight", "lattice_starts",
    "split_window", "window_starts",
]

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


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 (round half to even, clipped)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


# -- halo-tile windows, blended across tile borders by handing the overlap strips to the neighbour ---------
@dataclass(frozen=True)
class Part:
    """One window's weighted prediction over a rectangle of the output grid.

    A tile's window (its halo box) splits into up to 9 parts: the core (its own) and the 8 strips and
    corners that lie in the neighbours' cores. Each part goes to the writer of the tile it lies in, which
    adds the parts of every window over its core in a fixed order (by ``source``) and divides by the
    weights: one model pass per pixel, and the blend a whole-area sliding-window pass would give.
    """

    source: tuple[int, int]  # tile index of the window
    rows: slice  # in the output grid
    cols: slice
    weighted: np.ndarray  # (K + M, h, w) float32: probabilities and fusion weights, times the weight
    weight: np.ndarray  # (h, w) float32
    valid: np.ndarray  # (h, w) bool


def crossfade_1d(length: int, before: int, after: int) -> np.ndarray:
    """Weight along one axis of a window with ``before`` / ``after`` px of halo (overlap) on each side.

    sin^2 from 0 at the window's edge to 1 at twice the halo in (pixel centres): across a tile border,
    where the neighbour's window has the same halo, the two weights sum to exactly 1 (sin^2 + cos^2).
    A side without halo (the grid's edge) keeps weight 1.
    """
    w = np.ones(length, np.float64)
    d = np.arange(length, dtype=np.float64) + 0.5
    if before > 0:
        ramp = d < 2 * before
        w[ramp] *= np.sin(np.pi * d[ramp] / (4 * before)) ** 2
    if after > 0:
        back = length - d
        ramp = back < 2 * after
        w[ramp] *= np.sin(np.pi * back[ramp] / (4 * after)) ** 2
    return w.astype(np.float32)


def split_window(
    index: tuple[int, int],
    halo: tuple[slice, slice],
    core: tuple[slice, slice],
    values: np.ndarray,
    valid: np.ndarray,
) -> dict[tuple[int, int], Part]:
    """Weight a window's prediction and cut it into parts by the tile each lies in.

    Args:
        index: the window's tile index (row, col).
        halo: the window's rows and cols in the output grid (the tile's halo box).
        core: the tile's core rows and cols (inside ``halo``).
        values: (C, H, W) float32 prediction over the halo box.
        valid: (H, W) bool.

    Returns:
        {target tile index: part}; the core's target is ``index`` itself.
    """
    (hy, hx), (cy, cx) = halo, core
    wy = crossfade_1d(hy.stop - hy.start, cy.start - hy.start, hy.stop - cy.stop)
    wx = crossfade_1d(hx.stop - hx.start, cx.start - hx.start, hx.stop - cx.stop)
    weight = np.outer(wy, wx)  # (H, W)
    weighted = values * weight  # (C, H, W)
    bands_y = [(-1, hy.start, cy.start), (0, cy.start, cy.stop), (1, cy.stop, hy.stop)]
    bands_x = [(-1, hx.start, cx.start), (0, cx.start, cx.stop), (1, cx.stop, hx.stop)]
    parts = {}
    for dy, y0, y1 in bands_y:
        for dx, x0, x1 in bands_x:
            if y1 <= y0 or x1 <= x0:
                continue
            ly, lx = slice(y0 - hy.start, y1 - hy.start), slice(x0 - hx.start, x1 - hx.start)
            parts[(index[0] + dy, index[1] + dx)] = Part(
                index, slice(y0, y1), slice(x0, x1), np.ascontiguousarray(weighted[:, ly, lx]),
                np.ascontiguousarray(weight[ly, lx]), np.ascontiguousarray(valid[ly, lx]))
    return parts


def combine(core: tuple[slice, slice], parts: Sequence[Part], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Blend the parts over a core: (C, h, w) float32 values (weighted mean) and (h, w) bool validity.

    Parts are added in the order of their ``source`` tile, so the result does not depend on the order in
    which they arrive. Pixels no part covers are 0 and invalid.
    """
    cy, cx = core
    h, w = cy.stop - cy.start, cx.stop - cx.start
    acc = np.zeros((channels, h, w), np.float32)
    wsum = np.zeros((h, w), np.float32)
    valid = np.zeros((h, w), bool)
    for p in sorted(parts, key=lambda p: p.source):
        ly, lx = slice(p.rows.start - cy.start, p.rows.stop - cy.start), slice(p.cols.start - cx.start, p.cols.stop - cx.start)
        acc[:, ly, lx] += p.weighted
        wsum[ly, lx] += p.weight
        valid[ly, lx] |= p.valid
    np.divide(acc, wsum, out=acc, where=wsum > 0)
    return acc, valid
