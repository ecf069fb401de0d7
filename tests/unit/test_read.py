"""read_modality on real COGs: aligned windows, warping, compositing by rank, SCL masks, failures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from sgma_batch.errors import AssetReadError
from sgma_batch.read import read_modality, read_modality_report
from sgma_batch.scenes import S2_BANDS, AssetRef, Scene
from sgma_batch.sensors import get_profile

X0, Y0, RES = 500000.0, 4010000.0, 10.0


def write_cog(path: Path, data: np.ndarray, *, epsg=32633, x0=X0, y0=Y0, res=RES, nodata=None) -> Path:
    h, w = data.shape
    profile = {"driver": "COG", "width": w, "height": h, "count": 1, "dtype": data.dtype, "crs": f"EPSG:{epsg}",
                   "transform": from_origin(x0, y0, res, res), "nodata": nodata, "blocksize": 128, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def scene(sid, modality, sensor, assets, *, cloud=None, day=1, extra=None):
    return Scene(
        id=sid, collection="c", modality=modality, sensor=sensor,
        datetime=datetime(2024, 5, day, tzinfo=UTC), geometry={}, bbox=(0, 0, 1, 1),
        assets=assets, cloud_cover=cloud, extra=extra or {},
    )


def dem_scene(sid, path, nodata=-9999.0):
    return scene(sid, "dem", "dem-glo30", {"elevation": AssetRef(str(path), "elevation", "data", nodata=nodata)})


@pytest.fixture
def dem(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.random((200, 200)) * 100).astype(np.float32)
    return data, write_cog(tmp_path / "dem.tif", data, nodata=-9999.0)


def test_aligned_read_is_the_exact_window(dem):
    data, path = dem
    gbox = GeoBox((64, 80), from_origin(X0 + 30 * RES, Y0 - 20 * RES, RES, RES), "EPSG:32633")
    out, valid = read_modality([dem_scene("d", path)], gbox, get_profile("dem-glo30"))
    assert out.shape == (1, 64, 80) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], data[20:84, 30:110])
    assert valid.all()


def test_partial_cover_marks_outside_invalid(dem):
    data, path = dem
    gbox = GeoBox((64, 64), from_origin(X0 - 16 * RES, Y0 + 8 * RES, RES, RES), "EPSG:32633")  # hangs over NW corner
    out, valid = read_modality([dem_scene("d", path)], gbox, get_profile("dem-glo30"))
    assert not valid[:8].any() and not valid[:, :16].any()
    assert valid[8:, 16:].all()
    np.testing.assert_array_equal(out[0, 8:, 16:], data[:56, :48])
    assert (out[0][~valid] == 0).all()


def test_warped_read_matches_rasterio_reproject(dem):
    data, path = dem
    # Target grid in the neighbouring UTM zone at 20 m.
    with rasterio.open(path) as src:
        from rasterio.warp import transform_bounds
        l, b, _r, _t = transform_bounds(src.crs, "EPSG:32634", *src.bounds)
    gbox = GeoBox.from_bbox((l + 200, b + 200, l + 1200, b + 1000), "EPSG:32634", resolution=20)
    out, valid = read_modality([dem_scene("d", path)], gbox, get_profile("dem-glo30"))
    expected = np.full(gbox.shape.yx, np.nan, np.float32)
    reproject(data, expected, src_transform=from_origin(X0, Y0, RES, RES), src_crs="EPSG:32633", src_nodata=-9999.0,
              dst_transform=gbox.transform, dst_crs="EPSG:32634", dst_nodata=np.nan, resampling=Resampling.bilinear)
    ok = np.isfinite(expected)
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(valid, ok)
    np.testing.assert_allclose(out[0][ok], expected[ok], rtol=1e-5, atol=1e-3)


def test_composite_takes_first_ranked_valid_pixel(tmp_path):
    a = np.full((100, 100), 1.0, np.float32)
    a[:, 50:] = -9999.0  # west half only
    b = np.full((100, 100), 2.0, np.float32)
    pa, pb = write_cog(tmp_path / "a.tif", a, nodata=-9999.0), write_cog(tmp_path / "b.tif", b, nodata=-9999.0)
    gbox = GeoBox((100, 100), from_origin(X0, Y0, RES, RES), "EPSG:32633")
    res = read_modality_report([dem_scene("a", pa), dem_scene("b", pb)], gbox, get_profile("dem-glo30"))
    assert res.valid.all()
    assert (res.data[0, :, :50] == 1).all() and (res.data[0, :, 50:] == 2).all()
    assert res.scenes_used == ("a", "b")
    # b first: it fills everything, a is never read
    res2 = read_modality_report([dem_scene("b", pb), dem_scene("a", tmp_path / "missing.tif")], gbox,
                                get_profile("dem-glo30"), retries=0)
    assert res2.scenes_used == ("b",) and not res2.errors


def _s2_scene(tmp_path, sid, value, scl, cloud):
    assets = {}
    for band in S2_BANDS:
        assets[band] = AssetRef(str(write_cog(tmp_path / f"{sid}_{band}.tif", np.full((64, 64), value, np.uint16), nodata=0)),
                                band, band, nodata=0)
    # SCL at 20 m, like the real product: nearest resampling onto the 10 m grid
    assets["scl"] = AssetRef(str(write_cog(tmp_path / f"{sid}_scl.tif", scl, res=20.0, nodata=0)), "scl", "scl", nodata=0)
    return scene(sid, "s2", "s2-l2a", assets, cloud=cloud, extra={"dn_offset": 0.0, "dn_scale": 1e-4})


def test_optical_clouds_filled_from_next_scene(tmp_path):
    scl_a = np.full((32, 32), 4, np.uint8)
    scl_a[:16, :] = 9  # cloud over the northern half (20 m pixels)
    scl_b = np.full((32, 32), 4, np.uint8)
    sa = _s2_scene(tmp_path, "a", 1000, scl_a, cloud=10.0)
    sb = _s2_scene(tmp_path, "b", 3000, scl_b, cloud=50.0)
    gbox = GeoBox((64, 64), from_origin(X0, Y0, RES, RES), "EPSG:32633")
    data, valid = read_modality([sa, sb], gbox, get_profile("s2-l2a"))
    assert data.shape == (10, 64, 64) and valid.all()
    np.testing.assert_allclose(data[:, :32], 0.3, rtol=1e-6)  # cloudy half from b
    np.testing.assert_allclose(data[:, 32:], 0.1, rtol=1e-6)
    _only_a, valid_a = read_modality([sa], gbox, get_profile("s2-l2a"))
    assert not valid_a[:32].any() and valid_a[32:].all()


def test_persistent_failure_is_reported_then_raised(tmp_path, dem):
    _, good = dem
    gbox = GeoBox((32, 32), from_origin(X0, Y0, RES, RES), "EPSG:32633")
    bad = dem_scene("bad", tmp_path / "nope.tif")
    res = read_modality_report([bad, dem_scene("good", good)], gbox, get_profile("dem-glo30"), retries=1, backoff_s=0.01)
    assert set(res.errors) == {"bad"} and res.valid.all() and res.scenes_used == ("good",)
    with pytest.raises(AssetReadError, match="failed to read"):
        read_modality([bad], gbox, get_profile("dem-glo30"))


def test_gdal_environment_wins_over_the_default_options(monkeypatch):
    from sgma_batch.read import gdal_env_options

    monkeypatch.delenv("GDAL_HTTP_TIMEOUT", raising=False)
    assert gdal_env_options()["GDAL_HTTP_TIMEOUT"] == "60"  # a stalled server never hangs a read
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "2")
    assert "GDAL_HTTP_TIMEOUT" not in gdal_env_options()  # rasterio.Env would otherwise hide the env value
    assert gdal_env_options(GDAL_HTTP_TIMEOUT="5")["GDAL_HTTP_TIMEOUT"] == "5"


def test_open_datasets_are_reused_until_the_file_changes_or_a_read_fails(tmp_path, dem):
    from sgma_batch import read as rd

    data, path = dem
    rd.clear_dataset_cache()
    gbox = GeoBox((32, 32), from_origin(X0, Y0, RES, RES), "EPSG:32633")
    profile = get_profile("dem-glo30")
    read_modality([dem_scene("d", path)], gbox, profile)
    first = rd.open_dataset(str(path))
    read_modality([dem_scene("d", path)], gbox, profile)
    assert rd.open_dataset(str(path)) is first and not first.closed  # one open per thread, not per read

    write_cog(path, data + 1, nodata=-9999.0)  # rewritten in place: a new file, never the stale handle
    out, _ = read_modality([dem_scene("d", path)], gbox, profile)
    np.testing.assert_array_equal(out[0], data[:32, :32] + 1)
    assert first.closed and rd.open_dataset(str(path)) is not first  # the stale handle is closed

    rd.evict_dataset(str(path))  # what a failed read does: the retry opens afresh
    assert not any(k[0] == str(path) for k in rd._cache())
    rd.clear_dataset_cache()
    assert not rd._cache()


def test_block_cache_is_sized_once_not_per_read(dem):
    """GDAL_CACHEMAX in a per-read rasterio.Env flushed GDAL's block cache at every exit (and rasterio read
    the int as bytes); now it is set once per process, in bytes, and no read changes it."""
    from rasterio.env import get_gdal_config

    from sgma_batch import read as rd

    assert "GDAL_CACHEMAX" not in rd.gdal_env_options()
    _, path = dem
    gbox = GeoBox((32, 32), from_origin(X0, Y0, RES, RES), "EPSG:32633")
    read_modality([dem_scene("d", path)], gbox, get_profile("dem-glo30"))
    assert int(get_gdal_config("GDAL_CACHEMAX")) == rd.BLOCK_CACHE_MB << 20


def test_run_honours_max_area_km2(tmp_path, capsys):
    from cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--aoi", "15.0,47.8,15.1,47.9", "--max-area-km2", "1", "--out", str(tmp_path / "m.zarr"),
              "--catalog", str(tmp_path / "none.json")])
    assert exc.value.code == 15
    assert "1.0 km² guard" in capsys.readouterr().err
    assert not (tmp_path / "m.zarr").exists()
