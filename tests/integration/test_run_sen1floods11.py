"""Real data: the Sen1Floods11 chip (Murcia, EPSG:4326 ~10 m; S1 GRD dB VV/VH + S2 L1C) through ``run``.

STAC items for the chip are built in a temporary static catalogue (catalog.json -> collections ->
items); each band asset is a VRT that points at one band of the real multi-band file in ../shared/data.
The run searches them, warps the EPSG:4326 pixels into the UTM grid and writes the mosaic; the test
checks the CRS, that S1 and S2 pixels land where rasterio's own reprojection puts them, that the
modality mask and the mapped region are the chip's footprint, and that nothing is NaN.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401 - registers the .odc accessor used below
import pytest
import rasterio
import xarray as xr
from rasterio.features import geometry_mask
from rasterio.warp import Resampling, reproject
from shapely.geometry import box, mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.run import RunSpec, run_mosaic
from sgma_batch.store import ROBUSTNESS_SCALE, read_manifest

pytestmark = pytest.mark.integration

CHIP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sen1floods11"
S1_FILE = CHIP / "S1Hand" / "Spain_7370579_S1Hand.tif"
S2_FILE = CHIP / "S2Hand" / "Spain_7370579_S2Hand.tif"
# S2Hand holds the 13 L1C bands in ESA order; the model reads these 10 (1-based band index in the file).
S2_BANDS = {"B02": 2, "B03": 3, "B04": 4, "B05": 5, "B06": 6, "B07": 7, "B08": 8, "B8A": 9, "B11": 12, "B12": 13}
COLLECTIONS = "s2=sentinel-2-l1c,s1=sen1floods11-s1:s1-db"


def _band_vrt(src_path: Path, band: int, out: Path) -> Path:
    """A one-band VRT over band ``band`` of a real multi-band GeoTIFF (no pixels copied)."""
    with rasterio.open(src_path) as src:
        dtype = {"float32": "Float32", "int16": "Int16"}[src.dtypes[band - 1]]
        nodata = "nan" if src.nodata is not None and np.isnan(src.nodata) else str(src.nodata)
        gt = ", ".join(repr(v) for v in src.transform.to_gdal())
        out.write_text(
            f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
            f"<SRS>{src.crs.to_wkt()}</SRS><GeoTransform>{gt}</GeoTransform>"
            f'<VRTRasterBand dataType="{dtype}" band="1"><NoDataValue>{nodata}</NoDataValue>'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{src_path.resolve()}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
        )
    return out


def _chip_item(iid: str, collection: str, dt: str, assets: dict) -> dict:
    with rasterio.open(S1_FILE) as src:
        b = src.bounds
        transform = list(src.transform)[:6]
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": iid, "collection": collection,
        "geometry": mapping(box(b.left, b.bottom, b.right, b.top)), "bbox": [b.left, b.bottom, b.right, b.top],
        "properties": {"datetime": dt, "proj:code": "EPSG:4326", "proj:shape": [512, 512], "proj:transform": transform},
        "links": [{"rel": "collection", "href": "./collection.json"}], "assets": assets,
    }


def build_catalog(root: Path) -> Path:
    """catalog.json -> {sentinel-2-l1c, sen1floods11-s1}/collection.json -> item json, assets = band VRTs."""
    vrts = root / "vrt"
    vrts.mkdir(parents=True)
    s2_assets = {
        name: {"href": str(_band_vrt(S2_FILE, i, vrts / f"s2_{name}.vrt")), "type": "application/x-vrt",
               "roles": ["data"], "eo:bands": [{"name": name}], "raster:bands": [{"nodata": 0, "data_type": "int16"}]}
        for name, i in S2_BANDS.items()
    }
    s1_assets = {
        pol: {"href": str(_band_vrt(S1_FILE, i, vrts / f"s1_{pol}.vrt")), "type": "application/x-vrt",
              "roles": ["data"], "raster:bands": [{"nodata": "nan", "data_type": "float32", "unit": "dB"}]}
        for pol, i in (("vv", 1), ("vh", 2))
    }
    items = {
        "sentinel-2-l1c": _chip_item("S2_Spain_7370579", "sentinel-2-l1c", "2019-09-18T10:50:00Z", s2_assets),
        "sen1floods11-s1": _chip_item("S1_Spain_7370579", "sen1floods11-s1", "2019-09-17T06:00:00Z", s1_assets),
    }
    catalog = {"type": "Catalog", "stac_version": "1.1.0", "id": "sen1floods11-chip", "description": "test",
               "links": [{"rel": "child", "href": f"./{cid}/collection.json"} for cid in items]}
    for cid, item in items.items():
        (root / cid).mkdir()
        (root / cid / f"{item['id']}.json").write_text(json.dumps(item))
        collection = {
            "type": "Collection", "stac_version": "1.1.0", "id": cid, "description": cid, "license": "CC-BY-4.0",
            "extent": {"spatial": {"bbox": [item["bbox"]]},
                       "temporal": {"interval": [[item["properties"]["datetime"], None]]}},
            "links": [{"rel": "item", "href": f"./{item['id']}.json"}, {"rel": "root", "href": "../catalog.json"}],
        }
        (root / cid / "collection.json").write_text(json.dumps(collection))
    path = root / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return run_archive.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=11)


def _reprojected(path: Path, band: int, gbox, *, nodata: float) -> np.ndarray:
    """rasterio's own reprojection of one band of the chip onto a GeoBox (bilinear), NaN outside."""
    with rasterio.open(path) as src:
        data = src.read(band).astype(np.float32)
        out = np.full(gbox.shape.yx, np.nan, np.float32)
        reproject(data, out, src_transform=src.transform, src_crs=src.crs, src_nodata=nodata,
                  dst_transform=gbox.transform, dst_crs=gbox.crs.wkt, dst_nodata=np.nan,
                  resampling=Resampling.bilinear)
    return out


