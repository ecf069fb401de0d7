"""Search against real STAC servers on 127.0.0.1: rustac (core search), a 503/429-injecting proxy
(retries, including POST), and stac-fastapi-pgstac on PostgreSQL/PostGIS (query/filter passthrough).
The static in-process path must return exactly the same scene ids on the same items."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from servers import (
    STAC_DIR,
    drop_proxy,
    fault_proxy,
    load_features,
    minimal_collection,
    pgstac_server,
    real_item_files,
    rustac_server,
    write_item_collection,
)
from shapely.geometry import MultiPolygon, box, mapping

from sgma_batch.aoi import load_aoi
from sgma_batch.errors import CatalogUnreachableError, TooManyItemsError, UnsafeAssetError
from sgma_batch.search import search_scenes

pytestmark = pytest.mark.integration

STAC_ES10 = STAC_DIR / "earthsearch_sentinel-2-c1-l2a_10items.json"
STAC_S1 = STAC_DIR / "pc_sentinel-1-rtc_4items.json"
DENVER = (-105.2, 39.9, -105.0, 40.1)  # tile 13TDE
LIBYA = (14.0, 30.0, 14.5, 30.5)  # PC sentinel-1-rtc items
FIJI = (179.8, -17.2, -179.8, -16.5)  # across the antimeridian (west > east)
FIJI_EAST = (-179.9, -17.2, -179.6, -16.5)  # only east of 180°
CASES = [
    # (aoi, start, end, collections, query)
    (DENVER, "2024-04-01", "2024-04-30", None, None),
    (DENVER, "2024-04-01", "2024-04-30", None, {"s2": {"eo:cloud_cover": {"lt": 50}}}),
    (DENVER, "2024-08-01", "2024-08-31", "s2=sentinel-2-l2a", None),
    (DENVER, "2024-04-10T18:02:55Z", "2024-04-17T00:00:00Z", None, None),
    (LIBYA, "2024-04-19T04:59:12Z", "2024-04-20", None, None),
    (LIBYA, "2024-04-01", "2024-04-30", "s1=sentinel-1-rtc", {"sat:orbit_state": "descending"}),
    ((-82.0, 25.5, -81.5, 26.0), "2020-01-01", "2020-01-31", "s1=sentinel1-rtc-aws", None),  # AWS RTC (gamma0_*)
    (FIJI, "2024-04-01", "2024-04-30", None, None),
    (FIJI_EAST, "2024-04-01", "2024-04-30", None, None),
]


def antimeridian_items() -> list[dict]:
    """A real Earth Search c1 item moved to 180°E: footprints on either side, one split at 180° as real
    catalogues split them, one just east of the AOI and one at Greenwich (half the globe away)."""
    base = load_features(STAC_ES10)[0]
    places = {
        "west-of-180": box(179.5, -17.5, 180, -16),
        "east-of-180": box(-180, -17.5, -179.5, -16),
        "split-at-180": MultiPolygon([box(179.95, -16.9, 180, -16.6), box(-180, -16.9, -179.95, -16.6)]),
        "east-beyond": box(-179.7, -17.5, -179.0, -16),
        "greenwich": box(-0.5, -17.5, 0.5, -16),
    }
    out = []
    for name, geom in places.items():
        item = copy.deepcopy(base)
        item["id"] = f"S2A_T60KYA_{name}"
        item["geometry"], item["bbox"] = mapping(geom), list(geom.bounds)
        out.append(item)
    return out


def _ids(result):
    return {m: [s.id for s in v] for m, v in result.items()}


@pytest.fixture(scope="module")
def antimeridian_file(tmp_path_factory) -> Path:
    return write_item_collection(antimeridian_items(), tmp_path_factory.mktemp("am") / "antimeridian.json")


@pytest.fixture(scope="module")
def all_items_file(tmp_path_factory, antimeridian_file) -> Path:
    items = [i for f in (*real_item_files(), antimeridian_file) for i in load_features(f)]
    return write_item_collection(items, tmp_path_factory.mktemp("static") / "items.json")


@pytest.fixture(scope="module")
def rustac_url(tmp_path_factory, antimeridian_file):
    with rustac_server([*real_item_files(), antimeridian_file], tmp_path_factory.mktemp("rustac")) as url:
        yield url


@pytest.mark.parametrize("case", range(len(CASES)))
def test_static_and_rustac_return_identical_scenes(case, rustac_url, all_items_file):
    aoi_box, start, end, cols, query = CASES[case]
    aoi = load_aoi(aoi_box)
    static = search_scenes(all_items_file, aoi, start, end, collections=cols, query=query, allow_empty=True)
    api = search_scenes(rustac_url, aoi, start, end, collections=cols, query=query, allow_empty=True)
    assert _ids(static) == _ids(api)
    assert any(static.values())  # every case finds something, so equality is not vacuous
    for mod, scenes in api.items():
        for a, b in zip(scenes, static[mod]):
            assert a.assets == b.assets and a.datetime == b.datetime and a.cloud_cover == b.cloud_cover


def test_paging_and_max_items_guard(rustac_url):
    aoi = load_aoi(DENVER)
    with fault_proxy(rustac_url, failures=0) as proxy:
        r = search_scenes(proxy.url, aoi, "2024-03-01", "2024-05-01", modalities=["s2"], page_size=3)
        assert len(r["s2"]) == 10
        assert proxy.seen["POST /search"] >= 4  # 10 items in pages of 3
    with pytest.raises(TooManyItemsError) as e:
        search_scenes(rustac_url, aoi, "2024-03-01", "2024-05-01", modalities=["s2"], max_items=5, page_size=3)
    assert e.value.exit_code == 24 and "--max-items" in str(e.value)


@pytest.mark.parametrize("status", [503, 429])
def test_retries_on_transient_errors_including_post(rustac_url, status):
    aoi = load_aoi(DENVER)
    direct = search_scenes(rustac_url, aoi, "2024-04-01", "2024-04-30")
    with fault_proxy(rustac_url, failures=2, status=status) as proxy:
        via = search_scenes(proxy.url, aoi, "2024-04-01", "2024-04-30", retries=4, backoff_factor=0.01)
        assert proxy.faults["POST /search"] == 2 and proxy.faults["GET /collections"] == 2
    assert _ids(via) == _ids(direct)


def test_retries_on_dropped_connections_including_post(rustac_url):
    aoi = load_aoi(DENVER)
    direct = search_scenes(rustac_url, aoi, "2024-04-01", "2024-04-30")
    with drop_proxy(rustac_url, failures=2) as proxy:
        via = search_scenes(proxy.url, aoi, "2024-04-01", "2024-04-30", retries=4, backoff_factor=0.01)
        assert proxy.faults["POST /search"] == 2 and proxy.faults["GET /collections"] == 2
    assert _ids(via) == _ids(direct) and any(via.values())


def test_gives_up_after_retries_with_a_clear_error(rustac_url):
    with fault_proxy(rustac_url, failures=50, status=503) as proxy, pytest.raises(CatalogUnreachableError) as e:
        search_scenes(proxy.url, load_aoi(DENVER), "2024-04-01", "2024-04-30", retries=2, backoff_factor=0.01)
    assert e.value.exit_code == 20 and proxy.url in str(e.value)


def test_unreachable_catalogue():
    from servers import free_port

    with pytest.raises(CatalogUnreachableError):
        search_scenes(f"http://127.0.0.1:{free_port()}", load_aoi(DENVER), "2024-04-01", "2024-04-30", retries=1, backoff_factor=0.01)


def test_local_asset_hrefs_from_a_remote_catalogue_are_refused(rustac_url):
    # the stactools GRD item has relative hrefs; treat the loopback server as if it were remote
    with pytest.raises(UnsafeAssetError):
        search_scenes(rustac_url, load_aoi((3.0, 45.0, 3.5, 45.5)), "2021-08-01", "2021-08-31",
                      collections="s1=sentinel1-grd", allow_local_assets=False)


@pytest.fixture(scope="module")
def pgstac_url():
    items = [i for f in real_item_files() for i in load_features(f)] + antimeridian_items()
    by_coll: dict[str, list] = {}
    for i in items:
        by_coll.setdefault(i["collection"], []).append(i)
    collections = [minimal_collection(c, its) for c, its in sorted(by_coll.items())]
    with pgstac_server(collections, items) as url:
        yield url


def test_pgstac_query_and_filter_match_static_and_rustac(pgstac_url, rustac_url, all_items_file):
    aoi = load_aoi(DENVER)
    cql = {"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]}
    query = {"eo:cloud_cover": {"lt": 50}}
    results = {
        "static-query": search_scenes(all_items_file, aoi, "2024-04-01", "2024-04-30", query=query),
        "pgstac-query": search_scenes(pgstac_url, aoi, "2024-04-01", "2024-04-30", query=query),
        "pgstac-filter": search_scenes(pgstac_url, aoi, "2024-04-01", "2024-04-30", filter=cql),
        "rustac-filter": search_scenes(rustac_url, aoi, "2024-04-01", "2024-04-30", filter=cql),
        "static-filter": search_scenes(all_items_file, aoi, "2024-04-01", "2024-04-30", filter=cql),
    }
    ids = {k: _ids(v) for k, v in results.items()}
    assert len({json.dumps(v, sort_keys=True) for v in ids.values()}) == 1, ids
    s2 = results["pgstac-filter"]["s2"]
    assert 0 < len(s2) < 9 and all(s.cloud_cover < 50 for s in s2)
    # the unfiltered pgstac search agrees with static too
    assert _ids(search_scenes(pgstac_url, aoi, "2024-04-01", "2024-04-30")) == _ids(
        search_scenes(all_items_file, aoi, "2024-04-01", "2024-04-30"))


def test_antimeridian_aoi_finds_the_scenes_on_both_sides(pgstac_url, rustac_url, all_items_file):
    """An AOI across 180° (given as a bbox with west > east) is searched as its two parts split at 180°:
    the same scenes on both sides from the in-process path, rustac and pgstac; none half the globe away."""
    aoi = load_aoi(FIJI)
    found = {name: _ids(search_scenes(cat, aoi, "2024-04-01", "2024-04-30"))
             for name, cat in (("static", all_items_file), ("rustac", rustac_url), ("pgstac", pgstac_url))}
    expected = {"s2": [f"S2A_T60KYA_{n}" for n in ("east-of-180", "split-at-180", "west-of-180")], "s1": []}
    assert found == {"static": expected, "rustac": expected, "pgstac": expected}


def test_static_catalog_json_and_rustac_agree(tmp_path):
    """A self-contained catalog.json (collections -> items, relative asset hrefs), searched in-process and
    served by rustac from the same items, gives the same scenes (incl. resolved local hrefs)."""
    import pystac
    from servers import catalog_items_file

    cat = pystac.Catalog(id="local", description="real items, local hrefs")
    for f, cid in ((STAC_ES10, "sentinel-2-c1-l2a"), (STAC_S1, "sentinel-1-rtc")):
        items = load_features(f)
        coll = pystac.Collection.from_dict(minimal_collection(cid, items))
        for d in items:
            d = json.loads(json.dumps(d))
            d["links"] = []
            for k, a in d["assets"].items():
                a["href"] = f"./{k}.tif"
            coll.add_item(pystac.Item.from_dict(d, migrate=False))
        cat.add_child(coll)
    cat.normalize_hrefs(str(tmp_path / "cat"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    path = tmp_path / "cat" / "catalog.json"
    served = catalog_items_file(path, tmp_path / "served.json")
    with rustac_server([served], tmp_path / "rustac") as url:
        for aoi_box, start, end in ((DENVER, "2024-04-05", "2024-04-20"), (LIBYA, "2024-04-01", "2024-04-30")):
            static = search_scenes(path, load_aoi(aoi_box), start, end)
            api = search_scenes(url, load_aoi(aoi_box), start, end)
            assert _ids(static) == _ids(api) and any(static.values())
            for mod, scenes in static.items():
                assert [s.assets for s in scenes] == [s.assets for s in api[mod]]
                assert all(Path(a.href).is_file() is False and Path(a.href).is_absolute() for s in scenes for a in s.assets.values())
