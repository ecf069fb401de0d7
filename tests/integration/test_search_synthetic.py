"""The synthetic archive read through the same search path as the real catalogues: the static
catalog.json searched in-process and the same items served by ``rustac serve`` agree, every modality is
recognised from the real collection ids, the DEM is found whatever the window, and the scenes harmonise
into physical units."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import rasterio
from servers import catalog_items_file, rustac_server

from sgma_batch.aoi import load_aoi
from sgma_batch.search import search_scenes
from sgma_batch.sensors import get_profile
from sgma_batch.synthetic import generate_archive

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return generate_archive(tmp_path_factory.mktemp("synth") / "archive", seed=3, size_km=(2, 2), dates=3)


def _aoi(info):
    from odc.geo.geom import BoundingBox

    bbox = BoundingBox(*info.geobox.extent.boundingbox, crs=info.geobox.crs).to_crs("EPSG:4326")
    pad = 0.002  # stay inside the archive
    return load_aoi((bbox.left + pad, bbox.bottom + pad, bbox.right - pad, bbox.top - pad))


def _ids(result):
    return {m: [s.id for s in v] for m, v in result.items()}


def test_static_and_rustac_agree_on_the_synthetic_archive(archive, tmp_path):
    aoi = _aoi(archive)
    start, end = archive.dates[0].date().isoformat(), archive.dates[-1].date().isoformat()
    static = search_scenes(archive.catalog_path, aoi, start, end)
    assert set(static) >= {"s2", "s1", "dem"}
    assert len(static["s2"]) == len(archive.dates) and static["s1"] and len(static["dem"]) >= 1
    served = catalog_items_file(archive.catalog_path, tmp_path / "served.json")
    with rustac_server([served], tmp_path / "rustac") as url:
        api = search_scenes(url, aoi, start, end)
    assert _ids(api) == _ids(static)
    for mod in static:
        assert [s.assets for s in api[mod]] == [s.assets for s in static[mod]]


def test_dem_is_found_whatever_the_window(archive):
    aoi = _aoi(archive)
    late = archive.dates[-1] + timedelta(days=400)
    found = search_scenes(archive.catalog_path, aoi, late.date(), (late + timedelta(days=2)).date(), allow_empty=True)
    assert found["s2"] == [] and found["s1"] == []
    assert len(found["dem"]) >= 1  # the DEM's item date is its production date, not an acquisition


def test_synthetic_scenes_harmonise_to_physical_units(archive):
    aoi = _aoi(archive)
    found = search_scenes(archive.catalog_path, aoi, archive.dates[0].date(), archive.dates[-1].date())
    s2 = found["s2"][0]
    profile = get_profile(s2.sensor)
    arrays = {}
    for band in (*profile.bands, *profile.mask_bands):
        with rasterio.open(s2.assets[band].href) as src:
            arrays[band] = src.read(1, window=((0, 64), (0, 64)))
    data, valid = profile.harmonise(s2, arrays)
    assert data.shape == (len(profile.bands), 64, 64) and data.dtype == np.float32
    # DN = reflectance * 10000 + 1000 (baseline 05.10): harmonised values are reflectances, offset removed once
    raw_red = arrays["red"].astype(np.float64)[valid]
    red = data[profile.bands.index("red")][valid]
    np.testing.assert_allclose(red, (raw_red - 1000.0) / 10000.0, atol=1e-6)
    s1 = found["s1"][0]
    p1 = get_profile(s1.sensor)
    with rasterio.open(s1.assets["vv"].href) as src:
        vv_lin = src.read(1, window=((0, 64), (0, 64)))
    vv, ok = p1.harmonise(s1, {"vv": vv_lin, "vh": vv_lin})
    assert ok.any()
    np.testing.assert_allclose(vv[0][ok], 10 * np.log10(vv_lin[ok]), rtol=1e-5)


def test_an_archive_and_a_run_across_the_antimeridian(tmp_path):
    """A 1.5 km archive in UTM zone 60 centred on 180°E: its footprints are split at 180°, an AOI given as a
    bbox with west > east finds every modality, and a run maps the pixels on both sides with all three."""
    import odc.geo.xr  # noqa: F401 - the .odc accessor
    import xarray as xr
    from pyproj import Transformer

    from sgma_batch.run import RunSpec, plan_run, run_mosaic

    x180, y = Transformer.from_crs(4326, 32760, always_xy=True).transform(180.0, -16.75)
    info = generate_archive(tmp_path / "fiji", seed=2, size_km=(1.5, 1.5), origin_utm=(x180 - 750, y + 750),
                            epsg=32760, dates=2)
    aoi = "179.997,-16.755,-179.997,-16.745"
    found = search_scenes(info.catalog_path, load_aoi(aoi), "2024-05-01", "2024-05-31")
    assert [len(found[m]) for m in ("s2", "s1", "dem")] == [2, 2, 1]
    for scene in (s for scenes in found.values() for s in scenes):
        assert scene.geometry["type"] == "MultiPolygon"
        xs = [c[0] for part in scene.geometry["coordinates"] for c in part[0]]
        assert min(xs) == -180.0 and max(xs) == 180.0 and all(-180 <= x <= 180 for x in xs)
    spec = RunSpec(aoi=aoi, start="2024-05-01", end="2024-05-31", catalog=str(info.catalog_path),
                   out=str(tmp_path / "fiji.zarr"), tile_px=128, halo_px=16, executor="sequential")
    plan = plan_run(spec, measure=False)
    assert plan.tiles_with == {"s2": plan.tiles, "s1": plan.tiles, "dem": plan.tiles} and plan.tiles >= 1
    summary = run_mosaic(spec)
    assert summary.exit_code == 0 and summary.computed == summary.tiles
    ds = xr.open_zarr(spec.out, decode_coords="all")
    lon, _ = Transformer.from_crs(ds.odc.crs.epsg, 4326, always_xy=True).transform(
        *np.meshgrid(ds.x.values, ds.y.values))
    mask = ds["modality_mask"].values
    inside = mask > 0
    west, east = inside & (lon > 0), inside & (lon < 0)  # pixel centres either side of 180°
    assert west.sum() > 1000 and east.sum() > 1000
    assert (mask[inside] == 7).all()  # s2 + s1 + dem on both sides
    assert (ds["class"].values[inside] < 7).all()
