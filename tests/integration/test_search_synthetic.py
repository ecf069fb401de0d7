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
