"""Sensor profiles: every real STAC file in ../shared/data/stac parses into correct scene records, and
harmonisation (BOA offset once, SCL mask, linear -> dB) is right."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio

from sgma_batch.errors import UnknownCollectionError, UnsupportedSceneError, UsageError
from sgma_batch.scenes import S1_BANDS, S2_BANDS, Scene
from sgma_batch.sensors import get_profile, list_profiles, profile_for_collection, scene_from_item
from sgma_batch.sensors.s2 import S2L1CProfile

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STAC = DATA / "stac"


def _features(name: str) -> list[dict]:
    data = json.loads((STAC / name).read_text())
    if isinstance(data, list):
        return data
    return data["features"] if data.get("type") == "FeatureCollection" else [data]


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- one test per real file --------------------------------------------------------------------------
def test_earthsearch_c1_l2a_10items():
    items = _features("earthsearch_sentinel-2-c1-l2a_10items.json")
    scenes = [scene_from_item(i) for i in items]
    assert len(scenes) == 10
    s = scenes[0]
    assert s.id == "S2A_T13TDE_20240422T174753_L2A" and s.collection == "sentinel-2-c1-l2a"
    assert s.sensor == "s2-l2a" and s.modality == "s2"
    assert s.datetime == _utc("2024-04-22T17:53:02.036")
    assert s.cloud_cover == pytest.approx(81.344962)
    assert s.epsg == 32613 and s.updated == "2024-04-23T03:23:58.819Z"
    assert {k: a.key for k, a in s.assets.items()} == {b: b for b in (*S2_BANDS, "scl")}
    assert s.assets["red"].transform == (10, 0, 399960, 0, -10, 4500000) and s.assets["red"].shape == (10980, 10980)
    assert s.assets["swir22"].transform[0] == 20 and s.assets["scl"].shape == (5490, 5490)
    assert s.assets["red"].nodata == 0
    assert s.assets["red"].href.endswith("/B04.tif")
    assert s.extra["processing_baseline"] == "05.10" and s.extra["dn_offset"] == -1000.0
    assert {sc.epsg for sc in scenes} == {32613}
    assert len({sc.id for sc in scenes}) == 10


def test_earthsearch_c1_collection_file_is_recognised():
    coll = json.loads((STAC / "earthsearch_sentinel-2-c1-l2a_collection.json").read_text())
    assert coll["type"] == "Collection"
    assert profile_for_collection(coll["id"]).name == "s2-l2a"


def test_earthsearch_v0_cogs_item():
    (item,) = _features("earthsearch_v0_sentinel-s2-l2a-cogs_item.json")
    s = scene_from_item(item)
    assert s.id == "S2A_28QCH_20200714_0_L2A" and s.collection == "sentinel-s2-l2a-cogs"
    assert s.datetime == _utc("2020-07-14T11:55:52") and s.cloud_cover == 2.36 and s.epsg == 32628
    assert s.assets["nir08"].key == "B8A" and s.assets["scl"].key == "SCL" and s.assets["rededge1"].key == "B05"
    assert s.assets["blue"].transform == (10.0, 0.0, 300000.0, 0.0, -10.0, 2300040.0)
    assert s.extra["dn_offset"] == 0.0  # 2020 acquisition, before baseline 04.00


def test_pc_sentinel1_rtc_4items():
    items = _features("pc_sentinel-1-rtc_4items.json")
    scenes = [scene_from_item(i) for i in items]
    s = scenes[0]
    assert s.id == "S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc"
    assert s.sensor == "s1-rtc" and s.modality == "s1" and s.orbit_state == "descending"
    assert s.epsg == 32633 and s.shape == (12949, 27526)
    assert s.transform == (10.0, 0.0, 373180.0, 0.0, -10.0, 3424680.0)
    assert s.assets["vv"].nodata == -32768 and s.assets["vh"].key == "vh"
    assert s.assets["vv"].transform == s.transform  # proj:* only on the item here
    assert s.cloud_cover is None and s.extra["linear"] is True
    assert {sc.epsg for sc in scenes} == {32633}
    assert len({sc.id for sc in scenes}) == 4


def test_pc_sentinel2_l2a_2items_13TDE():
    items = _features("pc_sentinel-2-l2a_2items_13TDE.json")
    scenes = [scene_from_item(i) for i in items]
    s = scenes[0]
    assert s.id == "S2B_MSIL2A_20240825T173909_R098_T13TDE_20240825T215747"
    assert s.cloud_cover == pytest.approx(48.747352) and s.orbit_state == "descending"
    # PC labels B8A "rededge"; its name decides
    assert s.assets["nir08"].key == "B8A" and s.assets["rededge3"].key == "B07"
    assert s.assets["red"].transform == (10.0, 0.0, 399960.0, 0.0, -10.0, 4500000.0)
    assert s.assets["scl"].transform[0] == 20.0
    assert s.extra["processing_baseline"] == "05.11" and s.extra["dn_offset"] == -1000.0


def test_pc_sentinel2_l2a_4items():
    scenes = [scene_from_item(i) for i in _features("pc_sentinel-2-l2a_4items.json")]
    assert len(scenes) == 4
    s = scenes[0]
    assert s.id == "S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458" and s.epsg == 32647
    assert s.orbit_state == "ascending" and s.cloud_cover == pytest.approx(0.219774)
    assert all(set(sc.assets) == {*S2_BANDS, "scl"} for sc in scenes)


def test_pc_sentinel2_l2a_item_baseline_0400():
    (item,) = _features("pc_sentinel-2-l2a_item.json")
    s = scene_from_item(item)
    assert s.id.startswith("S2B_MSIL2A_20220612T182919") and s.epsg == 32624
    assert s.cloud_cover == pytest.approx(30.529344)
    assert s.extra["processing_baseline"] == "04.00" and s.extra["dn_offset"] == -1000.0


def test_pc_sentinel2_l2a_item_T06VVN_baseline_0212():
    (item,) = _features("pc_sentinel-2-l2a_item_T06VVN.json")
    s = scene_from_item(item)
    assert s.id == "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531" and s.epsg == 32606
    assert s.extra["processing_baseline"] == "02.12" and s.extra["dn_offset"] == 0.0
    assert s.bbox[0] == pytest.approx(-148.86876)


def test_stactools_sentinel1_grd_is_radar_geometry():
    (item,) = _features("stactools_sentinel1_grd_IW_item.json")
    s = scene_from_item(item)
    assert s.sensor == "s1-grd" and s.collection == "sentinel1-grd" and s.orbit_state == "ascending"
    assert s.datetime == _utc("2021-08-09T17:40:05.653288")
    assert s.extra["radar_geometry"] is True
    with pytest.raises(UnsupportedSceneError) as e:
        get_profile("s1-grd").check_map_grid(s)
    assert e.value.exit_code == 23 and "sentinel-1-rtc" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnsupportedSceneError):
        get_profile("s1-grd").harmonise(s, {"vv": np.ones((2, 2)), "vh": np.ones((2, 2))})


def test_stactools_sentinel1_rtc_aws_gamma0_keys():
    (item,) = _features("stactools_sentinel1_rtc_aws_item.json")
    s = scene_from_item(item)
    assert s.sensor == "s1-rtc" and s.id == "S1A_20200103_17RMJ_ASC"
    assert s.assets["vv"].key == "gamma0_vv" and s.assets["vh"].key == "gamma0_vh"
    assert s.assets["vv"].nodata == 0 and s.epsg == 32617 and s.shape == (5490, 5490)
    # no datetime range on "datetime": the nominal datetime is used
    assert s.datetime == _utc("2020-01-03T23:36:21")


# -- schemes, harmonisation --------------------------------------------------------------------------
def _scene(profile: str, item: dict) -> Scene:
    return get_profile(profile).scene_from_item(item)


def test_both_key_schemes_map_to_the_same_canonical_bands():
    es = scene_from_item(_features("earthsearch_sentinel-2-c1-l2a_10items.json")[0])
    pc = scene_from_item(_features("pc_sentinel-2-l2a_2items_13TDE.json")[0])
    assert set(es.assets) == set(pc.assets) == {*S2_BANDS, "scl"}
    for band in S2_BANDS:  # the same ESA band file behind each canonical name
        es_name = es.assets[band].href.rsplit("/", 1)[1].split(".")[0]
        pc_name = pc.assets[band].href.rsplit("_", 2)[-2]
        assert es_name == pc_name, band


def test_boa_offset_applied_exactly_once():
    prof = get_profile("s2-l2a")
    item = _features("pc_sentinel-2-l2a_2items_13TDE.json")[0]
    new = prof.scene_from_item(item)
    raw = {b: np.full((2, 3), 2000, np.uint16) for b in S2_BANDS}
    raw["scl"] = np.full((2, 3), 4, np.uint8)
    data, valid = prof.harmonise(new, raw)
    assert data.dtype == np.float32 and data.shape == (10, 2, 3)
    np.testing.assert_allclose(data, 0.1, rtol=1e-6)  # (2000 - 1000) / 10000
    # Earth Search v1 style: offset already applied to the DN -> no second offset
    applied = copy.deepcopy(item)
    applied["properties"]["earthsearch:boa_offset_applied"] = True
    data2, _ = prof.harmonise(prof.scene_from_item(applied), raw)
    np.testing.assert_allclose(data2, 0.2, rtol=1e-6)
    # old baseline: no offset
    old = prof.scene_from_item(_features("pc_sentinel-2-l2a_item_T06VVN.json")[0])
    data3, _ = prof.harmonise(old, raw)
    np.testing.assert_allclose(data3, 0.2, rtol=1e-6)
    # the catalogue's raster:bands offset (-0.1 on Earth Search c1) is not applied on top
    es = prof.scene_from_item(_features("earthsearch_sentinel-2-c1-l2a_10items.json")[0])
    assert es.assets["red"].scale == 1.0 and es.assets["red"].offset == 0.0
    np.testing.assert_allclose(prof.harmonise(es, raw)[0], 0.1, rtol=1e-6)
    assert valid.all()


def test_harmonise_rounds_as_the_float64_formulas_do():
    """Values off the integer grid (a bilinear warp of 20 m bands, a float dB chip) come out exactly as
    the float64 reference formulas cast to float32: what a store written before holds."""
    rng = np.random.default_rng(3)
    shape = (40, 50)

    def noisy(lo: float, hi: float) -> np.ndarray:
        a = rng.uniform(lo, hi, shape).astype(np.float32)
        a[rng.random(shape) < 0.05] = np.nan
        return a

    s2 = get_profile("s2-l2a")
    scene = s2.scene_from_item(_features("pc_sentinel-2-l2a_2items_13TDE.json")[0])  # baseline >= 04.00: offset
    raw = {b: noisy(1, 12000) for b in S2_BANDS}
    raw["scl"] = rng.integers(0, 12, shape).astype(np.float32)
    data, valid = s2.harmonise(scene, raw)
    stack = np.stack([raw[b] for b in S2_BANDS]).astype(np.float64)
    ref = ((stack + scene.extra["dn_offset"]) * scene.extra["dn_scale"]).astype(np.float32)
    ok = np.isfinite(stack).all(axis=0) & ~np.isin(raw["scl"], [0, 1, 3, 8, 9, 10])
    np.testing.assert_array_equal(valid, ok)
    assert data.tobytes() == np.where(ok, ref, np.float32(0)).tobytes()

    s1 = get_profile("s1-rtc")
    s1_scene = s1.scene_from_item(_features("pc_sentinel-1-rtc_4items.json")[0])
    lin = {"vv": noisy(-0.01, 0.5), "vh": noisy(1e-5, 0.05)}
    db, ok1 = s1.harmonise(s1_scene, lin)
    stack = np.stack([lin["vv"], lin["vh"]]).astype(np.float64)
    ok = np.isfinite(stack).all(axis=0) & (stack > 0).all(axis=0)
    ref = (10.0 * np.log10(np.where(stack > 0, stack, 1.0))).astype(np.float32)
    np.testing.assert_array_equal(ok1, ok)
    assert db.tobytes() == np.where(ok, ref, np.float32(0)).tobytes()


def test_scl_masking_and_nodata():
    prof = get_profile("s2-l2a")
    scene = prof.scene_from_item(_features("earthsearch_sentinel-2-c1-l2a_10items.json")[0])
    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)  # classes 0..11
    raw = {b: np.full((3, 4), 3000, np.uint16) for b in S2_BANDS}
    raw["scl"] = scl
    raw["red"][2, 3] = 0  # DN 0 = nodata on a class-11 (snow, otherwise valid) pixel
    data, valid = prof.harmonise(scene, raw)
    expected = ~np.isin(scl, [0, 1, 3, 8, 9, 10])
    expected[2, 3] = False
    np.testing.assert_array_equal(valid, expected)
    assert (data[:, ~valid] == 0).all() and np.isclose(data[0, 0, 2], 0.2)


def test_s1_linear_to_db():
    prof = get_profile("s1-rtc")
    scene = prof.scene_from_item(_features("pc_sentinel-1-rtc_4items.json")[0])
    vv = np.array([[1.0, 0.1, 0.01], [-32768.0, 0.0, np.nan]], np.float32)
    vh = np.full_like(vv, 0.001)
    data, valid = prof.harmonise(scene, {"vv": vv, "vh": vh})
    np.testing.assert_allclose(data[0, 0], [0.0, -10.0, -20.0], atol=1e-5)
    np.testing.assert_allclose(data[1, 0], -30.0, atol=1e-5)
    np.testing.assert_array_equal(valid, [[True, True, True], [False, False, False]])
    assert np.isfinite(data).all() and (data[:, 1] == 0).all()


def test_s2_l1c_real_sen1floods11_chip():
    prof = get_profile("s2-l1c")
    item = {"type": "Feature", "id": "Spain_7370579_S2Hand", "collection": "sen1floods11-s2",
            "geometry": {"type": "Point", "coordinates": [-1.1, 38.0]}, "bbox": [-1.1, 38.0, -1.1, 38.0],
            "properties": {"datetime": "2019-09-18T10:50:00Z"},
            "assets": {n: {"href": "x.tif", "eo:bands": [{"name": n}], "raster:bands": [{"nodata": 0}]}
                       for n in ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")}}
    scene = prof.scene_from_item(item)
    assert set(scene.assets) == set(S2_BANDS) and scene.assets["nir08"].key == "B8A"
    with rasterio.open(DATA / "sen1floods11" / "S2Hand" / "Spain_7370579_S2Hand.tif") as src:
        stack = src.read()  # (13, 512, 512) int16 TOA x 10000
        assert src.descriptions[8] == "B8A"
    arrays = S2L1CProfile.arrays_from_file_order(stack)
    data, valid = prof.harmonise(scene, arrays)
    assert data.shape == (10, 512, 512)
    np.testing.assert_allclose(data[S2_BANDS.index("nir08")], stack[8] / 10000.0 * valid, rtol=1e-6)
    np.testing.assert_allclose(data[S2_BANDS.index("swir22")], stack[12] / 10000.0 * valid, rtol=1e-6)
    assert valid.mean() > 0.9 and 0 < float(data[:, valid].mean()) < 1


def test_dem_and_registry():
    dem = get_profile("dem-glo30")
    item = {"type": "Feature", "id": "Copernicus_DSM_COG_10_N38_00_W002_00_DEM", "collection": "cop-dem-glo-30",
            "geometry": {"type": "Polygon", "coordinates": [[[-2, 38], [-1, 38], [-1, 39], [-2, 39], [-2, 38]]]},
            "bbox": [-2, 38, -1, 39], "properties": {"datetime": "2021-04-22T00:00:00Z", "proj:epsg": 4326},
            "assets": {"data": {"href": "https://example.org/dem.tif", "roles": ["data"], "raster:bands": [{"nodata": -32767.0}]}}}
    s = scene_from_item(item)
    assert s.sensor == "dem-glo30" and s.assets["elevation"].key == "data"
    data, valid = dem.harmonise(s, {"elevation": np.array([[100.5, -32767.0]], np.float32)})
    assert data.shape == (1, 1, 2) and data[0, 0, 0] == np.float32(100.5) and valid.tolist() == [[True, False]]
    assert set(list_profiles()) >= {"s2-l2a", "s2-l1c", "s1-rtc", "s1-grd", "s1-db", "dem-glo30"}
    assert get_profile("s2-l2a").bands == S2_BANDS and get_profile("s2-l2a").mask_bands == ("scl",)
    assert get_profile("s1-rtc").bands == S1_BANDS
    with pytest.raises(UsageError, match="known: "):
        get_profile("landsat")
    with pytest.raises(UnknownCollectionError):
        profile_for_collection("landsat-c2-l2")
