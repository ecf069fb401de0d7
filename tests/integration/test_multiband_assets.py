"""Assets with any band layout: the real Sen1Floods11 chip as its files come, served over HTTP with ranges.

The catalogue (built per test session, the data is read in place from ../shared/data, never copied) has
one S2 asset holding all 13 L1C bands (``eo:bands`` named as the file's band descriptions B1..B12) and one
S1 asset holding VV and VH (dB, EPSG:4326). The reader must take each band from its own file band, take
nodata from the file where the item does not say, and the run must map the chip with both modalities.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from shapely.geometry import box, mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
from servers import asset_server

from sgma_batch.errors import DomainShiftError
from sgma_batch.run import RunSpec, plan_run, run_mosaic

pytestmark = pytest.mark.integration

CHIP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sen1floods11"
S1_FILE = CHIP / "S1Hand" / "Spain_7370579_S1Hand.tif"
S2_FILE = CHIP / "S2Hand" / "Spain_7370579_S2Hand.tif"
COLLECTIONS = "s2=sentinel-2-l1c,s1=sen1floods11-s1:s1-db"


def _item(iid: str, collection: str, dt: str, assets: dict) -> dict:
    with rasterio.open(S1_FILE) as src:
        b = src.bounds
    return {"type": "Feature", "stac_version": "1.1.0", "id": iid, "collection": collection,
            "geometry": mapping(box(b.left, b.bottom, b.right, b.top)), "bbox": [b.left, b.bottom, b.right, b.top],
            "properties": {"datetime": dt, "proj:code": "EPSG:4326"}, "links": [], "assets": assets}


def build_catalog(base_url: str, out: Path, *, s1_named: bool = True) -> Path:
    """An item collection whose assets are the chip's two multi-band files at ``base_url``."""
    with rasterio.open(S2_FILE) as src:
        s2_names = list(src.descriptions)  # 'B1' .. 'B12' as the file names them
    s2 = _item("s2-chip", "sentinel-2-l1c", "2019-09-18T10:50:00Z", {
        "data": {"href": f"{base_url}/S2Hand/{S2_FILE.name}", "type": "image/tiff; application=geotiff",
                 "roles": ["data"], "eo:bands": [{"name": n} for n in s2_names]}})  # no nodata: the file's 0
    s1_bands = {"eo:bands": [{"name": "VV"}, {"name": "VH"}]} if s1_named else {}
    s1 = _item("s1-chip", "sen1floods11-s1", "2019-09-17T17:50:00Z", {
        "data": {"href": f"{base_url}/S1Hand/{S1_FILE.name}", "type": "image/tiff; application=geotiff",
                 "roles": ["data"], **s1_bands,
                 "raster:bands": [{"data_type": "float32", "unit": "dB"}, {"data_type": "float32", "unit": "dB"}]}})
    out.write_text(json.dumps({"type": "FeatureCollection", "features": [s2, s1]}))
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with asset_server(CHIP.resolve(), tmp_path_factory.mktemp("srv")) as url:
        yield url


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return rh.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", modalities={"s2": 10, "s1": 2})


def _aoi() -> list[float]:
    with rasterio.open(S1_FILE) as src:
        b = src.bounds
    dx, dy = (b.right - b.left) * 0.1, (b.top - b.bottom) * 0.1
    return [b.left + dx, b.bottom + dy, b.right - dx, b.top - dy]


@pytest.mark.parametrize("s1_named", [True, False])
def test_band_of_each_file_band_is_read(served, tmp_path, s1_named):
    from odc.geo.geobox import GeoBox

    from sgma_batch.read import read_modality_report
    from sgma_batch.search import search_scenes
    from sgma_batch.sensors import get_profile

    catalog = build_catalog(served, tmp_path / "items.json", s1_named=s1_named)
    found = search_scenes(str(catalog), box(*_aoi()), "2019-09-01", "2019-09-30", collections=COLLECTIONS)
    s2, s1 = found["s2"][0], found["s1"][0]
    # B02..B12 of the 13-band L1C file: blue is file band 2, nir08 (B8A) 9, swir16 (B11) 12, swir22 13
    assert {b: a.index for b, a in s2.assets.items()} == {
        "blue": 2, "green": 3, "red": 4, "rededge1": 5, "rededge2": 6, "rededge3": 7, "nir": 8, "nir08": 9,
        "swir16": 12, "swir22": 13}
    assert {b: a.index for b, a in s1.assets.items()} == {"vv": 1, "vh": 2}  # by name, or by the profile's order
    with rasterio.open(S2_FILE) as src:
        gbox = GeoBox((src.height, src.width), src.transform, src.crs.to_wkt())  # the files' own grid
        s2_raw = src.read().astype(np.float64)
    with rasterio.open(S1_FILE) as src:
        s1_raw = src.read()
    r2 = read_modality_report([s2], gbox, get_profile(s2.sensor))
    r1 = read_modality_report([s1], gbox, get_profile(s1.sensor))
    assert not r2.errors and not r1.errors
    want = (s2_raw[[1, 2, 3, 4, 5, 6, 7, 8, 11, 12]] * 1e-4).astype(np.float32)  # L1C 2019: no offset
    valid2 = (s2_raw[[1, 2, 3, 4, 5, 6, 7, 8, 11, 12]] != 0).all(axis=0)  # the file's nodata 0
    assert np.array_equal(r2.valid, valid2) and r2.valid.mean() > 0.9
    np.testing.assert_array_equal(r2.data[:, valid2], want[:, valid2])
    valid1 = np.isfinite(s1_raw).all(axis=0)  # the file's nodata NaN
    assert np.array_equal(r1.valid, valid1)
    np.testing.assert_array_equal(r1.data[:, valid1], s1_raw[:, valid1])


