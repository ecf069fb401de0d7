"""One UTM rule (issue 18 item 5): ``grid`` and ``aoi`` share ``utm_epsg_for``, and ``target_geobox`` called on
its own puts an AOI split at the antimeridian in its own zone, not in zone 31 (the centroid of the two parts)."""

from __future__ import annotations

from sgma_batch import aoi as aoi_module
from sgma_batch import grid
from sgma_batch.aoi import load_aoi, utm_epsg_of


def test_one_function():
    assert grid.utm_epsg_for is aoi_module.utm_epsg_for
    assert grid.utm_epsg_for(15.23, 45.12) == 32633 and grid.utm_epsg_for(-3.0, -10.0) == 32730
    assert grid.utm_epsg_for(181.0, 10.0) == 32601  # any 360° frame


def test_target_geobox_alone_puts_an_antimeridian_aoi_in_its_own_zone():
    aoi = load_aoi((179.95, -16.9, -179.95, -16.8))  # ~10 x 11 km across 180°, split into two parts
    assert aoi.geometry.geom_type == "MultiPolygon"
    assert utm_epsg_of(aoi.geometry) == aoi.utm_epsg == 32701
    gbox = grid.target_geobox(aoi.geometry, res_m=10)  # no crs: the rule, not the parts' mean longitude
    assert gbox.crs.epsg == 32701
    assert gbox.shape.x < 1200 and gbox.shape.y < 1200  # the AOI's ~11 km, not a band around the globe


def test_an_ordinary_aoi_keeps_its_centroid_zone():
    aoi = load_aoi((12.2, 45.2, 12.3, 45.3))
    assert utm_epsg_of(aoi.geometry) == aoi.utm_epsg == 32633
    assert grid.target_geobox(aoi.geometry, res_m=10).crs.epsg == 32633
