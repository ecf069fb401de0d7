"""AOI validation: each user mistake gives its own one-line error and exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgma_batch.aoi import AOI, load_aoi, utm_epsg_for
from sgma_batch.errors import (
    AOIAntimeridianError,
    AOIEmptyError,
    AOIInvalidGeometryError,
    AOINotGeoJSONError,
    AOIProjectedCoordinatesError,
    AOITooLargeError,
    AOIUnreadableError,
)

SQUARE = [[[13.0, 30.0], [13.1, 30.0], [13.1, 30.1], [13.0, 30.1], [13.0, 30.0]]]


def _write(tmp_path: Path, obj, name: str = "aoi.geojson") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and msg
    return msg


def test_geometry_feature_and_collection_give_the_same_aoi(tmp_path):
    geom = {"type": "Polygon", "coordinates": SQUARE}
    a = load_aoi(_write(tmp_path, geom, "g.json"))
    b = load_aoi(_write(tmp_path, {"type": "Feature", "properties": {}, "geometry": geom}, "f.json"))
    c = load_aoi(_write(tmp_path, {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": geom}]}, "c.json"))
    assert isinstance(a, AOI)
    assert a.geometry.equals(b.geometry) and a.geometry.equals(c.geometry)
    # 0.1° x 0.1° at 30°N: 11.1 km x 9.64 km ~ 107 km2 (geodesic)
    assert 100 < a.area_km2 < 112
    assert a.utm_epsg == 32633
    assert a.bbox == pytest.approx((13.0, 30.0, 13.1, 30.1))
    assert not a.repaired


def test_bbox_tuple_and_string():
    a = load_aoi((-105.2, 39.9, -105.0, 40.1))
    b = load_aoi("-105.2,39.9,-105.0,40.1")
    assert a.geometry.equals(b.geometry)
    assert a.utm_epsg == 32613
    assert load_aoi((151.0, -34.0, 151.1, -33.9)).utm_epsg == 32756  # Sydney: south zone 56


def test_unreadable_file(tmp_path):
    with pytest.raises(AOIUnreadableError) as e:
        load_aoi(tmp_path / "missing.geojson")
    assert e.value.exit_code == 10 and "missing.geojson" in _one_line(e.value)


def test_not_json_and_not_geojson(tmp_path):
    with pytest.raises(AOINotGeoJSONError) as e:
        load_aoi(_write(tmp_path, "this is not json"))
    assert e.value.exit_code == 11 and "not JSON" in _one_line(e.value)
    with pytest.raises(AOINotGeoJSONError):
        load_aoi(_write(tmp_path, {"hello": 1}, "x.json"))
    with pytest.raises(AOINotGeoJSONError):
        load_aoi(_write(tmp_path, {"type": "Polygon", "coordinates": "nope"}, "y.json"))


def test_empty_and_zero_area(tmp_path):
    with pytest.raises(AOIEmptyError) as e:
        load_aoi(_write(tmp_path, {"type": "FeatureCollection", "features": []}))
    assert e.value.exit_code == 12
    with pytest.raises(AOIEmptyError) as e:
        load_aoi(_write(tmp_path, {"type": "Point", "coordinates": [13.0, 30.0]}, "p.json"))
    assert "zero area" in _one_line(e.value)
    with pytest.raises(AOIEmptyError):
        load_aoi(_write(tmp_path, {"type": "LineString", "coordinates": [[13, 30], [13.1, 30.1]]}, "l.json"))


def test_invalid_geometry_is_repaired_and_says_so(tmp_path, caplog):
    bowtie = {"type": "Polygon", "coordinates": [[[13, 30], [13.1, 30.1], [13.1, 30], [13, 30.1], [13, 30]]]}
    p = _write(tmp_path, bowtie)
    with caplog.at_level("WARNING", logger="sgma_batch.aoi"):
        aoi = load_aoi(p)
    assert aoi.repaired and aoi.geometry.is_valid and aoi.area_km2 > 0
    assert any("repaired" in r.getMessage() for r in caplog.records)
    with pytest.raises(AOIInvalidGeometryError) as e:
        load_aoi(p, repair=False)
    assert e.value.exit_code == 13 and "Self-intersection" in _one_line(e.value) and "not repaired" in str(e.value)


def test_projected_coordinates(tmp_path):
    utm = {"type": "Polygon", "coordinates": [[[500000, 4200000], [510000, 4200000], [510000, 4210000], [500000, 4200000]]]}
    with pytest.raises(AOIProjectedCoordinatesError) as e:
        load_aoi(_write(tmp_path, utm))
    assert e.value.exit_code == 14 and "EPSG:4326" in _one_line(e.value)
    named = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
             "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": SQUARE}}]}
    with pytest.raises(AOIProjectedCoordinatesError):
        load_aoi(_write(tmp_path, named, "n.json"))


def test_area_guard(tmp_path):
    with pytest.raises(AOITooLargeError) as e:
        load_aoi((10.0, 40.0, 12.0, 42.0), max_area_km2=1000)
    assert e.value.exit_code == 15 and "--max-area-km2" in _one_line(e.value)
    assert load_aoi((10.0, 40.0, 12.0, 42.0), max_area_km2=None).area_km2 > 30000


# 0.4° x 0.5° across 180°E at Fiji's latitude, in every form a user may give it
_WRAPPED = [[[179.8, -17], [-179.8, -17], [-179.8, -16.5], [179.8, -16.5], [179.8, -17]]]  # jumps 359.6°
_UNWRAPPED = [[[179.8, -17], [180.2, -17], [180.2, -16.5], [179.8, -16.5], [179.8, -17]]]
_SPLIT = [[[[179.8, -17], [180, -17], [180, -16.5], [179.8, -16.5], [179.8, -17]]],
          [[[-180, -17], [-179.8, -17], [-179.8, -16.5], [-180, -16.5], [-180, -17]]]]


def test_antimeridian_crossing_is_split_at_180(tmp_path):
    forms = [
        load_aoi(_write(tmp_path, {"type": "Polygon", "coordinates": _WRAPPED}, "w.json")),
        load_aoi(_write(tmp_path, {"type": "Polygon", "coordinates": _UNWRAPPED}, "u.json")),
        load_aoi(_write(tmp_path, {"type": "MultiPolygon", "coordinates": _SPLIT}, "s.json")),
        load_aoi((179.8, -17, -179.8, -16.5)),  # RFC 7946 bbox: west > east
    ]
    east_half, west_half = load_aoi((179.8, -17, 180, -16.5)), load_aoi((-180, -17, -179.8, -16.5))
    for aoi in forms:
        assert aoi.geometry.geom_type == "MultiPolygon" and len(aoi.geometry.geoms) == 2 and aoi.geometry.is_valid
        assert aoi.geometry.equals(forms[0].geometry)
        assert -180 <= aoi.geometry.bounds[0] and aoi.geometry.bounds[2] <= 180
        assert aoi.geometry.intersects(east_half.geometry) and aoi.geometry.intersects(west_half.geometry)
        assert aoi.area_km2 == pytest.approx(east_half.area_km2 + west_half.area_km2, rel=1e-9)  # ~ 2 x 1,240 km2
        assert aoi.bbox == pytest.approx((179.8, -17, -179.8, -16.5))  # west > east
        assert aoi.utm_zones == (60, 1) and aoi.utm_epsg in (32760, 32701)  # centroid on 180°, not on 0°
        assert not aoi.repaired
    # features of a FeatureCollection: one across 180° (wrapped), one beside it east of 180°
    beside = [[[-179.8, -17], [-179.6, -17], [-179.6, -16.5], [-179.8, -16.5], [-179.8, -17]]]
    fc = load_aoi(_write(tmp_path, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": _WRAPPED}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": beside}}]}, "fc.json"))
    assert fc.geometry.equals(load_aoi((179.8, -17, -179.6, -16.5)).geometry)
    # two islands on either side (not touching 180): the centroid still lies near 180°, not at Greenwich
    islands = load_aoi({"type": "MultiPolygon", "coordinates": [
        [[[178.0, -17], [178.3, -17], [178.3, -16.7], [178.0, -16.7], [178.0, -17]]],
        [[[-179.3, -17], [-179.0, -17], [-179.0, -16.7], [-179.3, -16.7], [-179.3, -17]]]]}, max_area_km2=None)
    assert islands.utm_epsg == 32760 and islands.bbox == pytest.approx((178.0, -17, -179.0, -16.7))  # zone 60 S


def test_antimeridian_hole_and_ordinary_aoi_unchanged():
    holed = load_aoi({"type": "Polygon", "coordinates": [
        [[179.5, -17], [-179.5, -17], [-179.5, -16.8], [179.5, -16.8], [179.5, -17]],
        [[179.9, -16.95], [-179.9, -16.95], [-179.9, -16.85], [179.9, -16.85], [179.9, -16.95]]]})
    outer = load_aoi((179.5, -17, -179.5, -16.8))
    hole = load_aoi((179.9, -16.95, -179.9, -16.85))
    assert holed.area_km2 == pytest.approx(outer.area_km2 - hole.area_km2, rel=1e-9)
    assert not holed.geometry.intersects(hole.geometry.buffer(-1e-6))
    # an AOI away from 180° is kept exactly as given (its WKB feeds the run's config hash)
    geom = {"type": "Polygon", "coordinates": SQUARE}
    from shapely.geometry import shape

    assert load_aoi(geom).geometry.wkb == shape(geom).wkb


def test_ring_around_a_pole_is_refused(tmp_path):
    around = {"type": "Polygon", "coordinates": [[[-180, 80], [-60, 80], [60, 80], [179, 80], [-180, 80]]]}
    with pytest.raises(AOIAntimeridianError) as e:
        load_aoi(_write(tmp_path, around), max_area_km2=None)
    assert e.value.exit_code == 16 and "pole" in _one_line(e.value)
    with pytest.raises(AOIProjectedCoordinatesError):  # west > east outside lon range is no bbox
        load_aoi((500000.0, 4200000.0, 400000.0, 4300000.0))


def test_multi_zone_policy_uses_centroid_zone(caplog):
    with caplog.at_level("WARNING", logger="sgma_batch.aoi"):
        aoi = load_aoi((11.0, 45.0, 13.5, 45.5), max_area_km2=None)  # zones 32 and 33, centroid 12.25 -> 33
    assert aoi.utm_zones == (32, 33)
    assert aoi.utm_epsg == 32633 == utm_epsg_for(12.25, 45.25)
    assert any("spans UTM zones" in r.getMessage() for r in caplog.records)
