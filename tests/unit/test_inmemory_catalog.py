"""Search, co-location and the mosaic order without files or servers (issue 18 item 5): real STAC Items from
../shared/data/stac in an :class:`InMemoryCatalog` give the same scenes as the same items in a file."""

from __future__ import annotations

import json
from pathlib import Path

from shapely.geometry import box

from sgma_batch.colocate import plan_cell, rank_scenes
from sgma_batch.search import InMemoryCatalog, search_scenes

STAC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "stac"


def _items() -> list[dict]:
    data = json.loads((STAC / "earthsearch_sentinel-2-c1-l2a_10items.json").read_text())
    return data["features"] if isinstance(data, dict) else data


def test_in_memory_equals_the_same_items_in_a_file(tmp_path):
    items = _items()
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    lon0, lat0, _, _ = items[0]["bbox"]
    aoi = box(lon0 + 0.1, lat0 + 0.1, lon0 + 0.2, lat0 + 0.2)
    mem = InMemoryCatalog(items, name="memory")
    assert mem.collections == ["sentinel-2-c1-l2a"]
    a = search_scenes(mem, aoi, "2000-01-01", "2030-01-01", modalities=["s2"])
    b = search_scenes(str(path), aoi, "2000-01-01", "2030-01-01", modalities=["s2"])
    assert [s.id for s in a["s2"]] == [s.id for s in b["s2"]] and a["s2"]
    assert all(x.assets == y.assets for x, y in zip(a["s2"], b["s2"], strict=True))
    order = rank_scenes(aoi, a, "2000-01-01", "2030-01-01")["s2"]
    cell = box(lon0 + 0.1, lat0 + 0.1, lon0 + 0.15, lat0 + 0.15)
    kept = plan_cell(cell, {"s2": order}, "2000-01-01", "2030-01-01", keep_order=True).candidates["s2"]
    assert list(kept) == [s for s in order if s in kept]  # the run's order, filtered to the cell
    items[0]["id"] = "changed"  # the catalogue holds its own copy
    assert "changed" not in {i["id"] for i in mem.items()}
