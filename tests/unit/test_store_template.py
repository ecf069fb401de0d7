"""The store template is written with zarr directly (no xarray, pandas or dask on the way to the first tile);
its metadata must be exactly what xarray's ``to_zarr(compute=False)`` writes for the same variables, so every
reader that opens an xarray-written store (xarray, rioxarray, odc-geo, GDAL) opens ours the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox

from sgma_batch.store.layout import NODATA, StoreLayout, _template_vars, _write_template
from sgma_batch.store.overviews import _OVERVIEW_FILL

ATTRS = {"title": "t", "sgma:grid": {"shape": [40, 56]}}


def _xarray_template(layout: StoreLayout, out: Path, *, group: str | None = None, only=None) -> None:
    """What xarray writes for the same variables (the oracle)."""
    import dask.array as da
    import xarray as xr

    arrays = _template_vars(layout)
    data, coords, encoding = {}, {}, {}
    for name, v in arrays.items():
        if v.values is not None:
            coords[name] = xr.Variable(v.dims, v.values, attrs=dict(v.attrs))
            continue
        if only is not None and name not in only:
            continue
        decoded = np.float32 if v.scale is not None else v.dtype  # what a CF reader sees after scale_factor
        fill = np.nan if v.scale is not None else v.fill
        data[name] = xr.DataArray(da.full(v.shape, fill, dtype=decoded, chunks=v.chunks), dims=v.dims,
                                  attrs=dict(v.attrs))
        disk = np.dtype(v.dtype).type(NODATA[name])
        encoding[name] = {"_FillValue": disk, "dtype": v.dtype, "chunks": v.chunks}
        if layout.zarr_format == 3:
            encoding[name]["fill_value"] = disk
        if v.scale is not None:
            encoding[name]["scale_factor"] = v.scale
    ds = xr.Dataset(data, coords=coords, attrs=ATTRS)
    if only is not None:
        ds = ds[list(only)]
    ds.to_zarr(str(out), group=group, mode="w", compute=False, consolidated=False,
               zarr_format=layout.zarr_format, encoding=encoding)


def _metadata(root: Path) -> dict[str, dict]:
    names = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("*")) if p.name in names}


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("probability", [False, True])
def test_template_metadata_equals_what_xarray_writes(tmp_path, zarr_format, probability):
    gb = GeoBox((40, 56), Affine(10, 0, 500000, 0, -10, 5300000), "EPSG:32633")
    layout = StoreLayout(gb, 16, (("water", "#0000ff"), ("trees", "#00ff00")), ("s2", "s1", "dem"), probability,
                         zarr_format)
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "xarray.zarr"
    _write_template(str(ours), layout, ATTRS)
    _xarray_template(layout, theirs)
    assert _metadata(ours) == _metadata(theirs)
    a, b = zarr.open_group(str(ours), mode="r"), zarr.open_group(str(theirs), mode="r")
    for name in ("x", "y", "spatial_ref", "modality"):
        assert np.array_equal(np.asarray(a[name][...]), np.asarray(b[name][...])), name
    assert int(a["class"][0, 0]) == NODATA["class"]  # an unwritten chunk reads as nodata


def test_overview_group_equals_what_xarray_writes(tmp_path):
    gb = GeoBox((40, 56), Affine(20, 0, 500000, 0, -20, 5300000), "EPSG:32633")
    layout = StoreLayout(gb, 16, (("water", "#0000ff"),), ("s2", "s1"), False, 3)
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "xarray.zarr"
    for out, write in ((ours, _write_template), (theirs, None)):
        zarr.open_group(str(out), mode="w", zarr_format=3)
        if write is not None:
            write(str(out), layout, ATTRS, group="overviews/2", only=list(_OVERVIEW_FILL))
        else:
            _xarray_template(layout, out, group="overviews/2", only=list(_OVERVIEW_FILL))
    assert _metadata(ours) == _metadata(theirs)
