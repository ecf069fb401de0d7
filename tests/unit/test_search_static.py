"""Static-catalogue search, collection recognition, windows, query semantics and signing (no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest

from sgma_batch.aoi import load_aoi
from sgma_batch.errors import (
    InvalidTimeWindowError,
    NothingFoundError,
    TooManyItemsError,
    UnknownCollectionError,
    UnsupportedSceneError,
    UsageError,
)
from sgma_batch.search import (
    matches_query,
    parse_collections,
    parse_window,
    search_scenes,
    select_collections,
)
from sgma_batch.stac_io import register_signer, resolve_href

STAC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "stac"
ES10 = STAC / "earthsearch_sentinel-2-c1-l2a_10items.json"
DENVER = (-105.2, 39.9, -105.0, 40.1)

EARTH_SEARCH = ["cop-dem-glo-30", "cop-dem-glo-90", "landsat-c2-l2", "naip", "sentinel-1-grd", "sentinel-2-c1-l2a",
                "sentinel-2-l1c", "sentinel-2-l2a", "sentinel-2-pre-c1-l2a"]
PLANETARY = ["cop-dem-glo-30", "cop-dem-glo-90", "landsat-c2-l2", "sentinel-1-grd", "sentinel-1-rtc", "sentinel-2-l2a", "io-lulc"]


def test_modalities_recognised_from_public_collection_lists():
    es = select_collections(EARTH_SEARCH)
    assert {m: c.collection for m, c in es.items()} == {"s2": "sentinel-2-c1-l2a", "dem": "cop-dem-glo-30"}
    pc = select_collections(PLANETARY)
    assert {m: (c.collection, c.profile) for m, c in pc.items()} == {
        "s2": ("sentinel-2-l2a", "s2-l2a"), "s1": ("sentinel-1-rtc", "s1-rtc"), "dem": ("cop-dem-glo-30", "dem-glo30")}
    over = select_collections(EARTH_SEARCH, "s2=sentinel-2-l2a,s1=sentinel-1-grd")
    assert over["s2"].collection == "sentinel-2-l2a" and over["s1"].profile == "s1-grd"
    l1c = select_collections(EARTH_SEARCH, {"s2": "sentinel-2-l1c"})
    assert l1c["s2"].profile == "s2-l1c"
    custom = select_collections(["my-s2"], "s2=my-s2:s2-l2a")
    assert custom["s2"].profile == "s2-l2a"


def test_unknown_collections_list_the_available_ones():
    with pytest.raises(UnknownCollectionError) as e:
        select_collections(EARTH_SEARCH, "s1=sentinel-1-rtc")
    assert e.value.exit_code == 21 and "sentinel-1-grd" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownCollectionError, match="--collections"):
        select_collections(["naip", "landsat-c2-l2"])
    with pytest.raises(UsageError):
        parse_collections("s3=foo")
    with pytest.raises(UsageError):
        parse_collections("sentinel-2-l2a")
    with pytest.raises(UsageError, match="holds s1"):
        select_collections(PLANETARY, "s2=sentinel-1-rtc")


def test_time_window():
    s, e = parse_window("2024-04-01", "2024-04-30")
    assert s == datetime(2024, 4, 1, tzinfo=UTC) and e.date().day == 30 and e.hour == 23
    with pytest.raises(InvalidTimeWindowError) as err:
        parse_window("2024-05-01", "2024-04-01")
    assert err.value.exit_code == 22
    with pytest.raises(InvalidTimeWindowError):
        parse_window("April", "2024-04-01")


def test_query_semantics():
    item = {"properties": {"eo:cloud_cover": 12.5, "sat:orbit_state": "descending", "platform": "sentinel-2a"}}
    assert matches_query(item, {"eo:cloud_cover": {"lt": 20, "gte": 12.5}})
    assert not matches_query(item, {"eo:cloud_cover": {"lt": 12.5}})
    assert matches_query(item, {"sat:orbit_state": "descending", "platform": {"startsWith": "sentinel-2"}})
    assert matches_query(item, {"platform": {"in": ["sentinel-2a", "sentinel-2b"]}})
    assert not matches_query(item, {"s2:processing_baseline": {"eq": "05.10"}})  # missing never matches
    with pytest.raises(UsageError):
        matches_query(item, {"eo:cloud_cover": {"approx": 1}})


def test_item_collection_file_search_window_and_query():
    aoi = load_aoi(DENVER)
    r = search_scenes(ES10, aoi, "2024-04-05", "2024-04-15")
    ids = [s.id for s in r["s2"]]
    assert ids == ["S2A_T13TDE_20240405T175934_L2A", "S2B_T13TDE_20240407T174209_L2A",
                   "S2B_T13TDE_20240410T175332_L2A", "S2A_T13TDE_20240412T175055_L2A",
                   "S2A_T13TDE_20240415T180048_L2A"]  # the end date is inclusive
    q = search_scenes(ES10, aoi, "2024-04-05", "2024-04-15", query={"s2": {"eo:cloud_cover": {"lt": 10}}})
    assert [s.id for s in q["s2"]] == ["S2B_T13TDE_20240407T174209_L2A", "S2A_T13TDE_20240412T175055_L2A"]
    f = search_scenes(ES10, aoi, "2024-04-05", "2024-04-15",
                      filter={"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]})
    assert [s.id for s in f["s2"]] == [s.id for s in q["s2"]]
    with pytest.raises(NothingFoundError) as e:
        search_scenes(ES10, load_aoi((10.0, 45.0, 10.1, 45.1)), "2024-04-05", "2024-04-15")
    assert e.value.exit_code == 4
    assert search_scenes(ES10, load_aoi((10.0, 45.0, 10.1, 45.1)), "2024-04-05", "2024-04-15", allow_empty=True) == {"s2": []}
    with pytest.raises(TooManyItemsError):
        search_scenes(ES10, aoi, "2024-01-01", "2024-12-31", max_items=3)


def test_static_catalog_json_with_relative_hrefs(tmp_path):
    items = json.loads(ES10.read_text())["features"][:3]
    coll_dict = json.loads((STAC / "earthsearch_sentinel-2-c1-l2a_collection.json").read_text())
    coll_dict["links"] = []
    cat = pystac.Catalog(id="test", description="test")
    coll = pystac.Collection.from_dict(coll_dict)
    for d in items:
        d = json.loads(json.dumps(d))
        d["links"] = []
        d["assets"] = {k: v for k, v in d["assets"].items() if k in ("red", "scl", "blue", "green", "rededge1", "rededge2",
                                                                     "rededge3", "nir", "nir08", "swir16", "swir22")}
        for k, a in d["assets"].items():
            a["href"] = f"./{k}.tif"  # relative to the item file
        coll.add_item(pystac.Item.from_dict(d))
    cat.add_child(coll)
    cat.normalize_hrefs(str(tmp_path / "cat"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    r = search_scenes(tmp_path / "cat" / "catalog.json", load_aoi(DENVER), "2024-04-01", "2024-04-30")
    assert sorted(s.id for s in r["s2"]) == sorted(i["id"] for i in items)
    s = r["s2"][0]
    red = Path(s.assets["red"].href)
    assert red.is_absolute() and red == tmp_path / "cat" / "sentinel-2-c1-l2a" / s.id / "red.tif"


def _sas(href: str) -> str:
    return href + "?sig=SECRET"


def test_signer_is_stored_by_name_and_applied_at_read_time():
    register_signer("test-sas", _sas)
    r = search_scenes(ES10, load_aoi(DENVER), "2024-04-05", "2024-04-07", signer="test-sas")
    s = r["s2"][0]
    assert s.extra["signer"] == "test-sas"
    assert all("SECRET" not in a.href for a in s.assets.values())  # records never hold signed hrefs
    assert resolve_href(s, "red") == s.assets["red"].href + "?sig=SECRET"
    with pytest.raises(UsageError, match="unknown signer"):
        search_scenes(ES10, load_aoi(DENVER), "2024-04-05", "2024-04-07", signer="nope")


def test_grd_is_refused_for_map_grid_use():
    grd = STAC / "stactools_sentinel1_grd_IW_item.json"
    with pytest.raises(UnsupportedSceneError, match="radar geometry"):
        search_scenes(grd, load_aoi((3.0, 45.0, 3.5, 45.5)), "2021-08-01", "2021-08-31", collections="s1=sentinel1-grd")
