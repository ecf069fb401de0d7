"""Output store: template, chunk-aligned writes, manifest commit point, compatibility, finish."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox

from sgma_batch.errors import StoreIncompatibleError
from sgma_batch.grid import plan_tiles
from sgma_batch.store import (
    StoreLayout,
    TileArrays,
    commit_tile,
    finish_store,
    manifest_summary,
    open_or_create_store,
    read_manifest,
    tile_records_done,
    write_tile,
)

CLASSES = (("water", "#1f78b4"), ("trees", "#33a02c"), ("crops", "#ffd92f"))
MODS = ("s2", "s1", "dem")
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
        commit_tile(path, {"tile_id": t.tile_id, "status": "computed", "content_hash": t.content_hash})
        expected[t.region] = arr.class_
    return tasks, expected


@pytest.mark.parametrize("fmt", [2, 3])
def test_template_region_writes_and_xarray_crs(tmp_path, fmt):
    path = tmp_path / "m.zarr"
    layout = _layout(fmt, prob=True)
    assert open_or_create_store(path, layout, {"model": "tiny", "config_hash": "c"}) is True
    tasks, expected = _fill(path, layout)
    assert len(tasks) == 4 * 3
    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=False, consolidated=False)
    assert ds.odc.crs.epsg == 32633
    assert ds.odc.geobox == GBOX
    np.testing.assert_array_equal(ds["class"].values, expected)
    assert ds["robustness"].dims == ("modality", "y", "x")
    assert list(ds["modality"].values) == list(MODS)
    assert ds["class"].encoding["chunks"] == (64, 64)
    assert ds.attrs["sgma:classes"][0] == {"name": "water", "color": "#1f78b4"}
    assert ds["class"].attrs["proj:code"] == "EPSG:32633"
    decoded = xr.open_zarr(path, decode_coords="all", consolidated=False)
    assert float(decoded["robustness"].max()) <= 1.0 + 1e-6


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
    commit_tile(path, {"tile_id": tasks[0].tile_id, "status": "degraded", "content_hash": tasks[0].content_hash})
    commit_tile(path, {"tile_id": tasks[1].tile_id, "status": "computed", "content_hash": "other"})
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
    assert [c["name"] for c in item["properties"]["classification:classes"]] == ["water", "trees", "crops"]
    assert json.loads((path / "item.json").read_text())["id"] == "m.zarr"
    # overviews: factor 2 and 4 for a 200 px wide grid with 32 px chunks
    ov = xr.open_zarr(path, group="overviews/2", decode_coords="all", mask_and_scale=False)
    np.testing.assert_array_equal(ov["class"].values, expected[1::2, 1::2])
    full = xr.open_zarr(path, decode_coords="all", mask_and_scale=False)
    for name in ("confidence", "robustness", "modality_mask"):  # what the drivers PNG is drawn from
        np.testing.assert_array_equal(ov[name].values, full[name].values[..., 1::2, 1::2], err_msg=name)
    assert ov.odc.crs.epsg == 32633
    from PIL import Image
    img = Image.open(path / "quicklook.png")
    assert img.size[0] > 150  # map plus legend
    # drivers: robustness as RGB (S2 red, S1 green, DEM blue) beside the confidence, from the same pixels
    drivers = np.asarray(Image.open(path / "drivers.png").convert("RGB"))
    h, w = expected.shape
    rob = full["robustness"].values  # (M, y, x)
    np.testing.assert_array_equal(drivers[:h, :w], np.moveaxis(rob, 0, -1))
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


@pytest.mark.parametrize("tile", [16, 32])
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
