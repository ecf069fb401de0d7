"""Output store: template, chunk-aligned writes, manifest commit point, compatibility, finish."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox

from sgma_batch.errors import StoreIncompatibleError
from sgma_batch.grid import plan_tiles
from sgma_batch.store import (
    NODATA,
    ROBUSTNESS_SCALE,
    StoreLayout,
    TileArrays,
    TileRecord,
    commit_tile,
    encode_robustness,
    finish_store,
    manifest_summary,
    open_mosaic,
    open_or_create_store,
    read_manifest,
    tile_records_done,
    write_tile,
)

CLASSES = (("water", "#1f78b4"), ("trees", "#33a02c"), ("crops", "#ffd92f"))
MODS = ("s2", "s1", "dem")
MAPS = ("class", "confidence", "modality_mask", "robustness", "probability")
PROJ_UUID, SPATIAL_UUID, MULTISCALES_UUID = ("f17cb550-5864-4468-aeb7-f3180cfb622f",
                                            "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
                                            "d35379db-88df-4056-af3a-620245f8e347")
GBOX = GeoBox.from_bbox((500000, 4000000, 500000 + 10 * 200, 4000000 + 10 * 150), "EPSG:32633", resolution=10)


def _layout(fmt=3, prob=False, gbox=GBOX, classes=CLASSES, tile=64):
    return StoreLayout(gbox, tile, classes, MODS, write_probability=prob, zarr_format=fmt)


def _arrays(task, seed):
    rng = np.random.default_rng(seed)
    h, w = task.core.shape.yx
    return TileArrays(
        class_=rng.integers(0, 3, (h, w), dtype=np.uint8),
        confidence=rng.integers(0, 256, (h, w), dtype=np.uint8),
        modality_mask=np.full((h, w), 0b101, np.uint8),
        robustness=rng.integers(0, 256, (3, h, w), dtype=np.uint8),
        probability=rng.random((3, h, w)).astype(np.float16),
    )


def _fill(path, layout):
    tasks = plan_tiles(layout.geobox, layout.geobox.extent.to_crs("EPSG:4326").geom, tile_px=layout.tile_px, halo_px=0)
    expected = np.full(layout.geobox.shape.yx, 255, np.uint8)
    for i, t in enumerate(tasks):
        arr = _arrays(t, i)
        write_tile(path, layout, t.region, arr)
        commit_tile(path, TileRecord.for_task(t, "computed"))
        expected[t.region] = arr.class_
    return tasks, expected


@pytest.mark.parametrize("fmt", [2, 3])
def test_template_region_writes_and_xarray_crs(tmp_path, fmt):
    path = tmp_path / "m.zarr"
    layout = _layout(fmt, prob=True)
    assert open_or_create_store(path, layout, {"model": "tiny", "config_hash": "c"}) is True
    tasks, expected = _fill(path, layout)
    assert len(tasks) == 4 * 3
    ds = open_mosaic(path)
    assert ds.odc.crs.epsg == 32633
    assert ds.odc.geobox == GBOX
    np.testing.assert_array_equal(ds["class"].values, expected)
    assert {name: ds[name].dtype for name in MAPS} == {**dict.fromkeys(MAPS[:4], np.uint8), "probability": np.float16}
    rob = np.zeros((3, *GBOX.shape.yx), np.uint8)
    for i, t in enumerate(tasks):
        rob[(slice(None), *t.region)] = _arrays(t, i).robustness
    np.testing.assert_array_equal(ds["robustness"].values, encode_robustness(rob, expected == 255))
    assert ds["robustness"].dims == ("modality", "y", "x")
    assert list(ds["modality"].values) == list(MODS)
    assert ds["class"].encoding["chunks"] == (64, 64)
    assert ds.attrs["sgma:classes"][0] == {"name": "water", "color": "#1f78b4"}
    assert ds["class"].attrs["proj:code"] == "EPSG:32633"
    decoded = xr.open_zarr(path, decode_coords="all", consolidated=False)  # CF decoding: weights in [0, 1]
    np.testing.assert_allclose(decoded["robustness"].values, rob / 255.0, atol=0.5 / 255 + 0.5 / ROBUSTNESS_SCALE)


def test_unaligned_region_is_refused(tmp_path):
    layout = _layout()
    open_or_create_store(tmp_path / "m.zarr", layout, {})
    h = 64
    arr = TileArrays(*(np.zeros((h, h), np.uint8) for _ in range(3)), robustness=np.zeros((3, h, h), np.uint8))
    with pytest.raises(AssertionError):
        write_tile(tmp_path / "m.zarr", layout, (slice(32, 96), slice(0, 64)), arr)


def test_manifest_commit_and_reuse(tmp_path):
    path = tmp_path / "m.zarr"
    layout = _layout()
    open_or_create_store(path, layout, {})
    tasks, _ = _fill(path, layout)
    manifest = read_manifest(path)
    assert set(manifest) == {t.tile_id for t in tasks}
    assert manifest_summary(path) == {"computed": len(tasks)}
    assert tile_records_done(manifest, tasks) == {t.tile_id for t in tasks}
    commit_tile(path, TileRecord.for_task(tasks[0], "degraded"))
    commit_tile(path, replace(TileRecord.for_task(tasks[1], "computed"), content_hash="other"))
    done = tile_records_done(read_manifest(path), tasks)
    assert tasks[0].tile_id not in done and tasks[1].tile_id not in done and len(done) == len(tasks) - 2
    assert not list((path / "manifest").glob(".*tmp"))


def test_reopen_compatible_and_refuse_incompatible(tmp_path):
    path = tmp_path / "m.zarr"
    open_or_create_store(path, _layout(), {"config_hash": "a"})
    assert open_or_create_store(path, _layout(), {"config_hash": "b"}) is False
    shifted = GeoBox.from_bbox((500010, 4000000, 502010, 4001500), "EPSG:32633", resolution=10)
    for bad in (_layout(gbox=shifted), _layout(classes=CLASSES[:2]), _layout(tile=128), _layout(prob=True)):
        with pytest.raises(StoreIncompatibleError):
            open_or_create_store(path, bad, {})
    with pytest.raises(StoreIncompatibleError):
        open_or_create_store(path, _layout(fmt=2), {})


def test_finish_v2_opens_in_gdal_with_crs(tmp_path):
    path = tmp_path / "m.zarr"
    layout = _layout(fmt=2, tile=32)
    open_or_create_store(path, layout, {"window": ["2024-01-01", "2024-02-01"], "model": "tiny"})
    _, expected = _fill(path, layout)
    item = finish_store(path, layout)
    with rasterio.open(f'ZARR:"{path}":/class') as src:
        assert src.crs.to_epsg() == 32633
        assert src.shape == GBOX.shape.yx
        assert src.transform.almost_equals(GBOX.transform)
        np.testing.assert_array_equal(src.read(1), expected)
        assert src.nodata == 255
    assert item["properties"]["proj:code"] == "EPSG:32633"
    assert [c["name"] for c in item["assets"]["class"]["classification:classes"]] == ["water", "trees", "crops", "nodata"]
    assert json.loads((path / "item.json").read_text())["id"].startswith("sgma-")  # not the folder name
    # overviews: factor 2 and 4 for a 200 px wide grid with 32 px chunks
    ov = open_mosaic(path, group="overviews/2")
    np.testing.assert_array_equal(ov["class"].values, expected[1::2, 1::2])
    full = open_mosaic(path)
    for name in ("confidence", "robustness", "modality_mask"):  # what the drivers PNG is drawn from
        np.testing.assert_array_equal(ov[name].values, full[name].values[..., 1::2, 1::2], err_msg=name)
    assert ov.odc.crs.epsg == 32633
    from PIL import Image
    img = Image.open(path / "quicklook.png")
    assert img.size[0] > 150  # map plus legend
    # drivers: robustness as RGB (S2 red, S1 green, DEM blue) beside the confidence, from the same pixels
    drivers = np.asarray(Image.open(path / "drivers.png").convert("RGB"))
    h, w = expected.shape
    rob = full["robustness"].values.astype(int)  # (M, y, x) weights x 254, shown x 255
    np.testing.assert_array_equal(drivers[:h, :w], np.moveaxis((rob * 255 + 127) // 254, 0, -1))
    np.testing.assert_array_equal(drivers[:h, w + 8:2 * w + 8, 0], full["confidence"].values)
    assert item["assets"]["drivers"]["href"] == "./drivers.png"
    ds = xr.open_zarr(path, decode_coords="all")  # consolidated metadata present
    assert ds.odc.crs.epsg == 32633


def test_finish_v3_consolidated(tmp_path):
    path = tmp_path / "m.zarr"
    layout = _layout(fmt=3, tile=32)
    open_or_create_store(path, layout, {})
    _, expected = _fill(path, layout)
    finish_store(path, layout)
    ds = xr.open_zarr(path, decode_coords="all", consolidated=True, mask_and_scale=False)
    np.testing.assert_array_equal(ds["class"].values, expected)
    assert ds.odc.geobox == GBOX


@pytest.mark.parametrize("fmt", [2, 3])
def test_fill_values_on_disk_are_the_declared_nodata_and_unwritten_chunks_read_as_nodata(tmp_path, fmt):
    """Zarr ``fill_value`` = CF ``_FillValue`` = :data:`NODATA` for every map variable (GDAL takes nodata from
    the fill value), so a tile not written yet reads as nodata, never as class 0 (water) or weight 0."""
    import zarr

    path = tmp_path / "m.zarr"
    layout = _layout(fmt, prob=True)
    open_or_create_store(path, layout, {})
    tasks = plan_tiles(GBOX, GBOX.extent.to_crs("EPSG:4326").geom, tile_px=64, halo_px=0)
    written = tasks[0]
    write_tile(path, layout, written.region, _arrays(written, 0))
    root = zarr.open_group(str(path), mode="r")
    assert root.attrs["sgma:nodata"] == {"class": 255, "confidence": 0, "modality_mask": 0, "robustness": 255,
                                         "probability": None, "acquired": 0}
    assert root["acquired"].fill_value == 0 and root["acquired"].dtype == np.uint16  # days since 1970, 0 none
    unwritten = np.ones(GBOX.shape.yx, bool)
    unwritten[written.region] = False
    raw = open_mosaic(path)
    cf = xr.open_zarr(path, decode_coords="all", consolidated=False)  # xarray's default CF decoding
    for name in MAPS:
        nodata = NODATA[name]
        a = root[name]
        assert np.array_equal(a.fill_value, nodata, equal_nan=True), (name, a.fill_value)
        assert np.array_equal(raw[name].attrs["_FillValue"], nodata, equal_nan=True), name  # CF, as xarray reads it
        assert a.attrs["grid_mapping"] == "spatial_ref", name
        values = np.asarray(a[...])  # zarr-python
        assert np.array_equal(np.unique(values[..., unwritten]), [nodata], equal_nan=True), name
        assert np.isnan(cf[name].values[..., unwritten]).all(), name  # masked by the CF reader
        assert not np.isnan(cf[name].values[..., ~unwritten]).all(), name
        np.testing.assert_array_equal(raw[name].values, values, err_msg=name)


def test_write_tile_makes_every_variable_nodata_where_class_is(tmp_path):
    path = tmp_path / "m.zarr"
    layout = _layout(prob=True)
    open_or_create_store(path, layout, {})
    h = w = 64
    cls = np.zeros((h, w), np.uint8)
    cls[:, :10] = 255  # outside the AOI
    rob = np.zeros((3, h, w), np.uint8)
    rob[0], rob[1, :, 20:] = 255, 128  # one modality carries all the weight; a shared pixel
    arrays = TileArrays(cls, np.zeros((h, w), np.uint8), np.full((h, w), 0b101, np.uint8), rob,
                        np.full((3, h, w), 0.25, np.float16))
    write_tile(path, layout, (slice(0, 64), slice(0, 64)), arrays)
    ds = open_mosaic(path).isel(y=slice(0, 64), x=slice(0, 64))
    out = ds["class"].values == 255
    assert (out == (cls == 255)).all()
    assert (ds["confidence"].values[out] == 0).all() and (ds["confidence"].values[~out] == 1).all()  # 0 is nodata
    assert (ds["modality_mask"].values[out] == 0).all() and (ds["modality_mask"].values[~out] == 0b101).all()
    r = ds["robustness"].values
    assert (r[:, out] == 255).all()
    assert (r[0, ~out] == ROBUSTNESS_SCALE).all() and (r[2, ~out] == 0).all()  # weights 1 and 0 are exact
    assert set(np.unique(r[1, ~out]).tolist()) == {0, 127}  # 128 / 255 = 0.502 -> round(0.502 * 254) = 127
    assert np.isnan(ds["probability"].values[:, out]).all() and (ds["probability"].values[:, ~out] == 0.25).all()
    assert encode_robustness(np.arange(256, dtype=np.uint8), np.zeros(256, bool)).max() == ROBUSTNESS_SCALE


@pytest.mark.parametrize("fmt", [2, 3])
def test_cf_and_geozarr_attributes_for_xarray_rioxarray_and_odc(tmp_path, fmt):
    """``grid_mapping`` on every map variable, ``spatial_ref`` a coordinate, CF x/y, the GeoZarr conventions
    declared on the root, every level and every variable, ``multiscales`` listing the overview levels."""
    import rioxarray  # noqa: F401 - registers .rio
    import zarr

    path = tmp_path / "m.zarr"
    layout = _layout(fmt, prob=True, tile=32)
    open_or_create_store(path, layout, {})
    _fill(path, layout)
    finish_store(path, layout)
    for opened in (open_mosaic(path), xr.open_zarr(path, decode_coords="all")):  # the helper and the plain call
        assert "spatial_ref" in opened.coords and "spatial_ref" not in opened.data_vars
        assert opened.rio.crs.to_epsg() == 32633
        assert opened.rio.transform() == GBOX.transform
        assert opened.odc.geobox == GBOX
        for name in MAPS:
            assert opened[name].encoding["grid_mapping"] == "spatial_ref", name
            assert opened[name].rio.crs.to_epsg() == 32633, name
    ds = open_mosaic(path)
    assert ds["class"].rio.nodata == 255 and ds["robustness"].rio.nodata == 255 and ds["confidence"].rio.nodata == 0
    for dim, axis in (("x", "X"), ("y", "Y")):
        assert ds[dim].attrs["standard_name"] == f"projection_{dim}_coordinate"
        assert ds[dim].attrs["axis"] == axis and ds[dim].attrs["units"] == "m"
    root = zarr.open_group(str(path), mode="r")

    def declared(attrs):
        return {c["uuid"] for c in attrs["zarr_conventions"]}

    assert declared(root.attrs) == {PROJ_UUID, SPATIAL_UUID, MULTISCALES_UUID}
    assert root.attrs["proj:code"] == "EPSG:32633" and root.attrs["spatial:dimensions"] == ["y", "x"]
    assert root.attrs["spatial:transform"] == list(GBOX.transform)[:6]
    for name in MAPS:
        assert declared(root[name].attrs) == {PROJ_UUID, SPATIAL_UUID}, name
        assert root[name].attrs["spatial:shape"] == list(GBOX.shape.yx), name
    layout_ = root.attrs["multiscales"]["layout"]
    assert [lv["asset"] for lv in layout_] == [".", "overviews/2", "overviews/4", "overviews/8"]
    for lv in layout_[1:]:
        f = int(lv["asset"].split("/")[1])
        level = root["overviews"][str(f)]
        assert lv["derived_from"] == "." and lv["transform"]["scale"] == [f, f]
        assert lv["spatial:transform"] == level.attrs["spatial:transform"] == list(GBOX.zoom_out(f).transform)[:6]
        assert lv["spatial:shape"] == level.attrs["spatial:shape"] == list(level["class"].shape)
        assert declared(level.attrs) == {PROJ_UUID, SPATIAL_UUID}
        ov = open_mosaic(path, group=f"overviews/{f}")
        assert ov.rio.transform() == GBOX.zoom_out(f).transform and ov.odc.geobox == GBOX.zoom_out(f)
        assert ov["class"].dtype == np.uint8 and ov["class"].rio.nodata == 255
    # a rerun over the finished store keeps the overviews declared until it finishes again
    open_or_create_store(path, layout, {"config_hash": "again"})
    assert declared(zarr.open_group(str(path), mode="r").attrs) == {PROJ_UUID, SPATIAL_UUID, MULTISCALES_UUID}


def test_a_store_of_an_older_layout_is_refused(tmp_path):
    """A store from before the nodata fill values would mix encodings (robustness x 255 vs x 254)."""
    import zarr

    path = tmp_path / "m.zarr"
    open_or_create_store(path, _layout(), {})
    root = zarr.open_group(str(path), mode="r+")
    del root.attrs["sgma:layout_version"]
    with pytest.raises(StoreIncompatibleError, match="layout version 1"):
        open_or_create_store(path, _layout(), {})


@pytest.mark.parametrize("tile", [pytest.param(16, marks=pytest.mark.slow), 32])  # 16: 4x the chunks, 1 level more
def test_overviews_hold_the_centre_pixel_of_every_block_at_every_level(tmp_path, tile):
    """Level f, index i = full-resolution pixel f * i + f // 2 (fill beyond the grid), for every variable and
    level: the Z-order writer buffers levels coarser than its read unit across units, and finer ones within."""
    import zarr

    from sgma_batch.store import _OVERVIEW_FILL, _overview_levels

    path = tmp_path / "m.zarr"
    layout = _layout(tile=tile)
    open_or_create_store(path, layout, {})
    _fill(path, layout)
    finish_store(path, layout)
    root = zarr.open_group(str(path), mode="r")
    factors = _overview_levels(layout)
    assert factors == ([2, 4, 8, 16] if tile == 16 else [2, 4, 8])
    for f in factors:
        level = root["overviews"][str(f)]
        for name, fill in _OVERVIEW_FILL.items():
            full = np.asarray(root[name][...])
            got = np.asarray(level[name][...])
            assert got.shape[-2:] == (-(-full.shape[-2] // f), -(-full.shape[-1] // f)), (f, name)
            want = np.full(got.shape, fill, np.uint8)
            sub = full[..., f // 2 :: f, f // 2 :: f]
            want[..., : sub.shape[-2], : sub.shape[-1]] = sub
            np.testing.assert_array_equal(got, want, err_msg=f"level {f} {name}")
