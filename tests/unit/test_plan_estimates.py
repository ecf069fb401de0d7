"""Plan byte estimates count each asset's own pixels (issue 18 item 6): a 20 m band in another UTM zone or a
scene in degrees is not counted as if it had the target's 10 m pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from sgma_batch.run import _asset_bytes
from sgma_batch.scenes import AssetRef

HALO = GeoBox((100, 100), Affine(10, 0, 500000, 0, -10, 5000000), "EPSG:32633")  # 1 km2 at 10 m


def _ref(epsg: int | None, res: float | None) -> AssetRef:
    return AssetRef("x.tif", "b", "k", epsg=epsg, transform=(res, 0, 0, 0, -res, 0) if res else None)


def test_same_crs_counts_the_native_pixels():
    assert _asset_bytes(_ref(32633, 10), "s2", HALO) == 10_000 * 2
    assert _asset_bytes(_ref(32633, 20), "s2", HALO) == 2_500 * 2


def test_another_utm_zone_counts_its_20m_pixels_not_the_targets():
    n = _asset_bytes(_ref(32634, 20), "s2", HALO) / 2
    assert n == pytest.approx(2_500, rel=0.02)  # was 10,000: the target's pixels


def test_degrees_count_their_pixels():
    # ~10 m by ~7 m pixels at 45 N: about 14,000 pixels per km2, float32
    n = _asset_bytes(_ref(4326, 8.983e-05), "s1", HALO) / 4
    assert 13_000 < n < 15_500


def test_unknown_grid_assumes_the_target_pixels():
    assert _asset_bytes(_ref(None, None), "dem", HALO) == 10_000 * 4


@pytest.mark.integration  # reads the demo archive's COGs (generated once per session: tests/conftest.py)
def test_plan_reports_bytes_by_native_resolution_and_measured_times(demo_cache_home, tmp_path):
    """``plan`` on the demo archive: bytes per modality and native resolution add up to the total, and with
    ``measure`` it times reads (median of up to 3 tiles) and forwards (median of 5) for a wall estimate."""
    from sgma_batch.run import RunSpec, plan_run

    aoi = str(Path(__file__).resolve().parents[2] / "sgma_batch" / "synthetic" / "demo-aoi.geojson")
    spec = RunSpec(aoi=aoi, out=str(tmp_path / "p.zarr"), tile_px=256, executor="sequential",
                   cache_dir=str(demo_cache_home / "sgma-batch"))
    plan = plan_run(spec)
    assert sum(plan.bytes_by_res.values()) == plan.bytes_to_read > 0
    assert {k.split()[0] for k in plan.bytes_by_res} == {"s2", "s1", "dem"}
    assert plan.read_s_per_tile > 0 and plan.read_estimate_s > 0 and plan.estimate_s > 0
    assert plan.wall_estimate_s == pytest.approx(plan.read_estimate_s + plan.estimate_s, abs=0.11)  # sequential
    assert not (tmp_path / "p.zarr").exists()
