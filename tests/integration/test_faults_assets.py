"""Remote assets under faults: COGs served over HTTP (Range requests) by a real server process, read through
a seeded fault-injecting proxy process (503s, TCP resets, stalls past the client timeout, truncated bodies).

A flaky archive must give a store bitwise identical to a clean run; a permanently broken asset of one scene
must give a finished job whose tiles are degraded, naming it, and the exit code for "partial" (3); an asset
broken in every scene of a collection is a setup error found before any compute (63).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive
from servers import asset_server, chaos_proxy, remote_items

from sgma_batch.run import RunSpec, run_mosaic

pytestmark = pytest.mark.integration

WINDOW = ["--start", "2024-06-01", "--end", "2024-06-30"]
TILING = ["--tile-px", "128", "--halo-px", "16"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return run_archive.build_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return rh.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def clean_store(archive, checkpoint, tmp_path_factory) -> Path:
    """The reference: the same job over local files, no faults, in this process."""
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    s = run_mosaic(RunSpec(aoi=run_archive.aoi_lonlat(), out=str(out), start="2024-06-01", end="2024-06-30",
                           catalog=str(archive), model=str(checkpoint), tile_px=128, halo_px=16,
                           executor="sequential"))
    assert s.computed == s.tiles == 6 and s.exit_code == 0
    return out


def _bbox() -> str:
    return ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())


def test_flaky_assets_give_a_bitwise_identical_store(archive, checkpoint, clean_store, tmp_path):
    with asset_server(archive.parent, tmp_path) as assets, \
            chaos_proxy(assets, rate=0.2, seed=2, stall_s=4.0, workdir=tmp_path) as proxy:
        catalog = remote_items(archive, archive.parent, proxy.url, tmp_path / "remote.json")
        assert all(a["href"].startswith(proxy.url) for i in json.loads(catalog.read_text())["features"]
                   for a in i["assets"].values())
        out = tmp_path / "flaky.zarr"
        r = rh.cli("run", "--aoi", _bbox(), *WINDOW, "--catalog", str(catalog), "--model", str(checkpoint),
                   *TILING, "--out", str(out), "--json")
        stats = proxy.stats()
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert (summary["computed"], summary["degraded"], summary["failed"]) == (6, 0, 0)
    # the proxy really did inject faults of every kind, and the job hid them all
    assert sum(stats["faults"].values()) >= 4, stats
    assert set(stats["faults"]) == {"5xx", "reset", "stall", "truncate"}, stats
    rh.assert_same_store(clean_store, out)
    assert {r.status for r in rh.manifest(out).values()} == {"computed"}


def test_permanently_broken_asset_degrades_tiles_and_exits_partial(archive, checkpoint, tmp_path):
    # One S1 scene's VV asset is gone for good (404): the tiles that rank it first read it once (a 404 is not
    # retried), skip it and take S1 from the other scene; they are degraded, naming it, and the job exits 3.
    # In-process executor (the per-tile read/degrade code is the one Ray workers run; Ray is covered above).
    with asset_server(archive.parent, tmp_path) as assets, \
            chaos_proxy(assets, rate=0.0, broken=["s1-b_vv.tif"], kinds=("404",), workdir=tmp_path) as proxy:
        catalog = remote_items(archive, archive.parent, proxy.url, tmp_path / "remote.json")
        out = tmp_path / "broken.zarr"
        r = rh.cli("run", "--aoi", _bbox(), *WINDOW, "--catalog", str(catalog), "--model", str(checkpoint),
                   "--tile-px", "256", "--halo-px", "16", "--out", str(out), "--sequential", "--json")
        stats = proxy.stats()
    assert r.returncode == 3, r.stderr[-3000:]  # partial
    summary = json.loads(r.stdout)
    assert summary["degraded"] == summary["tiles"] > 0 and summary["failed"] == 0
    assert 0 < stats["faults"]["404"] <= 2 * summary["tiles"], stats  # once per tile, not 1 + 3 retries
    records = rh.manifest(out)
    assert len(records) == summary["tiles"]
    for rec in records.values():
        assert rec.status == "degraded"
        assert set(rec.modalities) == {"s1", "dem"} and tuple(rec.scenes_used["s1"]) == ("s1-a",)
        assert rec.errors["s1/s1-b"].startswith("AssetNotFoundError: HTTP response code: 404"), rec.errors
    arrays = rh.store_arrays(out)
    mapped = arrays["class"] != 255
    assert mapped.mean() > 0.5
    r = rh.cli("status", str(out), "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["degraded"] == summary["tiles"]


def test_an_asset_broken_in_every_scene_is_a_setup_error_before_any_compute(archive, checkpoint, tmp_path):
    # Both S1 scenes' VV assets answer 404: the preflight's probe finds it before any tile is read (exit 63,
    # one line), where it used to be a finished job with S1 absent everywhere and exit 3.
    with asset_server(archive.parent, tmp_path) as assets, \
            chaos_proxy(assets, rate=0.0, broken=["_vv.tif"], kinds=("404",), workdir=tmp_path) as proxy:
        catalog = remote_items(archive, archive.parent, proxy.url, tmp_path / "remote.json")
        out = tmp_path / "broken.zarr"
        r = rh.cli("run", "--aoi", _bbox(), *WINDOW, "--catalog", str(catalog), "--model", str(checkpoint),
                   "--tile-px", "256", "--halo-px", "16", "--out", str(out), "--sequential", "--json")
        stats = proxy.stats()
    assert r.returncode == 63, r.stderr[-3000:]
    assert r.stdout == "" and not out.exists()
    line = rh.one_line_error(r.stderr)
    assert "s1 (sentinel-1-rtc), 2 of 2 probed scene(s)" in line and "404" in line, line
    assert stats["faults"]["404"] <= 4, stats  # one probe per scene


def test_an_outage_longer_than_gdals_own_retries_is_hidden_by_ours(archive, checkpoint, clean_store, tmp_path):
    """Every asset refuses its first 4 requests (TCP resets: more than GDAL's internal retries), then
    recovers. GDAL caches the failed open; the reader's backoff retries must go around that cache."""
    with asset_server(archive.parent, tmp_path) as assets, \
            chaos_proxy(assets, rate=0.0, outage=[".tif"], outage_n=4, kinds=("reset",), workdir=tmp_path) as proxy:
        catalog = remote_items(archive, archive.parent, proxy.url, tmp_path / "remote.json")
        out = tmp_path / "outage.zarr"
        r = rh.cli("run", "--aoi", _bbox(), *WINDOW, "--catalog", str(catalog), "--model", str(checkpoint),
                   *TILING, "--out", str(out), "--sequential", "--json")
        stats = proxy.stats()
    assert stats["faults"]["reset"] >= 4 * 3, stats  # DEM, S1 VV, S1 VH (the best S1 scene fills all), 4 each
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert (s["computed"], s["degraded"]) == (6, 0)
    rh.assert_same_store(clean_store, out)
