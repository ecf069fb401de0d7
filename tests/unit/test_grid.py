"""Grid anchoring, tiling and the TileTask plan."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from odc.geo.geom import Geometry
from shapely.geometry import box

from sgma_batch.errors import UsageError
from sgma_batch.grid import config_hash, content_hash, morton_key, plan_tiles, target_geobox, utm_epsg_for
from sgma_batch.scenes import Scene

# A small AOI near 15.2E 45.1N (UTM 33N).
AOI = box(15.20, 45.10, 15.26, 45.14)


def _scene(sid: str, updated: str = "2024-01-01T00:00:00Z") -> Scene:
    return Scene(
        id=sid, collection="c", modality="s2", sensor="s2-l2a",
        datetime=datetime(2024, 1, 1, tzinfo=UTC), geometry={}, bbox=(0, 0, 1, 1),
        assets={}, updated=updated,
    )


def test_utm_zone_of_centroid():
    assert utm_epsg_for(15.23, 45.12) == 32633
    assert utm_epsg_for(-3.0, -10.0) == 32730
    assert target_geobox(AOI).crs.epsg == 32633


@pytest.mark.parametrize("res", [10.0, 20.0, 30.0])
def test_grid_anchored_to_multiples_of_resolution_and_covers_aoi(res):
    gbox = target_geobox(AOI, res_m=res)
    a = gbox.transform
    assert a.a == res and a.e == -res
    assert a.c % res == 0 and a.f % res == 0
    aoi_utm = Geometry(AOI, "EPSG:4326").to_crs(gbox.crs)
    assert gbox.extent.contains(aoi_utm.buffer(-1e-6))


def test_crs_override():
    gbox = target_geobox(AOI, res_m=10, crs=3035)
    assert gbox.crs.epsg == 3035
    assert gbox.transform.c % 10 == 0


def test_bad_resolution_and_tile_size():
    with pytest.raises(UsageError):
        target_geobox(AOI, res_m=0)
    with pytest.raises(UsageError):
        plan_tiles(target_geobox(AOI), AOI, tile_px=100, halo_px=8)


def test_tiles_partition_grid_and_halo_pads_core_within_the_grid():
    gbox = target_geobox(AOI, res_m=10)
    tasks = plan_tiles(gbox, AOI, tile_px=128, halo_px=16)
    ny = -(-gbox.shape.y // 128)
    nx = -(-gbox.shape.x // 128)
    assert len(tasks) == ny * nx  # a rectangle AOI touches every tile of its own bbox grid
    assert ny >= 3 and nx >= 3  # so some tiles are inner ones
    covered = 0
    for t in tasks:
        ys, xs = t.region
        assert ys.start % 128 == 0 and xs.start % 128 == 0  # chunk aligned
        assert t.core == gbox[ys, xs]
        hy, hx = t.halo_region
        # the core padded by 16 px on each side, clipped to the grid: nothing outside the grid is read
        assert (hy.start, hy.stop) == (max(ys.start - 16, 0), min(ys.stop + 16, gbox.shape.y))
        assert (hx.start, hx.stop) == (max(xs.start - 16, 0), min(xs.stop + 16, gbox.shape.x))
        assert t.halo == gbox[hy, hx]
        rows, cols = t.crop
        assert t.halo[rows, cols] == t.core  # the crop puts the core back
        assert t.origin == (hy.start, hx.start)
        covered += t.core.shape.y * t.core.shape.x
    inner = [t for t in tasks if 0 < t.index[0] < ny - 1 and 0 < t.index[1] < nx - 1]
    assert inner and all(t.halo.shape.yx == (160, 160) for t in inner)
    assert covered == gbox.shape.y * gbox.shape.x


def test_only_tiles_that_touch_the_aoi():
    big = target_geobox(box(15.20, 45.10, 15.30, 45.20), res_m=10)
    small = box(15.20, 45.10, 15.21, 45.11)
    tasks = plan_tiles(big, small, tile_px=128, halo_px=0)
    assert 1 <= len(tasks) < 8
    all_tasks = plan_tiles(big, box(15.20, 45.10, 15.30, 45.20), tile_px=128, halo_px=0)
    assert len(all_tasks) > 20


def test_content_hash_changes_with_each_input():
    a, b = _scene("a"), _scene("b")
    base = content_hash("r0_c0", {"s2": [a, b]}, "m1", "c1")
    assert base == content_hash("r0_c0", {"s2": [b, a]}, "m1", "c1")  # order does not matter
    assert base != content_hash("r0_c1", {"s2": [a, b]}, "m1", "c1")
    assert base != content_hash("r0_c0", {"s2": [a]}, "m1", "c1")
    assert base != content_hash("r0_c0", {"s2": [a, _scene("b", "2024-02-02T00:00:00Z")]}, "m1", "c1")
    assert base != content_hash("r0_c0", {"s2": [a, b]}, "m2", "c1")
    assert base != content_hash("r0_c0", {"s2": [a, b]}, "m1", "c2")
    assert config_hash({"x": 1, "y": 2}) == config_hash({"y": 2, "x": 1})


def test_plan_ranks_scenes_per_tile_and_signature():
    gbox = target_geobox(AOI, res_m=10)
    seen = []

    def scenes_for(cell):
        seen.append(cell.crs.epsg)
        return {"s2": (_scene("x"),), "s1": ()}

    tasks = plan_tiles(gbox, AOI, tile_px=256, halo_px=8, scenes_for=scenes_for, model_hash="m", cfg_hash="c")
    assert set(seen) == {4326}
    assert all(t.signature == ("s2",) for t in tasks)
    assert tasks[0].scene_ids() == {"s1": [], "s2": ["x"]}
    assert len({t.content_hash for t in tasks}) == len(tasks)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_morton_order_keeps_every_aligned_block_contiguous(k):
    cells = sorted(((r, c) for r in range(16) for c in range(16)), key=lambda rc: morton_key(*rc))
    assert len({morton_key(*rc) for rc in cells}) == 256  # a key per cell
    assert cells[:4] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    side = 1 << k
    for start in range(0, 256, side * side):  # each run of 4^k cells is one aligned 2^k x 2^k block
        run = cells[start : start + side * side]
        assert len({(r // side, c // side) for r, c in run}) == 1
    assert morton_key(0, 5) == 0b10001 and morton_key(5, 0) == 0b100010  # col bits even, row bits odd


@pytest.mark.parametrize("side_km", [8, 16, 32, 64])
def test_model_work_per_output_pixel_at_the_defaults(side_km):
    """Each tile's halo box forwarded once (512 px tiles, 16 px halo): <= 1.15 model pixels per output pixel
    for square AOIs of 64 to 4096 km2; the old default (256 px windows, 64 px overlap on the grid lattice,
    64 px halo) forwarded every window that straddles a tile border once per tile: 3.4-5."""
    from odc.geo.geom import box as gbox

    from sgma_batch.run import RunSpec, aoi_in_grid_crs, model_work_per_px

    x0, y0 = 500_000.0, 5_000_000.0
    aoi = gbox(x0, y0, x0 + side_km * 1000, y0 + side_km * 1000, "EPSG:32633").to_crs("EPSG:4326").geom
    grid = target_geobox(aoi, res_m=10, crs="EPSG:32633")
    new = RunSpec(aoi="unused", out="unused")
    tasks = plan_tiles(grid, aoi, tile_px=new.tile_px, halo_px=new.halo_px, scenes_for=lambda c: {"s2": (_scene("a"),)})
    work = model_work_per_px(tasks, aoi_in_grid_crs(aoi, grid), new)
    assert 1.0 < work <= 1.15, work
    old = RunSpec(aoi="unused", out="unused", halo_px=64, window_px=256, overlap_px=64)
    tasks = plan_tiles(grid, aoi, tile_px=old.tile_px, halo_px=old.halo_px, scenes_for=lambda c: {"s2": (_scene("a"),)})
    assert model_work_per_px(tasks, aoi_in_grid_crs(aoi, grid), old) > 2.0  # 3.4-5.0 with halos beyond the grid
