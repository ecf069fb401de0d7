"""A real run's STAC item: valid offline, the run's window as RFC 3339 datetimes, an id that follows the
map (AOI + window + config) and not the folder, every file of the store readable by everyone."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from stac_schemas import assert_valid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.run import run_mosaic

pytestmark = pytest.mark.integration


def test_a_runs_item_is_valid_and_its_id_follows_the_map(archive, checkpoint, tmp_path):
    out = tmp_path / "2024-06.zarr"
    s = run_mosaic(run_archive.run_spec(archive, checkpoint, out, executor="sequential"))
    assert s.computed == s.tiles > 0
    item = json.loads((out / "item.json").read_text())
    assert_valid(item)
    p = item["properties"]
    assert (p["start_datetime"], p["end_datetime"]) == ("2024-06-01T00:00:00Z", "2024-06-30T23:59:59Z")
    assert item["id"].startswith("sgma-2024-06-01_2024-06-30-") and item["id"] != out.name
    lon0, lat0, lon1, lat1 = item["bbox"]
    assert lon0 < lon1 and lat0 < lat1
    for name in ("class", "confidence", "modality_mask", "robustness", "quicklook", "drivers"):
        assert (out / item["assets"][name]["href"]).exists(), name
    files = [f for f in out.rglob("*") if f.is_file()]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}, sorted(
        (oct(stat.S_IMODE(f.stat().st_mode)), str(f.relative_to(out))) for f in files if stat.S_IMODE(f.stat().st_mode) != 0o644)
    # the same map in another folder: the same id; another window: another id
    again = run_mosaic(run_archive.run_spec(archive, checkpoint, tmp_path / "copy.zarr", executor="sequential"))
    assert again.computed == again.tiles
    assert json.loads((tmp_path / "copy.zarr" / "item.json").read_text())["id"] == item["id"]
    other = run_mosaic(run_archive.run_spec(archive, checkpoint, tmp_path / "other.zarr", executor="sequential",
                                            end="2024-06-29"))
    assert other.tiles > 0
    assert json.loads((tmp_path / "other.zarr" / "item.json").read_text())["id"] != item["id"]