def test_l1c_for_an_l2a_model_is_a_domain_error_unless_allowed(served, checkpoint, tmp_path):
    catalog = build_catalog(served, tmp_path / "items.json")
    spec = {"aoi": _aoi(), "out": str(tmp_path / "m.zarr"), "start": "2019-09-01", "end": "2019-09-30",
            "catalog": str(catalog), "model": str(checkpoint), "collections": COLLECTIONS, "tile_px": 256,
            "halo_px": 16, "executor": "sequential"}
    with pytest.raises(DomainShiftError) as exc:
        plan_run(RunSpec(**spec), measure=False)
    msg = str(exc.value)
    assert exc.value.exit_code == 35 and "L1C" in msg and "L2A" in msg and "--allow-domain-shift" in msg, msg
    assert "--collections s2=" in msg
    summary = run_mosaic(RunSpec(**spec, allow_domain_shift=True))
    assert summary.exit_code == 0 and summary.computed == summary.tiles > 0, summary
    arrays = rh.store_arrays(Path(spec["out"]))
    mapped = arrays["class"] != 255
    assert mapped.mean() > 0.5
    both = (arrays["modality_mask"][mapped] & 0b11) == 0b11  # s2 and s1 bits: both multi-band files were read
    assert both.mean() > 0.95, both.mean()


def test_multi_page_tiff_is_read_page_by_page(tmp_path):
    """VV and VH as two pages (IFDs) of one TIFF, one band each, over HTTP: band n of the item is page n."""
    from odc.geo.geobox import GeoBox

    from sgma_batch.read import read_modality_report
    from sgma_batch.search import search_scenes
    from sgma_batch.sensors import get_profile

    with rasterio.open(S1_FILE) as src:
        raw, profile = src.read(), src.profile
    pages = tmp_path / "pages"
    pages.mkdir()
    path = pages / "s1_pages.tif"  # a temporary file: the chip's pixels, re-laid out as pages
    for i in range(2):
        kw = {**profile, "count": 1, "driver": "GTiff", **({"APPEND_SUBDATASET": "YES"} if i else {})}
        with rasterio.open(path, "w", **kw) as dst:
            dst.write(raw[i], 1)
    with rasterio.open(path) as src:
        assert src.count == 1 and len(src.subdatasets) == 2  # really two pages, not two bands
    with asset_server(pages, tmp_path) as url:
        s1 = _item("s1-pages", "sen1floods11-s1", "2019-09-17T17:50:00Z", {
            "data": {"href": f"{url}/{path.name}", "type": "image/tiff; application=geotiff", "roles": ["data"],
                     "eo:bands": [{"name": "VV"}, {"name": "VH"}]}})
        catalog = tmp_path / "items.json"
        catalog.write_text(json.dumps({"type": "FeatureCollection", "features": [s1]}))
        scene = search_scenes(str(catalog), box(*_aoi()), "2019-09-01", "2019-09-30",
                              collections="s1=sen1floods11-s1:s1-db", modalities=["s1"])["s1"][0]
        assert {b: a.index for b, a in scene.assets.items()} == {"vv": 1, "vh": 2}
        gbox = GeoBox((profile["height"], profile["width"]), profile["transform"], profile["crs"].to_wkt())
        res = read_modality_report([scene], gbox, get_profile("s1-db"))
    assert not res.errors
    valid = np.isfinite(raw).all(axis=0)
    assert np.array_equal(res.valid, valid)
    np.testing.assert_array_equal(res.data[:, valid], raw[:, valid])  # VH from page 2, not VV again
