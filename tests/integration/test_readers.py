"""The reader matrix: every tool people open a mosaic with reads the same CRS, transform, nodata, dtypes and
values, including a tile that was never written (it must read as nodata, not as class 0 = water).

Readers: zarr-python, xarray (:func:`open_mosaic` and the plain CF-decoding call), rioxarray, odc-geo, GDAL
3.10 (rasterio 1.4 in the test environment) on a ``zarr_format=2`` store, and GDAL >= 3.12 (rasterio 1.5,
which has wheels only for Python >= 3.12) on the default Zarr v3 store, from the side environment
``.venv-gdal`` (created on first use, or beforehand by ``.ci/run``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.run import run_mosaic
from sgma_batch.store import NODATA, ROBUSTNESS_SCALE, open_mosaic, read_manifest

pytestmark = pytest.mark.integration

MAPS = ("class", "confidence", "modality_mask", "robustness", "probability")
DTYPES = {"class": "uint8", "confidence": "uint8", "modality_mask": "uint8", "robustness": "uint8",
          "probability": "float16"}
HERE = Path(__file__).resolve().parent
GDAL_SIDE_PYTHON = run_archive.REPO / ".venv-gdal" / "bin" / "python"


@dataclass(frozen=True)
class Store:
    path: Path
    geobox: GeoBox
    expected: dict[str, np.ndarray]  # what every reader must return, the unwritten tile included
    hole: tuple[slice, slice]  # the tile that was never written


def _store(archive: Path, checkpoint: Path, out: Path, fmt: int) -> Store:
    """A real run (sequential executor), then one tile taken back: its chunks and its manifest record removed,
    as if the run had stopped before that tile."""
    summary = run_mosaic(run_archive.run_spec(archive, checkpoint, out, executor="sequential", zarr_format=fmt,
                                              write_probability=True))
    assert summary.exit_code == 0 and summary.computed == summary.tiles == 6
    root = zarr.open_group(str(out), mode="r")
    truth = {name: np.asarray(root[name][...]) for name in MAPS}
    records = read_manifest(out)
    # the tile with the most mapped pixels: its chunks exist and hold real classes, so a wrong fill would show
    best = max(records.values(), key=lambda r: int((truth["class"][r.slices] != 255).sum()))
    hole = best.slices
    assert (truth["class"][hole] != 255).mean() > 0.9
    tile_px = root.attrs["sgma:grid"]["tile_px"]
    for name in MAPS:
        arr = root[name]
        index = (0,) * (arr.ndim - 2) + (hole[0].start // tile_px, hole[1].start // tile_px)
        chunk = out / name / arr.metadata.encode_chunk_key(index)
        assert chunk.is_file(), chunk
        chunk.unlink()
    (out / "manifest" / f"{best.tile_id}.json").unlink()
    expected = {}
    for name, a in truth.items():
        e = a.copy()
        e[..., hole[0], hole[1]] = NODATA[name]
        expected[name] = e
    grid = root.attrs["sgma:grid"]
    geobox = GeoBox(tuple(grid["shape"]), Affine(*grid["transform"]), f"EPSG:{grid['epsg']}")
    # the grid itself, independently of how it is recorded: UTM 33N, 10 m, north up, on the 10 m lattice
    assert geobox.crs.epsg == 32633 and geobox.transform.a == 10 and geobox.transform.e == -10
    assert geobox.transform.c % 10 == 0 and geobox.transform.f % 10 == 0
    assert geobox.shape.yx == truth["class"].shape
    return Store(out, geobox, expected, hole)


@pytest.fixture(scope="module")
def stores(archive, checkpoint, tmp_path_factory) -> dict[int, Store]:
    """The default Zarr v3 store and a ``--zarr-format 2`` one, each with one unwritten tile."""
    base = tmp_path_factory.mktemp("readers")
    return {fmt: _store(archive, checkpoint, base / f"v{fmt}.zarr", fmt) for fmt in (3, 2)}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def _is_nodata(values: np.ndarray, name: str) -> np.ndarray:
    nodata = NODATA[name]
    return np.isnan(values) if np.isnan(nodata) else values == nodata


def test_the_unwritten_tile_is_in_the_stores(stores):
    for s in stores.values():
        for name in MAPS:
            assert _is_nodata(s.expected[name][..., s.hole[0], s.hole[1]], name).all()
        # mapped and unmapped pixels elsewhere too (the AOI polygon is smaller than the grid)
        valid = s.expected["class"] != 255
        assert 0.3 < valid.mean() < 0.95


@pytest.mark.parametrize("fmt", [3, 2])
def test_zarr_python(stores, fmt):
    s = stores[fmt]
    root = zarr.open_group(str(s.path), mode="r")
    assert root.metadata.zarr_format == fmt
    for name in MAPS:
        arr = root[name]
        assert arr.dtype == np.dtype(DTYPES[name]), name
        assert _same(np.asarray(arr.fill_value), np.asarray(NODATA[name], arr.dtype)), (name, arr.fill_value)
        assert _same(np.asarray(arr[...]), s.expected[name]), name
    assert root.attrs["proj:code"] == "EPSG:32633"
    assert root.attrs["spatial:transform"] == list(s.geobox.transform)[:6]


@pytest.mark.parametrize("fmt", [3, 2])
def test_xarray(stores, fmt):
    s = stores[fmt]
    ds = open_mosaic(s.path)  # stored dtypes
    assert "spatial_ref" in ds.coords and "spatial_ref" not in ds.data_vars
    for name in MAPS:
        assert ds[name].dtype == np.dtype(DTYPES[name]), name
        assert _same(ds[name].values, s.expected[name]), name
        assert _same(np.asarray(ds[name].attrs["_FillValue"]), np.asarray(NODATA[name])), name
    cf = xr.open_zarr(s.path, decode_coords="all")  # the plain call: CF decoding masks nodata as NaN
    assert "spatial_ref" in cf.coords
    for name in MAPS:  # rioxarray's documented way to the CRS (not its fallback on a coordinate's name)
        assert ds[name].encoding["grid_mapping"] == cf[name].encoding["grid_mapping"] == "spatial_ref", name
    for name in MAPS:
        nodata = _is_nodata(s.expected[name], name)
        assert (np.isnan(cf[name].values) == nodata).all(), name
    valid = ~_is_nodata(s.expected["robustness"], "robustness")
    np.testing.assert_allclose(cf["robustness"].values[valid], s.expected["robustness"][valid] / ROBUSTNESS_SCALE,
                               rtol=1e-6)
    mapped = ~_is_nodata(s.expected["class"], "class")
    np.testing.assert_array_equal(cf["class"].values[mapped], s.expected["class"][mapped])


@pytest.mark.parametrize("fmt", [3, 2])
def test_rioxarray(stores, fmt):
    import rioxarray  # noqa: F401 - registers the .rio accessor

    s = stores[fmt]
    for ds in (open_mosaic(s.path), xr.open_zarr(s.path, decode_coords="all")):
        assert ds.rio.crs.to_epsg() == 32633
        assert ds.rio.transform() == s.geobox.transform
        assert ds.rio.bounds() == tuple(s.geobox.extent.boundingbox)
        for name in MAPS:
            assert ds[name].rio.crs.to_epsg() == 32633, name
            assert ds[name].rio.transform() == s.geobox.transform, name
    ds = open_mosaic(s.path)
    for name in MAPS:
        assert _same(np.asarray(ds[name].rio.nodata), np.asarray(NODATA[name], DTYPES[name])), name
    # a window through rioxarray lands on the same pixels
    x0, y0 = s.geobox.transform @ (s.hole[1].start, s.hole[0].start)
    win = ds["class"].rio.clip_box(x0 + 1, y0 - 10 * 20 + 1, x0 + 10 * 20 - 1, y0 - 1)
    assert (win.values == 255).all() and win.shape == (20, 20)


@pytest.mark.parametrize("fmt", [3, 2])
def test_odc_geo(stores, fmt):
    import odc.geo.xr  # noqa: F401 - registers the .odc accessor

    s = stores[fmt]
    ds = open_mosaic(s.path)
    assert ds.odc.geobox == s.geobox
    for name in MAPS:
        assert ds[name].odc.geobox == s.geobox, name
        assert _same(np.asarray(ds[name].odc.nodata), np.asarray(float(NODATA[name]))), name
    level = open_mosaic(s.path, group="overviews/2")
    assert level.odc.geobox == s.geobox.zoom_out(2)


def _gdal(python: Path | str, s: Store, tmp_path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    r = subprocess.run([str(python), str(HERE / "gdal_read.py"), str(s.path), str(tmp_path), *MAPS],
                       capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    values = {name: np.load(tmp_path / f"{name}.npy") for name in MAPS}
    masks = {name: np.load(tmp_path / f"{name}.mask.npy") for name in MAPS}
    return report, values, masks


def _check_gdal(report: dict, values: dict, masks: dict, s: Store) -> None:
    for name in MAPS:
        v = report["vars"][name]
        exp = s.expected[name]
        bands = 1 if exp.ndim == 2 else exp.shape[0]
        assert v["epsg"] == 32633, name
        assert v["transform"] == pytest.approx(list(s.geobox.transform)[:6]), name
        assert v["shape"] == [bands, *s.geobox.shape.yx], name
        nodata = NODATA[name]
        assert v["nodata"] == [str(nodata) if np.isnan(nodata) else float(nodata)] * bands, (name, v["nodata"])
        exp3 = exp.reshape(bands, *exp.shape[-2:])
        got = values[name]
        if name == "probability":  # float16 in GDAL >= 3.11, widened to float32 before
            assert v["dtypes"][0] in ("float16", "float32")
            got = got.astype(np.float16)
        else:
            assert v["dtypes"] == [DTYPES[name]] * bands, name
        assert _same(got, exp3), name
        # GDAL's own masks: nodata exactly where expected, the unwritten tile included
        np.testing.assert_array_equal(masks[name] == 0, _is_nodata(exp3, name), err_msg=name)


def test_gdal_3_10_reads_the_zarr_v2_store(stores, tmp_path):
    import rasterio

    assert rasterio.__gdal_version__.startswith("3.10"), rasterio.__gdal_version__
    report, values, masks = _gdal(sys.executable, stores[2], tmp_path)
    assert report["gdal"] == rasterio.__gdal_version__
    _check_gdal(report, values, masks, stores[2])


def _gdal_side_python() -> Path:
    """``.venv-gdal``'s Python, created on first use (as ``.ci/run`` does), so the README's test command
    works on its own: Python 3.12 from pyenv or the PATH, rasterio 1.5 and numpy from PyPI."""
    if not GDAL_SIDE_PYTHON.is_file():
        import glob
        import shutil
        import subprocess

        found = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12*/bin/python3.12")))
        py312 = found[-1] if found else shutil.which("python3.12")
        if py312 is None:
            pytest.fail("this test reads Zarr v3 with GDAL >= 3.12 from rasterio 1.5, which needs Python >= 3.12; "
                        "install a Python 3.12 (e.g. with pyenv) so .venv-gdal can be created")
        venv = GDAL_SIDE_PYTHON.parents[1]
        subprocess.run([py312, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "rasterio>=1.5,<1.6", "numpy>=1.26"], check=True)
    return GDAL_SIDE_PYTHON


def test_gdal_3_12_reads_the_default_zarr_v3_store(stores, tmp_path):
    _gdal_side_python()
    report, values, masks = _gdal(GDAL_SIDE_PYTHON, stores[3], tmp_path)
    major, minor = (int(p) for p in report["gdal"].split(".")[:2])
    assert (major, minor) >= (3, 12), report["gdal"]
    _check_gdal(report, values, masks, stores[3])
