"""Hann-weighted sliding-window blending: exact for pointwise predictors, no seams between tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgma_batch.blend import blend_windows, hann_weight, lattice_starts, window_starts


def linear_predict(xb, mb):
    """Pointwise and exact: p0 = (a + 1) / 4, p1 = 1 - p0 with a in [-1, 1]; robustness = mask of s2."""
    a = xb["s2"][:, 0]  # (B, W, W)
    p0 = (a + 1.0) / 4.0
    probs = torch.stack([p0, 1.0 - p0], dim=1)  # (B, 2, W, W)
    rob = torch.stack([mb["s2"].float(), 1.0 - mb["s2"].float()], dim=1)  # (B, 2, W, W)
    return probs, rob, mb["s2"]


@pytest.mark.parametrize("size,window,stride", [(640, 256, 192), (100, 64, 48), (64, 64, 32), (30, 64, 32)])
def test_window_starts_cover_and_stay_inside(size, window, stride):
    starts = window_starts(size, window, stride)
    covered = torch.zeros(max(size, window), dtype=torch.bool)
    for s in starts:
        covered[s : s + window] = True
        assert s + window <= max(size, window)
    assert covered[:size].all()
    assert starts == sorted(set(starts))


def test_hann_weight_positive_and_symmetric():
    w = hann_weight(64)
    assert w.shape == (64, 64) and (w > 0).all()
    torch.testing.assert_close(w, w.flip(0).flip(1))
    assert w[32, 32] > 0.99 and w[0, 0] < 0.01


def test_constant_predictor_weights_sum_to_one():
    x = {"s2": torch.zeros(1, 200, 150)}
    m = {"s2": torch.ones(200, 150, dtype=torch.bool)}

    def ones(xb, mb):
        b = xb["s2"].shape[0]
        return torch.full((b, 3, 64, 64), 1 / 3), torch.ones(b, 1, 64, 64), torch.ones(b, 64, 64, dtype=torch.bool)

    res = blend_windows(ones, x, m, window_px=64, overlap_px=16)
    torch.testing.assert_close(res.probability.sum(0), torch.ones(200, 150), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.robustness[0], torch.ones(200, 150), atol=1e-6, rtol=0)
    assert res.valid.all()


def test_tiles_reproduce_a_linear_predictor_without_seams():
    g = torch.Generator().manual_seed(0)
    core, halo, size = 96, 24, 192
    image = torch.rand(1, size + 2 * halo, size + 2 * halo, generator=g) * 2 - 1  # (1, H, W)
    mask = torch.rand(size + 2 * halo, size + 2 * halo, generator=g) > 0.2
    expected_probs, _, _ = linear_predict({"s2": image[None]}, {"s2": mask[None]})
    expected = expected_probs[0, :, halo:-halo, halo:-halo]  # (2, size, size)
    mosaic = torch.empty(2, size, size)
    for ty in range(0, size, core):
        for tx in range(0, size, core):
            tile = image[:, ty : ty + core + 2 * halo, tx : tx + core + 2 * halo]
            tmask = mask[ty : ty + core + 2 * halo, tx : tx + core + 2 * halo]
            res = blend_windows(linear_predict, {"s2": tile}, {"s2": tmask}, window_px=64, overlap_px=24,
                                crop=(slice(halo, halo + core), slice(halo, halo + core)))
            assert res.probability.shape == (2, core, core)
            torch.testing.assert_close(res.valid, tmask[halo:-halo, halo:-halo])
            mosaic[:, ty : ty + core, tx : tx + core] = res.probability
    torch.testing.assert_close(mosaic, expected, atol=1e-6, rtol=0)
    # across the tile border (rows 95 | 96) the mosaic is as smooth as the input: no seam
    step_border = (mosaic[:, core] - mosaic[:, core - 1]).abs().max()
    step_input = (expected[:, core] - expected[:, core - 1]).abs().max()
    assert torch.isclose(step_border, step_input, atol=1e-6)


def test_window_dependent_predictor_blends_convexly():
    x = {"s2": torch.zeros(1, 160, 160)}
    m = {"s2": torch.ones(160, 160, dtype=torch.bool)}
    calls = []

    def per_window(xb, mb):
        b = xb["s2"].shape[0]
        vals = torch.arange(len(calls), len(calls) + b, dtype=torch.float32) / 100.0
        calls.extend(range(b))
        p = vals[:, None, None, None].expand(b, 1, 64, 64)
        return torch.cat([p, 1 - p], 1), torch.ones(b, 1, 64, 64), torch.ones(b, 64, 64, dtype=torch.bool)

    res = blend_windows(per_window, x, m, window_px=64, overlap_px=32, max_batch=4)
    n = len(calls)
    assert n == 16  # starts 0, 32, 64, 96 per axis
    assert res.probability[0].min() >= 0 and res.probability[0].max() <= (n - 1) / 100 + 1e-6
    torch.testing.assert_close(res.probability.sum(0), torch.ones(160, 160), atol=1e-6, rtol=0)


def test_small_tile_is_padded_and_cropped():
    x = {"s2": torch.rand(1, 40, 50) * 2 - 1}
    m = {"s2": torch.ones(40, 50, dtype=torch.bool)}
    res = blend_windows(linear_predict, x, m, window_px=64, overlap_px=16)
    assert res.probability.shape == (2, 40, 50)
    torch.testing.assert_close(res.probability[0], (x["s2"][0] + 1) / 4, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size,window,stride,offset,lo,hi", [
    (176, 64, 32, -24, 24, 152), (176, 64, 48, 104, 24, 152), (96, 64, 32, 0, 0, 96), (150, 64, 40, 7, 10, 140),
])
def test_lattice_starts_sit_on_the_grid_lattice_and_cover_the_core(size, window, stride, offset, lo, hi):
    starts = lattice_starts(size, window, stride, offset=offset, lo=lo, hi=hi)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        assert 0 <= s <= size - window
        covered[s : s + window] = True
        assert s + window > lo and s < hi  # every window touches the core
    assert covered[lo:hi].all()
    inside = [s for s in starts if 0 < s < size - window]  # not clamped at the tile's edge
    assert all((s + offset) % stride == 0 for s in inside)


def window_mean_predict(xb, mb):
    """Depends on the whole window (like SGMA's soft prototypes): p0 = sigmoid(a + mean of the window)."""
    a = xb["s2"][:, 0]  # (B, W, W)
    p0 = torch.sigmoid(a + a.mean(dim=(1, 2), keepdim=True))
    return torch.stack([p0, 1 - p0], 1), torch.stack([mb["s2"].float()], 1), mb["s2"]


def test_lattice_windows_make_tiles_equal_one_whole_area_pass():
    g = torch.Generator().manual_seed(1)
    core, halo, size, window, overlap = 96, 40, 192, 64, 32  # halo >= window - stride, not on the lattice
    image = torch.rand(1, size + 2 * halo, size + 2 * halo, generator=g) * 2 - 1
    mask = torch.ones(size + 2 * halo, size + 2 * halo, dtype=torch.bool)
    whole = blend_windows(window_mean_predict, {"s2": image}, {"s2": mask}, window_px=window, overlap_px=overlap,
                          crop=(slice(halo, halo + size), slice(halo, halo + size)), origin=(-halo, -halo))
    for lattice in (True, False):
        mosaic = torch.empty(2, size, size)
        for ty in range(0, size, core):
            for tx in range(0, size, core):
                tile = image[:, ty : ty + core + 2 * halo, tx : tx + core + 2 * halo]
                res = blend_windows(window_mean_predict, {"s2": tile}, {"s2": mask[: core + 2 * halo, : core + 2 * halo]},
                                    window_px=window, overlap_px=overlap,
                                    crop=(slice(halo, halo + core), slice(halo, halo + core)),
                                    origin=(ty - halo, tx - halo) if lattice else None)
                mosaic[:, ty : ty + core, tx : tx + core] = res.probability
        if lattice:
            torch.testing.assert_close(mosaic, whole.probability, atol=1e-6, rtol=0)
        else:  # tile-local windows: a window-dependent predictor shows a difference (the seam risk)
            assert (mosaic - whole.probability).abs().max() > 1e-3


# -- halo-tile windows: cross-fade, parts, assembly ------------------------------------------------------
def test_crossfade_weights_of_neighbouring_windows_sum_to_one():
    from sgma_batch.blend import crossfade_1d

    tile, halo = 64, 8
    left = crossfade_1d(tile + 2 * halo, halo, halo)  # window over [-8, 72)
    right = crossfade_1d(tile + 2 * halo, halo, halo)  # window over [56, 136)
    total = np.zeros(200, np.float64)
    total[0:80] += left
    total[64:144] += right
    np.testing.assert_allclose(total[64:80], 1.0, atol=1e-6)  # the strip both windows cover
    np.testing.assert_allclose(total[16:56], 1.0)  # inside the first core, away from both borders
    assert left[0] < 0.01 and left[-1] < 0.01 and left[2 * halo] == 1.0
    edge = crossfade_1d(tile + halo, 0, halo)  # on the grid's edge: no halo before, weight 1 there
    assert edge[0] == 1.0 and edge[-1] < 0.01


def _grid_tasks(shape, tile, halo):
    """(index, halo rows/cols, core rows/cols) of every tile of a grid, halos clipped to it."""
    out = []
    for iy, y0 in enumerate(range(0, shape[0], tile)):
        for ix, x0 in enumerate(range(0, shape[1], tile)):
            core = (slice(y0, min(y0 + tile, shape[0])), slice(x0, min(x0 + tile, shape[1])))
            hal = (slice(max(y0 - halo, 0), min(y0 + tile + halo, shape[0])),
                   slice(max(x0 - halo, 0), min(x0 + tile + halo, shape[1])))
            out.append(((iy, ix), hal, core))
    return out


def test_parts_handed_between_tiles_rebuild_a_whole_area_blend_in_any_order():
    """Windows predicting one smooth global field rebuild it exactly; windows predicting their own constant
    blend smoothly across borders; the result does not depend on the order in which parts arrive."""
    import random

    from sgma_batch.blend import combine, split_window
    from sgma_batch.execute import Assembler

    shape, tile, halo = (100, 130), 32, 6
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    field = np.stack([yy / 100, xx / 130])  # (2, H, W)
    tasks = _grid_tasks(shape, tile, halo)
    for predict in ("field", "constant"):
        results = []
        for seed in (0, 1):
            order = list(tasks)
            random.Random(seed).shuffle(order)
            fake = [type("T", (), {"index": i})() for i, _, _ in tasks]
            asm = Assembler(fake)
            out = np.full((2, *shape), np.nan, np.float32)
            for index, hal, core in order:
                values = field[:, hal[0], hal[1]] if predict == "field" else \
                    np.full((2, hal[0].stop - hal[0].start, hal[1].stop - hal[1].start), index[0] * 10 + index[1], np.float32)
                parts = split_window(index, hal, core, values, np.ones(values.shape[1:], bool))
                for own, got in asm.add(index, (index, core), parts):
                    blended, valid = combine(own[1], got, 2)
                    assert valid.all()
                    out[:, own[1][0], own[1][1]] = blended
            assert not asm.waiting and np.isfinite(out).all()
            results.append(out)
        assert results[0].tobytes() == results[1].tobytes()  # any arrival order: the same bits
        if predict == "field":
            np.testing.assert_allclose(results[0], field, atol=1e-6)
        else:
            # inside a core, away from its borders: its own constant; across a border: a monotone blend
            np.testing.assert_array_equal(results[0][0, 40:50, 40:50], 11.0)
            row = results[0][0, 45, 20:45]
            assert (np.diff(row) >= -1e-6).all() and row[0] == 10.0 and row[-1] == 11.0
