"""Co-location ranking per cell: optical by expected clear cover, SAR by time to the optical pick, DEM any."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shapely.geometry import box, mapping

from sgma_batch.colocate import plan_cell
from sgma_batch.sensors import scene_from_item

STAC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "stac"


def _real_s2():
    return [scene_from_item(i) for i in json.loads((STAC / "earthsearch_sentinel-2-c1-l2a_10items.json").read_text())["features"]]


def _real_s1():
    return [scene_from_item(i) for i in json.loads((STAC / "pc_sentinel-1-rtc_4items.json").read_text())]


def test_optical_ranked_by_cloud_cover_within_window():
    s2 = _real_s2()
    cell = box(-105.1, 40.0, -105.05, 40.05)
    plan = plan_cell(cell, {"s2": s2}, "2024-04-01", "2024-04-30")
    ranked = plan.candidates["s2"]
    assert [s.cloud_cover for s in ranked] == sorted(s.cloud_cover for s in ranked)
    assert ranked[0].id == "S2A_T13TDE_20240412T175055_L2A"  # 0.04 % cloud
    assert "S2B_T13TDE_20240331T175111_L2A" not in {s.id for s in ranked}  # outside the window
    assert plan.available == frozenset({"s2"}) and plan.best("s1") is None


def test_order_is_deterministic_and_ties_break_on_id():
    s2 = _real_s2()
    cell = box(-105.1, 40.0, -105.05, 40.05)
    base = plan_cell(cell, {"s2": s2}, "2024-04-01", "2024-04-30")
    shuffled = s2[:]
    random.Random(3).shuffle(shuffled)
    assert plan_cell(mapping(cell), {"s2": shuffled}, "2024-04-01", "2024-04-30") == base
    a, b = (dataclasses.replace(s2[0], id=n, cloud_cover=5.0) for n in ("b-scene", "a-scene"))
    tie = plan_cell(cell, {"s2": [a, b]}, "2024-04-22", "2024-04-23")
    assert [s.id for s in tie.candidates["s2"]] == ["a-scene", "b-scene"]


def test_partial_footprint_ranks_below_full_cover_at_equal_cloud():
    s2 = _real_s2()[0]
    cell = box(-105.1, 40.0, -105.0, 40.1)
    full = dataclasses.replace(s2, id="full", cloud_cover=10.0, geometry=mapping(box(-106, 39, -104, 41)))
    half = dataclasses.replace(s2, id="half", cloud_cover=0.0, geometry=mapping(box(-105.05, 39, -104, 41)))
    plan = plan_cell(cell, {"s2": [half, full]}, "2024-04-01", "2024-04-30")
    assert [s.id for s in plan.candidates["s2"]] == ["full", "half"]  # 90 % clear cell vs 50 %


def test_sar_by_time_to_the_chosen_optical_scene_and_dem_any():
    s1 = _real_s1()
    cell = box(14.2, 30.2, 14.25, 30.25)
    covering = [s for s in s1 if plan_cell(cell, {"s1": [s]}, "2024-01-01", "2024-12-31").candidates["s1"]]
    assert covering, "the real RTC items cover this cell"
    t = covering[0].datetime
    far = dataclasses.replace(covering[0], id="far", datetime=t + timedelta(days=5))
    near = dataclasses.replace(covering[0], id="near", datetime=t + timedelta(days=1))
    optical = dataclasses.replace(_real_s2()[0], id="opt", cloud_cover=1.0, datetime=t + timedelta(days=4),
                                  geometry=mapping(box(13, 29, 16, 31)))
    plan = plan_cell(cell, {"s2": [optical], "s1": [near, far]}, t - timedelta(days=10), t + timedelta(days=10))
    assert [s.id for s in plan.candidates["s1"]] == ["far", "near"]  # far is 1 day from the optical pick
    no_opt = plan_cell(cell, {"s1": [near, far]}, t - timedelta(days=10), t + timedelta(days=10))
    assert [s.id for s in no_opt.candidates["s1"]] == ["near", "far"]  # window centre is t
    dem = dataclasses.replace(covering[0], id="dem", modality="dem", sensor="dem-glo30",
                              datetime=datetime(2021, 4, 22, tzinfo=UTC))
    with_dem = plan_cell(cell, {"s1": [near], "dem": [dem]}, t - timedelta(days=10), t + timedelta(days=10))
    assert with_dem.available == frozenset({"s1", "dem"})  # DEM ignores the window
    away = plan_cell(box(0, 0, 0.1, 0.1), {"s1": [near], "dem": [dem]}, t - timedelta(days=10), t + timedelta(days=10))
    assert away.available == frozenset() and away.candidates == {"s1": (), "dem": ()}


def test_cell_across_the_antimeridian_is_cut_at_180():
    """A UTM zone 60 cell over 180°E, as odc-geo hands it (a lon/lat ring that jumps 360°), finds the scenes
    on both sides with their real cover, and not a scene half the globe away."""
    from odc.geo.geobox import GeoBox
    from pyproj import Transformer

    x180, y = Transformer.from_crs(4326, 32760, always_xy=True).transform(180.0, -16.75)
    cell = GeoBox.from_bbox((x180 - 2000, y - 2000, x180 + 2000, y + 2000), "epsg:32760", resolution=10)
    ring = cell.extent.to_crs("EPSG:4326").geom
    xs = [x for x, _ in ring.exterior.coords]
    assert max(xs) > 179.9 and min(xs) < -179.9  # the jump the plan must survive
    base = _real_s2()[0]
    west = dataclasses.replace(base, id="west-of-180", cloud_cover=20.0, geometry=mapping(box(179.5, -17.5, 180, -16)))
    east = dataclasses.replace(base, id="east-of-180", cloud_cover=10.0, geometry=mapping(box(-180, -17.5, -179.5, -16)))
    far = dataclasses.replace(base, id="greenwich", cloud_cover=0.0, geometry=mapping(box(-0.5, -17.5, 0.5, -16)))
    plan = plan_cell(ring, {"s2": [far, west, east]}, "2024-04-01", "2024-04-30")
    assert [s.id for s in plan.candidates["s2"]] == ["east-of-180", "west-of-180"]  # each covers ~half; less cloud first
