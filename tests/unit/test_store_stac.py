"""The store's STAC item: valid against the vendored STAC 1.1 / projection / raster / classification
schemas (offline), an id per AOI + window + config, an antimeridian bbox, readable files."""

from __future__ import annotations

import copy
import json
import stat

import numpy as np
import pytest
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from stac_schemas import assert_valid, errors

from sgma_batch.aoi import load_aoi
from sgma_batch.grid import plan_tiles, target_geobox
from sgma_batch.store import (
    ROBUSTNESS_SCALE,
    StoreLayout,
    TileArrays,
    TileRecord,
    commit_tile,
    finish_store,
    open_or_create_store,
    write_tile,
)
from sgma_batch.store.stac import _stac_item, lonlat_bbox

CLASSES = (("water", "#1f78b4"), ("trees", "#33a02c"), ("built up", "#e31a1c"))
MODS = ("s2", "s1", "dem")
GBOX = GeoBox.from_bbox((500000, 4000000, 500000 + 10 * 200, 4000000 + 10 * 150), "EPSG:32633", resolution=10)


def _provenance(start="2024-05-01", end="2024-05-31", aoi="a1"):
    config = {"res_m": 10, "tile_px": 64, "aoi": aoi, "start": start, "end": end}
    return {"model": "sgma_tiny", "model_hash": "m" * 64, "config_hash": f"cfg-{aoi}-{start}-{end}",
            "config": config, "window": [start, end], "created": "2026-12-08T01:02:03.456789+00:00",
            "software": "0.test"}


def _store(path, *, prob=True, fmt=3, provenance=None):
    layout = StoreLayout(GBOX, 64, CLASSES, MODS, write_probability=prob, zarr_format=fmt)
    open_or_create_store(path, layout, provenance or _provenance())
    tasks = plan_tiles(GBOX, GBOX.extent.to_crs("EPSG:4326").geom, tile_px=64, halo_px=0)
    for i, t in enumerate(tasks[:3]):
        h, w = t.core.shape.yx
        rng = np.random.default_rng(i)
        write_tile(path, layout, t.region, TileArrays(
            rng.integers(0, 3, (h, w), dtype=np.uint8), rng.integers(1, 256, (h, w), dtype=np.uint8),
            np.full((h, w), 0b111, np.uint8), rng.integers(0, 256, (3, h, w), dtype=np.uint8),
            rng.random((3, h, w)).astype(np.float16)))
        commit_tile(path, TileRecord.for_task(t, "computed"))
    return layout, finish_store(path, layout)


def test_the_item_of_a_finished_store_is_valid_stac_with_its_extensions(tmp_path):
    _, item = _store(tmp_path / "2024-05.zarr")
    assert_valid(item)
    assert json.loads((tmp_path / "2024-05.zarr" / "item.json").read_text()) == item
    p = item["properties"]
    assert (p["datetime"], p["start_datetime"], p["end_datetime"]) == (None, "2024-05-01T00:00:00Z",
                                                                      "2024-05-31T23:59:59Z")
    assert p["created"] == "2026-12-08T01:02:03.456789Z"
    assert p["proj:code"] == "EPSG:32633" and p["proj:shape"] == [150, 200]
    assert p["proj:transform"] == [10.0, 0.0, 500000.0, 0.0, -10.0, 4001500.0]
    assert p["proj:bbox"] == [500000.0, 4000000.0, 502000.0, 4001500.0]
    a = item["assets"]
    assert a["class"]["bands"] == [{"name": "class", "nodata": 255, "data_type": "uint8",
                                    "raster:spatial_resolution": 10.0}]
    classes = a["class"]["classification:classes"]
    assert [(c["value"], c["name"], c["description"]) for c in classes] == [
        (0, "water", "water"), (1, "trees", "trees"), (2, "built_up", "built up"), (255, "nodata", classes[-1]["description"])]
    assert classes[0]["color_hint"] == "1F78B4" and classes[-1]["nodata"] is True
    rob = a["robustness"]["bands"]
    assert [b["name"] for b in rob] == list(MODS)
    assert all(b["nodata"] == 255 and b["data_type"] == "uint8" and b["raster:scale"] == 1 / ROBUSTNESS_SCALE for b in rob)
    assert a["confidence"]["bands"][0]["nodata"] == 0 and a["modality_mask"]["bands"][0]["nodata"] == 0
    assert [f["name"] for f in a["modality_mask"]["classification:bitfields"]] == list(MODS)
    assert [(b["name"], b["nodata"], b["data_type"]) for b in a["probability"]["bands"]] == [
        (n, "nan", "float16") for n, _ in CLASSES]
    # every asset is in the store, next to item.json, and its href is relative to it
    for name, asset in a.items():
        assert asset["href"].startswith("./")
        assert (tmp_path / "2024-05.zarr" / asset["href"]).exists(), name
    assert item["links"] == [{"rel": "self", "href": (tmp_path / "2024-05.zarr" / "item.json").resolve().as_uri(),
                              "type": "application/geo+json"}]