def test_sen1floods11_chip_is_searched_warped_and_mapped(checkpoint, tmp_path):
    catalog = build_catalog(tmp_path / "stac")
    with rasterio.open(S1_FILE) as src:
        chip = src.bounds
    # The AOI covers the chip's south-west part and reaches ~1.3 km east beyond it: there, no data.
    aoi = [chip.left + 0.006, chip.bottom + 0.008, chip.right + 0.015, chip.top - 0.01]
    out = tmp_path / "murcia.zarr"
    spec = RunSpec(aoi=aoi, out=str(out), start="2019-09-10", end="2019-09-25", catalog=str(catalog),
                   model=str(checkpoint), collections=COLLECTIONS, tile_px=256, halo_px=32, window_px=128,
                   overlap_px=32, executor="sequential", write_probability=True,
                   allow_domain_shift=True)  # L1C into an L2A model: exit 35 unless allowed (issue 18)
    summary = run_mosaic(spec)
    assert summary.scenes == {"s2": 1, "s1": 1} and summary.failed == 0 and summary.degraded == 0
    assert summary.computed >= 1 and summary.computed + summary.nodata == summary.tiles >= 4
    manifest = read_manifest(out)
    assert {r.modalities for r in manifest.values() if r.status == "computed"} == {("s1", "s2")}

    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    gbox = ds.odc.geobox
    assert ds.odc.crs.epsg == 32630  # UTM 30N: the chip lies at 0.76 W
    assert gbox.resolution.x == 10 and gbox.transform.c % 10 == 0 and gbox.transform.f % 10 == 0

    # S1 and S2 pixels land where rasterio's own reprojection puts them.
    from sgma_batch.read import read_modality
    from sgma_batch.search import search_scenes
    from sgma_batch.sensors import get_profile

    found = search_scenes(catalog, box(*aoi), "2019-09-10", "2019-09-25", collections=COLLECTIONS,
                          modalities=("s2", "s1"))
    s1, s1_valid = read_modality(found["s1"], gbox, get_profile("s1-db"))
    s2, s2_valid = read_modality(found["s2"], gbox, get_profile("s2-l1c"))
    vv = _reprojected(S1_FILE, 1, gbox, nodata=np.nan)
    red = _reprojected(S2_FILE, 4, gbox, nodata=0)
    assert np.isfinite(vv).mean() > 0.5
    np.testing.assert_array_equal(s1_valid, np.isfinite(vv))
    np.testing.assert_allclose(s1[0][s1_valid], vv[s1_valid], rtol=1e-5, atol=1e-4)
    both = s2_valid & np.isfinite(red)
    assert both.sum() >= 0.99 * s2_valid.sum()
    np.testing.assert_allclose(s2[2][both], red[both] * 1e-4, rtol=1e-5, atol=1e-6)  # TOA reflectance

    # The mapped region is the chip's footprint inside the AOI; the modality mask says S2 + S1 there.
    cls = ds["class"].values
    mask = ds["modality_mask"].values
    in_aoi = _aoi_mask(aoi, gbox)
    footprint = s1_valid & s2_valid & in_aoi
    mapped = cls != 255
    assert mapped.sum() > 0.5 * in_aoi.sum()
    assert (mapped != footprint).mean() < 0.002  # at most a pixel ring where bilinear edges differ
    assert (~mapped & in_aoi).sum() > 0.15 * in_aoi.sum()  # the AOI part east of the chip is nodata
    assert set(np.unique(mask[mapped]).tolist()) == {0b011} and (mask[~mapped] == 0).all()
    rob = ds["robustness"].values.astype(int)  # (M, y, x) weights x 254, 255 = nodata; modalities s2, s1, dem
    assert (rob[2][mapped] == 0).all() and (np.abs(rob[:2, mapped].sum(0) - ROBUSTNESS_SCALE) <= 2).all()
    assert (rob[:, ~mapped] == 255).all()
    prob = ds["probability"].values.astype(np.float32)  # (K, y, x)
    assert np.isfinite(prob[:, mapped]).all() and np.isnan(prob[:, ~mapped]).all()
    np.testing.assert_allclose(prob[:, mapped].sum(0), 1.0, atol=0.01)
    assert (ds["confidence"].values[mapped] > 0).all()

    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["proj:code"] == "EPSG:32630"


def _aoi_mask(aoi: list[float], gbox) -> np.ndarray:
    from odc.geo import geom

    poly = geom.Geometry(box(*aoi), "EPSG:4326").to_crs(gbox.crs).geom
    return geometry_mask([poly], out_shape=gbox.shape.yx, transform=gbox.transform, invert=True)
