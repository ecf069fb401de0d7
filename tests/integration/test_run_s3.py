"""Assets on S3: the tiny archive's COGs uploaded to a real S3-compatible server process on 127.0.0.1
(moto's ``moto_server``), a catalogue whose asset hrefs are ``s3://bucket/key``, read through GDAL's
``/vsis3/`` with the endpoint, credentials and region from the standard AWS/GDAL environment variables.

``sgma-batch run`` on it must give a store bitwise identical to the same run over the local files, and the
server's own request log must show the COGs were read from it. A bucket that does not exist gives degraded
tiles (the S1 and DEM modalities recorded absent) and the "partial" outcome, not a crash.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reliability_helpers as rh
import run_archive
from servers import remote_items, s3_server

from sgma_batch.errors import AssetNotFoundError
from sgma_batch.run import RunSpec, run_mosaic

pytestmark = pytest.mark.integration

BUCKET = "sgma-archive"
TILING = {"tile_px": 128, "halo_px": 16}
COGS = {"dem.tif", "s1-a_vv.tif", "s1-a_vh.tif", "s1-b_vv.tif", "s1-b_vh.tif"}


def _bbox() -> str:
    return ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())


def _spec(catalog: Path, checkpoint: Path, out: Path, **kw) -> RunSpec:
    return RunSpec(**{"aoi": run_archive.aoi_lonlat(), "out": str(out), "start": "2024-06-01", "end": "2024-06-30",
                      "catalog": str(catalog), "model": str(checkpoint), "executor": "sequential", **TILING, **kw})


@pytest.fixture(scope="module")
def s3(archive, tmp_path_factory):
    """The archive folder (COGs and items.json) in a bucket of a real S3 server process."""
    with s3_server(archive.parent, BUCKET, tmp_path_factory.mktemp("s3")) as server:
        yield server


def test_run_reads_s3_assets_and_matches_the_local_run(archive, checkpoint, s3, tmp_path):
    catalog = remote_items(archive, archive.parent, f"s3://{BUCKET}", tmp_path / "s3-items.json")
    hrefs = {a["href"] for i in json.loads(catalog.read_text())["features"] for a in i["assets"].values()}
    assert hrefs == {f"s3://{BUCKET}/{name}" for name in COGS}

    local = tmp_path / "local.zarr"
    ref = run_mosaic(_spec(archive, checkpoint, local))
    assert (ref.computed, ref.degraded, ref.failed) == (ref.tiles, 0, 0) == (6, 0, 0)

    before = s3.served("GET", "206")
    out = tmp_path / "s3.zarr"
    r = rh.cli("run", "--aoi", _bbox(), "--start", "2024-06-01", "--end", "2024-06-30", "--catalog", str(catalog),
               "--model", str(checkpoint), "--tile-px", "128", "--halo-px", "16", "--out", str(out),
               "--sequential", "--json", env=s3.gdal_env())
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert (summary["tiles"], summary["computed"], summary["degraded"], summary["failed"]) == (6, 6, 0, 0)
    assert {rec.status for rec in rh.manifest(out).values()} == {"computed"}
    rh.assert_same_store(local, out)

    # The server process logged the reads: ranged GETs (206) of the DEM and the S1 scene the tiles used.
    gets = s3.served("GET", "206") - before
    read = {path.rsplit("/", 1)[-1] for path in gets if path.startswith(f"/{BUCKET}/")}
    assert "dem.tif" in read and {"s1-b_vv.tif", "s1-b_vh.tif"} <= read, gets
    assert read <= COGS and sum(gets.values()) >= 6, gets


def test_a_missing_bucket_is_a_setup_error_before_any_compute(archive, checkpoint, s3, tmp_path, monkeypatch):
    # every asset in a bucket that does not exist: found by the preflight's probe (exit 63, issue 18), where it
    # used to be a finished job with every tile degraded (exit 3)
    for name, value in s3.gdal_env().items():
        monkeypatch.setenv(name, value)
    catalog = remote_items(archive, archive.parent, "s3://no-such-bucket", tmp_path / "s3-items.json")
    out = tmp_path / "missing.zarr"
    with pytest.raises(AssetNotFoundError) as exc:
        run_mosaic(_spec(catalog, checkpoint, out, tile_px=256, read_retries=0))
    assert exc.value.exit_code == 63 and "bucket does not exist" in str(exc.value) and not out.exists()
    assert any(path.startswith("/no-such-bucket/") for path in s3.served("HEAD") + s3.served("GET"))
