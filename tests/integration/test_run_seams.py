"""Seamlessness with a real (untrained, seeded) SGMA model: a tiled mosaic vs whole-area predictions.

The mosaic is 3 x 2 chunks of 128 px, each predicted from its own halo tile with overlapping Hann-
weighted windows placed on the grid-wide window lattice (``--window-px``; the default forwards each
halo tile whole, tested in test_run_halo_tiles.py). References: (a) one sliding-window pass
over the whole area as a single tile, which the mosaic must reproduce (so chunk borders add nothing);
(b) one forward of the whole area in a single large window: SGMA pools soft class prototypes per
window, so this differs a little everywhere, but within a small bound and with no extra jump at chunk
borders. A run without halo and overlap is the control that shows the seam measure does see seams.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.colocate import plan_cell
from sgma_batch.execute import InferenceConfig, TileRunner, read_tile
from sgma_batch.grid import TileTask
from sgma_batch.run import RunSpec, _prepare, aoi_in_grid_crs, run_mosaic

pytestmark = pytest.mark.integration

TILE = 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return run_archive.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


def _spec(catalog: Path, checkpoint: Path, out: Path, **kw) -> RunSpec:
    base = {"aoi": run_archive.aoi_lonlat(), "out": str(out), "start": "2024-06-01", "end": "2024-06-30",
            "catalog": str(catalog), "model": str(checkpoint), "tile_px": TILE, "halo_px": 40, "window_px": 64,
            "overlap_px": 32, "executor": "sequential", "write_probability": True}
    return RunSpec(**{**base, **kw})


def _whole_area(spec: RunSpec, *, single_window: bool) -> tuple[np.ndarray, np.ndarray]:
    """(probability (K, H, W), class (H, W)) of the whole grid predicted as one tile (halos end at the grid's
    edge, as the tiles' do)."""
    prep = _prepare(spec)
    g = prep.geobox
    scenes = plan_cell(g.extent.to_crs("EPSG:4326").geom, prep.scenes, prep.start, prep.end).candidates
    window = -(-max(g.shape.yx) // 32) * 32 if single_window else spec.window_px
    whole = (slice(0, g.shape.y), slice(0, g.shape.x))
    task = TileTask("all", (0, 0), g, g, whole, scenes, halo_region=whole)
    cfg = InferenceConfig(checkpoint=str(spec.model), store="", layout=prep.layout,
                          aoi_wkt=aoi_in_grid_crs(prep.aoi.geometry, g).wkt, window_px=window,
                          overlap_px=0 if single_window else spec.overlap_px)
    runner = TileRunner(cfg)
    arrays = runner.infer(read_tile(task, runner.card, cfg))
    return arrays.probability.astype(np.float32), arrays.class_


def _mosaic(spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    summary = run_mosaic(spec)
    assert summary.computed == summary.tiles == 6
    g = zarr.open_group(spec.out, mode="r")
    return np.asarray(g["probability"][...]).astype(np.float32), np.asarray(g["class"][...])


def _jumps(prob: np.ndarray, ref: np.ndarray, cls: np.ndarray, offset: int) -> float:
    """Mean |step of the mosaic - step of the reference| between pixel k-1 and k, at k = offset + n * TILE
    along both axes (offset 0: the chunk borders; TILE // 2: mid-chunk lines for comparison)."""
    h, w = cls.shape
    vals = []
    for k in range(offset or TILE, w, TILE):
        ok = (cls[:, k] != 255) & (cls[:, k - 1] != 255)
        step = np.abs((prob[:, :, k] - prob[:, :, k - 1]) - (ref[:, :, k] - ref[:, :, k - 1])).max(0)
        vals.append(step[ok])
    for k in range(offset or TILE, h, TILE):
        ok = (cls[k] != 255) & (cls[k - 1] != 255)
        step = np.abs((prob[:, k] - prob[:, k - 1]) - (ref[:, k] - ref[:, k - 1])).max(0)
        vals.append(step[ok])
    return float(np.concatenate(vals).mean())


def test_tiled_mosaic_has_no_seams_against_whole_area_predictions(checkpoint, tmp_path):
    torch.set_num_threads(2)
    catalog = run_archive.build_archive(tmp_path / "archive")
    spec = _spec(catalog, checkpoint, tmp_path / "halo.zarr")
    prob, cls = _mosaic(spec)
    inside = cls != 255
    assert inside.mean() > 0.8 and np.isfinite(prob[:, inside]).all()

    # (a) the same windows over the whole area at once: the mosaic reproduces it (float16 store).
    slide_prob, slide_cls = _whole_area(spec, single_window=False)
    np.testing.assert_array_equal(cls, slide_cls)
    assert np.abs(prob - slide_prob)[:, inside].max() < 2e-3

    # (b) one large window: bounded difference, and no extra jump at chunk borders.
    one_prob, one_cls = _whole_area(spec, single_window=True)
    diff = np.abs(prob - one_prob).max(0)
    assert (cls == one_cls)[inside].mean() > 0.95
    assert diff[inside].max() < 0.1 and diff[inside].mean() < 0.03
    border, mid = _jumps(prob, one_prob, cls, 0), _jumps(prob, one_prob, cls, TILE // 2)
    assert border < 2 * mid + 1e-3, (border, mid)

    # Control: no halo, no overlap (each chunk one window): the measure sees the seams.
    bare_spec = _spec(catalog, checkpoint, tmp_path / "bare.zarr", halo_px=0, overlap_px=0, window_px=TILE)
    bare_prob, bare_cls = _mosaic(bare_spec)
    bare_border = _jumps(bare_prob, one_prob, bare_cls, 0)
    assert bare_border > 3 * _jumps(bare_prob, one_prob, bare_cls, TILE // 2), bare_border
    assert bare_border > 3 * border, (bare_border, border)
