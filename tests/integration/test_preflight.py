"""Fail fast before any compute: the preflight against real servers on 127.0.0.1.

The archive (DEM + two S1 RTC scenes, COGs) is served by the HTTP range server of ``tests/servers.py``,
by Python's own ``http.server`` (a real server without range support), behind a token (403), at a path
that does not exist (404), at a port nothing listens on, and at a host name that does not resolve. Each
setup error must come out of ``plan`` (the same ``_prepare`` as ``run``) with its own exit code, in
seconds, without the reader's three retries and without a store.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive
from servers import _stop, _wait_http, asset_server, free_port, remote_items

from sgma_batch.errors import (
    AOIOutsideCatalogError,
    AssetAccessDeniedError,
    AssetHostUnreachableError,
    AssetNoRangeError,
    AssetNotFoundError,
    InvalidTimeWindowError,
    SignerUnavailableError,
    UnitMismatchError,
)
from sgma_batch.run import plan_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return run_archive.build_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return rh.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def served(archive, tmp_path_factory):
    with asset_server(archive.parent, tmp_path_factory.mktemp("srv")) as url:
        yield url


@contextlib.contextmanager
def no_range_server(directory: Path):
    """Python's ``http.server`` (a separate process): answers every GET with the whole file, never 206."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                             "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/items.json", proc, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _plan(catalog: Path, checkpoint: Path, tmp_path: Path, **kw):
    return plan_run(run_archive.run_spec(catalog, checkpoint, tmp_path / "out.zarr", **kw), measure=False)


def _remote(archive: Path, base: str, tmp_path: Path) -> Path:
    return remote_items(archive, archive.parent, base, tmp_path / "remote.json")


def test_assets_over_a_range_server_pass(archive, checkpoint, served, tmp_path):
    plan = _plan(_remote(archive, served, tmp_path), checkpoint, tmp_path)
    assert plan.scenes == {"s1": 2, "dem": 1} and plan.compute == plan.tiles > 0
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("case, error, code", [
    ("no-range", AssetNoRangeError, 65),
    ("404", AssetNotFoundError, 63),
    ("403", AssetAccessDeniedError, 64),
    ("dead-port", AssetHostUnreachableError, 66),
    ("dns", AssetHostUnreachableError, 66),
])
def test_permanent_asset_errors_are_setup_errors_in_seconds(archive, checkpoint, served, tmp_path, case, error, code):
    with contextlib.ExitStack() as stack:
        if case == "no-range":
            base = stack.enter_context(no_range_server(archive.parent))
        elif case == "404":
            base = served + "/moved"
        elif case == "403":
            base = stack.enter_context(asset_server(archive.parent, tmp_path, token="sig=abc"))
        elif case == "dead-port":
            base = f"http://127.0.0.1:{free_port()}"
        else:
            base = "http://no-such-host.invalid"
        catalog = _remote(archive, base, tmp_path)
        t0 = time.perf_counter()
        with pytest.raises(error) as exc:
            _plan(catalog, checkpoint, tmp_path, read_backoff_s=5.0)
        elapsed = time.perf_counter() - t0
    msg = str(exc.value)
    assert exc.value.exit_code == code and "\n" not in msg
    assert "probed scene" in msg and base.split("//")[1].split("/")[0] in msg  # which collection, which asset
    assert elapsed < 5.0, elapsed  # no backoff retries (the first would sleep 5 s)
    assert not (tmp_path / "out.zarr").exists()


def test_a_permanent_error_is_not_retried_by_the_reader(archive, served):
    """404 inside a run (an asset gone after the preflight): skipped at once, not after 3 backoff retries."""
    from odc.geo.geobox import GeoBox

    from sgma_batch.read import read_modality_report
    from sgma_batch.search import search_scenes
    from sgma_batch.sensors import get_profile

    with tempfile_dir() as tmp:
        catalog = _remote(archive, served + "/moved", tmp)
        from shapely.geometry import box

        scenes = search_scenes(str(catalog), box(*run_archive.aoi_lonlat()), "2024-06-01", "2024-06-30")["s1"]
        gbox = GeoBox.from_bbox((run_archive.X0, run_archive.Y0 - 640, run_archive.X0 + 640, run_archive.Y0),
                                "EPSG:32633", resolution=10)
        t0 = time.perf_counter()
        res = read_modality_report(scenes, gbox, get_profile("s1-rtc"), retries=3, backoff_s=5.0)
        elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, elapsed
    assert set(res.errors) == {"s1-a", "s1-b"} and not res.valid.any()
    assert all(m.startswith("AssetNotFoundError: HTTP response code: 404") for m in res.errors.values()), res.errors