def test_the_validator_rejects_what_the_issue_found_wrong(tmp_path):
    _, item = _store(tmp_path / "m.zarr", prob=False)
    assert_valid(item)
    bad = []
    for path, value in ((("properties", "start_datetime"), "2024-05-01"),  # a date, not RFC 3339
                        (("properties", "end_datetime"), "2024-05-31T23:59:59+02:00"),  # not UTC
                        (("properties", "proj:shape"), [150]),
                        (("assets", "class", "bands"), [{"name": "class", "nodata": 255, "data_type": "u8"}]),
                        (("assets", "robustness", "bands"), [{"name": "s2", "raster:scale": "1/254"}]),
                        (("assets", "class", "classification:classes"), [{"value": 0, "color_hint": "#1F78B4"}]),
                        (("bbox",), [0, 1, 2]),
                        (("links",), [{"href": "./"}])):
        broken = copy.deepcopy(item)
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        bad.append((path, errors(broken)))
    assert all(problems for _, problems in bad), [p for p, problems in bad if not problems]
    no_ext = copy.deepcopy(item)
    no_ext["stac_extensions"] = no_ext["stac_extensions"][1:]  # projection fields without the extension: allowed
    assert errors(no_ext) == []
    wrong_ext = copy.deepcopy(item)
    wrong_ext["stac_extensions"].append("https://stac-extensions.github.io/eo/v2.0.0/schema.json")
    with pytest.raises(Exception, match="eo/v2.0.0"):  # not vendored: never fetched
        errors(wrong_ext)


def test_the_id_is_per_aoi_window_and_config_not_the_folder_name(tmp_path):
    layout = StoreLayout(GBOX, 64, CLASSES, MODS)

    def item_id(**kw):
        attrs = {f"sgma:{k}": v for k, v in _provenance(**kw).items()}
        return _stac_item(tmp_path / "2024-01.zarr", layout, attrs, None)["id"]

    base = item_id()
    assert base.startswith("sgma-2024-05-01_2024-05-31-") and len(base) == len("sgma-2024-05-01_2024-05-31-") + 12
    assert item_id() == base  # the same map: the same id, whatever folder holds it
    assert len({base, item_id(aoi="a2"), item_id(start="2024-06-01", end="2024-06-30"), item_id(end="2024-06-15")}) == 4
    other_folder = _stac_item(tmp_path / "elsewhere.zarr", layout, {f"sgma:{k}": v for k, v in _provenance().items()},
                              None)
    assert other_folder["id"] == base


def test_an_antimeridian_aoi_gets_west_greater_than_east_and_stays_valid(tmp_path):
    aoi = load_aoi((179.8, -17, -179.8, -16.5))
    gbox = target_geobox(aoi.geometry, res_m=100.0)
    layout = StoreLayout(gbox, 64, CLASSES, MODS)
    item = _stac_item(tmp_path / "fiji.zarr", layout, {f"sgma:{k}": v for k, v in _provenance().items()},
                      Geometry(aoi.geometry, "EPSG:4326"))
    assert item["bbox"] == pytest.approx([179.8, -17, -179.8, -16.5])
    assert item["bbox"] == pytest.approx(list(aoi.bbox))
    assert item["geometry"]["type"] == "MultiPolygon"  # split at 180 (RFC 7946)
    assert_valid(item)
    # islands on both sides, not touching 180; an ordinary AOI is unchanged
    islands = load_aoi({"type": "MultiPolygon", "coordinates": [
        [[[178.0, -17], [178.3, -17], [178.3, -16.7], [178.0, -16.7], [178.0, -17]]],
        [[[-179.3, -17], [-179.0, -17], [-179.0, -16.7], [-179.3, -16.7], [-179.3, -17]]]]}, max_area_km2=None)
    assert lonlat_bbox(islands.geometry) == pytest.approx([178.0, -17, -179.0, -16.7])
    assert lonlat_bbox(islands.geometry) == pytest.approx(list(islands.bbox))
    ordinary = load_aoi((14.1, 47.0, 14.3, 47.1))
    assert lonlat_bbox(ordinary.geometry) == pytest.approx([14.1, 47.0, 14.3, 47.1])


def test_item_and_manifest_records_are_readable_by_everyone(tmp_path):
    path = tmp_path / "m.zarr"
    _store(path, prob=False)
    written = [path / "item.json", *sorted((path / "manifest").glob("*.json"))]
    assert len(written) == 4
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in (path / "class").rglob("*") if p.is_file()} == {0o644}