@contextlib.contextmanager
def tempfile_dir():
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sgma-preflight-") as d:
        yield Path(d)


def test_signer_package_missing_is_found_before_the_catalogue(archive, checkpoint, tmp_path):
    import importlib.util

    assert importlib.util.find_spec("planetary_computer") is None  # not installed in the test environment
    with pytest.raises(SignerUnavailableError) as exc:
        _plan(tmp_path / "no-catalog.json", checkpoint, tmp_path, signer="planetary-computer")
    assert exc.value.exit_code == 26 and "pip install planetary-computer" in str(exc.value)


def test_bad_date_is_found_before_the_catalogue(checkpoint, tmp_path):
    with pytest.raises(InvalidTimeWindowError) as exc:
        _plan(tmp_path / "no-catalog.json", checkpoint, tmp_path, start="2024-13-45")
    assert exc.value.exit_code == 22


def test_aoi_outside_the_catalogue_is_not_told_to_widen_the_window(archive, checkpoint, tmp_path):
    with pytest.raises(AOIOutsideCatalogError) as exc:
        _plan(archive, checkpoint, tmp_path, aoi=[10.0, 10.0, 10.01, 10.01])
    assert exc.value.exit_code == 17 and "outside every item" in str(exc.value) and "window" not in str(exc.value)


def test_db_data_read_as_linear_is_a_unit_error_naming_the_fix(checkpoint, tmp_path):
    """S1 files in dB under a collection the RTC (linear) profile reads: exit 67 naming :s1-db, not a run
    that silently drops S1 (every value <= 0 is invalid for a linear profile)."""
    root = tmp_path / "db"
    root.mkdir()
    items = []
    for iid, day in (("s1-db-a", 5),):
        assets = {}
        rng = np.random.default_rng(3)
        for pol, base in (("vv", -11.0), ("vh", -18.0)):
            arr = (base + rng.normal(0, 3, (run_archive.H, run_archive.W))).astype(np.float32)
            p = root / f"{iid}_{pol}.tif"
            run_archive._cog(p, [arr], -32768.0)
            assets[pol] = {"href": p.name, "type": "image/tiff; application=geotiff", "roles": ["data"],
                           "raster:bands": [{"nodata": -32768, "data_type": "float32"}]}
        items.append(run_archive._item(iid, "sentinel-1-rtc", f"2024-06-{day:02d}T05:00:00Z", assets))
    catalog = run_archive.write_items(root, items)
    with pytest.raises(UnitMismatchError) as exc:
        _plan(catalog, checkpoint, tmp_path)
    msg = str(exc.value)
    assert exc.value.exit_code == 67 and "--collections s1=sentinel-1-rtc:s1-db" in msg, msg
    # named as dB, the same files plan fine
    plan = _plan(catalog, checkpoint, tmp_path, collections="s1=sentinel-1-rtc:s1-db")
    assert plan.scenes["s1"] == 1


def test_cli_prints_one_line_and_the_exit_code(archive, checkpoint, tmp_path):
    with no_range_server(archive.parent) as base:
        catalog = _remote(archive, base, tmp_path)
        bbox = ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())
        r = rh.cli("plan", "--aoi", bbox, "--start", "2024-06-01", "--end", "2024-06-30", "--catalog", str(catalog),
                   "--model", str(checkpoint), "--out", str(tmp_path / "cli.zarr"), "--json")
    assert r.returncode == 65, r.stderr[-2000:]
    assert r.stdout == ""
    line = rh.one_line_error(r.stderr)
    assert "range requests" in line  # one line that says what to do
    assert not (tmp_path / "cli.zarr").exists()
