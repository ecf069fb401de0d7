"""The output Zarr store: template, chunk-aligned tile writes, the manifest and the finish step.

Layout (see DESIGN.md "Output store"); every map variable has a nodata value (:data:`NODATA`) that is
also its fill value on disk, so a chunk no tile has written yet reads as nodata in every reader:

* ``class`` (y, x) uint8, 255 = nodata (every pixel outside the AOI polygon or without a prediction);
* ``confidence`` (y, x) uint8, max blended probability x 255, 0 = nodata (a prediction's maximum
  probability is at least 1/K, so 0 is never a value);
* ``modality_mask`` (y, x) uint8, bit m set where modality m (``modalities`` attribute order) was
  present, 0 = nodata (a pixel is only mapped where some modality was present);
* ``robustness`` (modality, y, x) uint8, the SGF fusion weights x 254 (CF ``scale_factor`` 1/254, so
  xarray decodes them to floats in [0, 1]), 255 = nodata: a weight of 0 is a value (an absent modality),
  so nodata needs its own code, and 254 steps keep a weight of 1 exact. uint8 rather than float16
  because the weights are a display/diagnostic quantity and the store is 2x smaller;
* optional ``probability`` (class, y, x) float16, NaN = nodata.

Where ``class`` is nodata, every variable is nodata (enforced by :func:`write_tile`).

Georeferencing for every reader: CF (``spatial_ref`` grid-mapping coordinate named by a ``grid_mapping``
attribute on every map variable; ``x``/``y`` with ``standard_name``, ``axis`` and ``units``), GeoZarr
conventions declared in ``zarr_conventions`` (``proj:``, ``spatial:`` on the root, every level and every
map variable; ``multiscales`` on the root once overviews exist), and GDAL's ``_CRS``. Open it with
:func:`open_mosaic` to keep the stored dtypes.

Chunks are ``tile_px`` square: one tile core is exactly one chunk, so each task writes its own chunk and
nothing else (checked here, because xarray checks alignment only for dask arrays). A tile is committed by
writing ``manifest/<tile_id>.json`` atomically *after* its data: a record's presence is the commit point.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox

from sgma_batch import __version__
from sgma_batch.errors import StoreCorruptError, StoreIncompatibleError, StoreUnwritableError
from sgma_batch.grid import morton_key

log = logging.getLogger(__name__)

__all__ = [
    "CLASS_NODATA",
    "NODATA",
    "ROBUSTNESS_SCALE",
    "StoreLayout",
    "TileArrays",
    "check_store",
    "commit_tile",
    "encode_robustness",
    "finish_store",
    "label_agreement",
    "manifest_summary",
    "open_mosaic",
    "open_or_create_store",
    "read_manifest",
    "render_drivers",
    "render_quicklook",
    "write_tile",
]

CLASS_NODATA = 255
#: Nodata of every map variable: its fill value on disk (Zarr ``fill_value``, v2 and v3), CF ``_FillValue``
#: and GDAL's nodata. The variables' docs are in the module docstring.
NODATA: Mapping[str, float] = MappingProxyType(
    {"class": CLASS_NODATA, "confidence": 0, "modality_mask": 0, "robustness": 255, "probability": float("nan")}
)
#: Robustness is stored as round(weight x 254): 255 stays free for nodata and a weight of 1 stays exact.
ROBUSTNESS_SCALE = 254
#: Bumped when the on-disk encoding changes (fill values, scales); a store of another version is refused.
LAYOUT_VERSION = 2
MANIFEST_DIR = "manifest"
DONE_STATUSES = frozenset({"computed", "nodata"})  # degraded/failed tiles are retried on a rerun


@dataclass(frozen=True)
class StoreLayout:
    """What fixes a store's shape: the grid, the chunking, the classes and the modalities."""

    geobox: GeoBox
    tile_px: int
    classes: tuple[tuple[str, str], ...]  # (name, "#rrggbb"), index = class id
    modalities: tuple[str, ...]
    write_probability: bool = False
    zarr_format: int = 3

    def grid_record(self) -> dict[str, Any]:
        g = self.geobox
        return {
            "crs": g.crs.to_wkt(),
            "epsg": g.crs.epsg,
            "transform": list(g.transform)[:6],
            "shape": [g.shape.y, g.shape.x],
            "tile_px": self.tile_px,
        }


@dataclass(frozen=True)
class TileArrays:
    """The outputs of one tile core, shapes (H, W) / (M, H, W) / (K, H, W) of the core."""

    class_: np.ndarray  # (H, W) uint8
    confidence: np.ndarray  # (H, W) uint8
    modality_mask: np.ndarray  # (H, W) uint8
    robustness: np.ndarray  # (M, H, W) uint8
    probability: np.ndarray | None = None  # (K, H, W) float16
    extra: Mapping[str, Any] = field(default_factory=dict)


def _convention(name: str, uuid: str, description: str) -> dict[str, str]:
    return {
        "uuid": uuid,
        "name": name,
        "schema_url": f"https://raw.githubusercontent.com/zarr-conventions/{name.rstrip(':')}/refs/tags/v0.1/schema.json",
        "spec_url": f"https://github.com/zarr-conventions/{name.rstrip(':')}/blob/v0.1/README.md",
        "description": description,
    }


#: The GeoZarr conventions (https://github.com/zarr-conventions, v0.1), declared in ``zarr_conventions``
#: wherever their attributes appear; readers identify them by UUID.
PROJ_CONVENTION = _convention("proj:", "f17cb550-5864-4468-aeb7-f3180cfb622f",
                              "Coordinate reference system information for geospatial data")
SPATIAL_CONVENTION = _convention("spatial:", "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4", "Spatial coordinate information")
MULTISCALES_CONVENTION = _convention("multiscales", "d35379db-88df-4056-af3a-620245f8e347",
                                     "Multiscale layout of zarr datasets")


def _spatial_attrs(geobox: GeoBox) -> dict[str, Any]:
    t = geobox.transform
    bbox = geobox.extent.boundingbox
    return {
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "spatial:shape": [geobox.shape.y, geobox.shape.x],
        "spatial:bbox": [bbox.left, bbox.bottom, bbox.right, bbox.top],
        "spatial:registration": "pixel",
    }


def _geozarr_attrs(geobox: GeoBox) -> dict[str, Any]:
    """GeoZarr ``proj:`` and ``spatial:`` attributes (declared) and GDAL's ``_CRS``, for a group or array."""
    attrs: dict[str, Any] = {
        "zarr_conventions": [PROJ_CONVENTION, SPATIAL_CONVENTION],
        "proj:wkt2": geobox.crs.to_wkt(),
        **_spatial_attrs(geobox),
        "_CRS": {"wkt": geobox.crs.to_wkt()},  # what GDAL's Zarr driver reads the CRS from
    }
    if geobox.crs.epsg is not None:
        attrs["proj:code"] = f"EPSG:{geobox.crs.epsg}"
    return attrs


def _multiscales_attrs(layout: StoreLayout, factors: Sequence[int]) -> dict[str, Any]:
    """The root's ``multiscales`` (the root itself is level 0, ``overviews/<f>`` the others) and conventions.

    Every level has the full-resolution origin and ``f`` times its pixel size (centre-pixel sampling).
    """
    levels = []
    for f in (1, *factors):
        sp = _spatial_attrs(layout.geobox.zoom_out(f) if f > 1 else layout.geobox)
        level = {"asset": "." if f == 1 else f"overviews/{f}",
                 "transform": {"scale": [float(f), float(f)], "translation": [0.0, 0.0]},
                 "spatial:shape": sp["spatial:shape"], "spatial:transform": sp["spatial:transform"]}
        levels.append(level if f == 1 else {**level, "derived_from": "."})
    return {
        "zarr_conventions": [MULTISCALES_CONVENTION, PROJ_CONVENTION, SPATIAL_CONVENTION],
        "multiscales": {"layout": levels, "resampling_method": "nearest"},
    }


def _xy_attrs(geobox: GeoBox) -> tuple[dict[str, Any], dict[str, Any]]:
    """CF attributes of the ``x`` and ``y`` coordinates (cell centres)."""
    crs = geobox.crs
    if crs.geographic:
        return ({"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"},
                {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"})
    units = crs.units[0] if crs.units else "m"
    units = "m" if units in ("metre", "meter", "m") else units
    return ({"standard_name": "projection_x_coordinate", "long_name": "x coordinate of projection", "units": units,
             "axis": "X"},
            {"standard_name": "projection_y_coordinate", "long_name": "y coordinate of projection", "units": units,
             "axis": "Y"})


def _fill_encoding(name: str, zarr_format: int, dtype: str) -> dict[str, Any]:
    """The encoding that puts a variable's nodata on disk: CF ``_FillValue`` and, for Zarr v3 (where xarray
    keeps the two apart), the array's own ``fill_value``, which GDAL >= 3.11 reads as nodata."""
    fill = np.dtype(dtype).type(NODATA[name])
    enc: dict[str, Any] = {"_FillValue": fill, "dtype": dtype}
    if zarr_format == 3:
        enc["fill_value"] = fill
    return enc


def _template(layout: StoreLayout, attrs: Mapping[str, Any]):
    import dask.array as da
    import xarray as xr
    from odc.geo.xr import xr_zeros

    g = layout.geobox
    t = layout.tile_px
    base = xr_zeros(g, "uint8", chunks=(t, t))
    x_attrs, y_attrs = _xy_attrs(g)
    x = base.x.copy()
    y = base.y.copy()
    x.attrs = {**x.attrs, **x_attrs}
    y.attrs = {**y.attrs, **y_attrs}
    coords = {"y": y, "x": x, "spatial_ref": base.spatial_ref}
    geo = {**_geozarr_attrs(g), "grid_mapping": "spatial_ref"}
    m, k = len(layout.modalities), len(layout.classes)
    names = [c[0] for c in layout.classes]

    def full(name: str, lead: tuple[int, ...], dtype: str):
        return da.full((*lead, *g.shape.yx), NODATA[name], dtype=dtype, chunks=(*lead, t, t))

    data = {
        "class": xr.DataArray(
            full("class", (), "uint8"), dims=("y", "x"),
            attrs={"long_name": "land-cover class id", "flag_values": list(range(k)), "flag_meanings": " ".join(names),
                   "flag_colors": [c[1] for c in layout.classes], **geo},
        ),
        "confidence": xr.DataArray(
            full("confidence", (), "uint8"), dims=("y", "x"),
            attrs={"long_name": "max blended class probability x 255", "valid_range": [1, 255], **geo},
        ),
        "modality_mask": xr.DataArray(
            full("modality_mask", (), "uint8"), dims=("y", "x"),
            attrs={"long_name": "bit m set where modality m was present", "flag_masks": [1 << i for i in range(m)],
                   "flag_meanings": " ".join(layout.modalities), **geo},
        ),
        "robustness": xr.DataArray(
            # decoded floats: what a CF reader sees after scale_factor (the stored uint8 fill is 255)
            da.full((m, *g.shape.yx), np.nan, dtype="float32", chunks=(m, t, t)), dims=("modality", "y", "x"),
            attrs={"long_name": "SGF fusion weight per modality (robustness map)",
                   "valid_range": [0, ROBUSTNESS_SCALE], **geo},
        ),
    }
    coords["modality"] = ("modality", np.array(layout.modalities, dtype=object))  # vlen strings: in the v3 spec
    fmt = layout.zarr_format
    encoding: dict[str, dict[str, Any]] = {
        "class": {**_fill_encoding("class", fmt, "uint8"), "chunks": (t, t)},
        "confidence": {**_fill_encoding("confidence", fmt, "uint8"), "chunks": (t, t)},
        "modality_mask": {**_fill_encoding("modality_mask", fmt, "uint8"), "chunks": (t, t)},
        "robustness": {**_fill_encoding("robustness", fmt, "uint8"), "scale_factor": 1.0 / ROBUSTNESS_SCALE,
                       "chunks": (m, t, t)},
    }
    if layout.write_probability:
        coords["class_name"] = ("class_name", np.array(names, dtype=object))
        data["probability"] = xr.DataArray(
            full("probability", (k,), "float16"), dims=("class_name", "y", "x"),
            attrs={"long_name": "blended class probability", **geo},
        )
        encoding["probability"] = {**_fill_encoding("probability", fmt, "float16"), "chunks": (k, t, t)}
    ds = xr.Dataset(data, coords=coords, attrs=dict(attrs))
    return ds, encoding


def _root_attrs(layout: StoreLayout, provenance: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "title": "sgma-batch land-cover mosaic",
        "sgma:grid": layout.grid_record(),
        "sgma:classes": [{"name": n, "color": c} for n, c in layout.classes],
        "sgma:modalities": list(layout.modalities),
        "sgma:version": __version__,
        "sgma:zarr_format": layout.zarr_format,
        "sgma:probability": layout.write_probability,
        "sgma:layout_version": LAYOUT_VERSION,
        "sgma:nodata": {k: (None if k == "probability" else int(v)) for k, v in NODATA.items()},  # probability: NaN
        **_geozarr_attrs(layout.geobox),
        **{f"sgma:{k}": v for k, v in provenance.items()},
    }


def _check_compatible(path: Path, attrs: Mapping[str, Any], layout: StoreLayout) -> None:
    grid = attrs.get("sgma:grid")
    if grid is None:
        raise StoreIncompatibleError(f"{path} is not an sgma-batch store; pass a new --out path")
    if attrs.get("sgma:layout_version", 1) != LAYOUT_VERSION:
        raise StoreIncompatibleError(
            f"store {path} has on-disk layout version {attrs.get('sgma:layout_version', 1)} (fill values and "
            f"encodings), this sgma-batch writes version {LAYOUT_VERSION}; write to a new --out"
        )
    want = layout.grid_record()
    diffs = []
    if grid.get("epsg") != want["epsg"] or (want["epsg"] is None and grid.get("crs") != want["crs"]):
        diffs.append(f"CRS {grid.get('epsg')} != {want['epsg']}")
    if not np.allclose(grid.get("transform", []), want["transform"]) or grid.get("shape") != want["shape"]:
        diffs.append(f"grid {grid.get('shape')}@{grid.get('transform')} != {want['shape']}@{want['transform']}")
    if grid.get("tile_px") != want["tile_px"]:
        diffs.append(f"tile size {grid.get('tile_px')} != {want['tile_px']}")
    classes = [(c["name"], c["color"]) for c in attrs.get("sgma:classes", [])]
    if [c[0] for c in classes] != [c[0] for c in layout.classes]:
        diffs.append(f"classes {[c[0] for c in classes]} != {[c[0] for c in layout.classes]}")
    if list(attrs.get("sgma:modalities", [])) != list(layout.modalities):
        diffs.append(f"modalities {attrs.get('sgma:modalities')} != {list(layout.modalities)}")
    if bool(attrs.get("sgma:probability", False)) != layout.write_probability:
        diffs.append("probability variable present in one and not the other")
    if diffs:
        raise StoreIncompatibleError(
            f"store {path} was written for a different layout ({'; '.join(diffs)}); "
            "use the same --res/--crs/--tile-px/--model or write to a new --out"
        )


def _quiet_zarr(fn: Any) -> Any:
    """Silence zarr's notes on our manifest/ folder and on v3 consolidated metadata. Both are on purpose."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not", category=UserWarning)
            return fn(*args, **kwargs)

    return wrapper


@_quiet_zarr
def open_or_create_store(path: str | Path, layout: StoreLayout, provenance: Mapping[str, Any]) -> bool:
    """Create the store template, or check that an existing store has the same layout.

    Returns:
        True when the store was created, False when an existing compatible store is reused (its root
        attributes are then refreshed with the new provenance).
    """
    import zarr

    path = Path(path)
    attrs = _root_attrs(layout, provenance)
    if path.exists() and any(path.iterdir()):
        try:
            group = zarr.open_group(str(path), mode="r+")
        except Exception as exc:  # noqa: BLE001 - any failure to open means "not a store we can use"
            raise StoreIncompatibleError(
                f"{path} exists and is not a readable Zarr store ({type(exc).__name__}); pass a new --out path"
            ) from None
        if group.metadata.zarr_format != layout.zarr_format:
            raise StoreIncompatibleError(
                f"store {path} is Zarr v{group.metadata.zarr_format}, not v{layout.zarr_format}; "
                f"pass --zarr-format {group.metadata.zarr_format} or a new --out"
            )
        old = group.attrs.asdict()
        _check_compatible(path, old, layout)
        if "multiscales" in old:  # the overviews of the last finish stay declared until the next one
            attrs["zarr_conventions"] = old["zarr_conventions"]
        group.attrs.update(attrs)
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnwritableError(f"cannot create {path.parent} ({exc.strerror}); choose a writable --out") from None
    ds, encoding = _template(layout, attrs)
    ds.to_zarr(str(path), mode="w", compute=False, consolidated=False, zarr_format=layout.zarr_format,
               encoding=encoding)
    (path / MANIFEST_DIR).mkdir(exist_ok=True)
    log.info("created store %s (%s px, chunks %d)", path, layout.geobox.shape, layout.tile_px)
    return True


@_quiet_zarr
def open_mosaic(path: str | Path, *, group: str | None = None) -> Any:
    """Open a mosaic (or one overview level, ``group="overviews/4"``) in xarray with the stored dtypes.

    ``class``, ``confidence``, ``modality_mask`` and ``robustness`` stay uint8 (xarray's CF decoding would
    turn them into floats with NaN, and ``robustness`` into weights); each keeps its nodata in
    ``attrs["_FillValue"]`` (``rio.nodata`` finds it) and ``robustness`` its ``scale_factor``.
    ``spatial_ref`` is a coordinate, so ``ds.rio.crs`` / ``ds.rio.transform()`` and ``ds.odc.geobox`` work.
    The same call by hand: ``xr.open_zarr(path, decode_coords="all", mask_and_scale=False)``.
    """
    import xarray as xr

    with warnings.catch_warnings():  # a store still being written has no consolidated metadata yet
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated", category=RuntimeWarning)
        return xr.open_zarr(str(path), group=group, decode_coords="all", mask_and_scale=False)


@_quiet_zarr
def check_store(path: str | Path, layout: StoreLayout) -> bool:
    """Read-only: False when ``path`` holds no store yet, True when it holds a compatible one.

    Raises:
        StoreIncompatibleError: as :func:`open_or_create_store` would, without changing anything.
    """
    import zarr

    path = Path(path)
    if not path.exists() or not any(path.iterdir()):
        return False
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception:  # noqa: BLE001 - any failure to open means "not a store we can use"
        raise StoreIncompatibleError(f"{path} exists and is not a readable Zarr store; pass a new --out path") from None
    if group.metadata.zarr_format != layout.zarr_format:
        raise StoreIncompatibleError(
            f"store {path} is Zarr v{group.metadata.zarr_format}, not v{layout.zarr_format}; "
            f"pass --zarr-format {group.metadata.zarr_format} or a new --out"
        )
    _check_compatible(path, group.attrs.asdict(), layout)
    return True


def _check_region(region: tuple[slice, slice], layout: StoreLayout) -> None:
    h, w = layout.geobox.shape.yx
    t = layout.tile_px
    for sl, n in zip(region, (h, w)):
        # One writer per chunk: a region must start on a chunk edge and end on the next or at the edge.
        if sl.start % t != 0 or not (sl.stop - sl.start == t or (sl.stop == n and sl.stop - sl.start <= t)):
            raise AssertionError(f"region {region} is not one chunk of {t} px in a {h}x{w} grid")


def write_tile(path: str | Path, layout: StoreLayout, region: tuple[slice, slice], arrays: TileArrays) -> None:
    """Write one tile core's arrays into exactly its own chunk of every variable."""
    import zarr

    _check_region(region, layout)
    ys, xs = region
    shape = (ys.stop - ys.start, xs.stop - xs.start)
    assert arrays.class_.shape == shape, (arrays.class_.shape, shape)

    def arr(name: str):  # open arrays directly: listing the group would visit manifest/ as well
        return zarr.open_array(str(path), path=name, mode="r+", zarr_format=layout.zarr_format)

    cls = arrays.class_.astype(np.uint8, copy=False)
    nodata = cls == CLASS_NODATA  # (H, W): every variable is nodata there, whatever the caller passed
    arr("class")[ys, xs] = cls
    conf = np.maximum(arrays.confidence.astype(np.uint8, copy=False), 1)  # 0 is reserved for nodata
    arr("confidence")[ys, xs] = np.where(nodata, NODATA["confidence"], conf).astype(np.uint8)
    arr("modality_mask")[ys, xs] = np.where(nodata, NODATA["modality_mask"], arrays.modality_mask).astype(np.uint8)
    arr("robustness")[:, ys, xs] = encode_robustness(arrays.robustness, nodata)
    if layout.write_probability:
        assert arrays.probability is not None
        arr("probability")[:, ys, xs] = np.where(nodata, np.float16(np.nan), arrays.probability).astype(np.float16)


def encode_robustness(weights_x255: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """(M, H, W) uint8 weights x 255 (as :class:`TileArrays` carries them) to the stored x 254, 255 at ``nodata``.

    Integer rounding, so the same input always gives the same bytes (determinism tests compare stores).
    """
    r = (weights_x255.astype(np.uint16) * ROBUSTNESS_SCALE + 127) // 255  # round half up; 255 -> 254
    return np.where(nodata, NODATA["robustness"], r).astype(np.uint8)


def _atomic_write_json(target: Path, record: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def commit_tile(path: str | Path, record: Mapping[str, Any]) -> None:
    """Commit a tile: write its manifest record atomically, after its data."""
    directory = Path(path) / MANIFEST_DIR
    directory.mkdir(exist_ok=True)
    _atomic_write_json(directory / f"{record['tile_id']}.json", record)


def read_manifest(path: str | Path) -> dict[str, dict[str, Any]]:
    """All committed tile records of a store, by tile id."""
    directory = Path(path) / MANIFEST_DIR
    out: dict[str, dict[str, Any]] = {}
    if not directory.is_dir():
        return out
    for f in sorted(directory.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
        except json.JSONDecodeError:
            raise StoreCorruptError(f"manifest record {f} is not JSON; delete it to recompute that tile") from None
        out[rec["tile_id"]] = rec
    return out


def manifest_summary(path: str | Path) -> dict[str, int]:
    """Counts of committed tiles per status."""
    counts: dict[str, int] = {}
    for rec in read_manifest(path).values():
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    return counts


def _overview_levels(layout: StoreLayout) -> list[int]:
    h, w = layout.geobox.shape.yx
    levels, f = [], 2
    while max(h, w) / (f // 2) > layout.tile_px:
        levels.append(f)
        f *= 2
    return levels


#: Chunks per side read at once when building overviews (a 4 x 4 block of 256 px chunks: 6 MiB of maps).
_OVERVIEW_UNIT = 4

#: Variables with overviews (nearest, centre pixel), and the fill of an overview pixel beyond the grid: nodata.
_OVERVIEW_FILL = {name: int(NODATA[name]) for name in ("class", "confidence", "modality_mask", "robustness")}


def _morton(n: int) -> list[tuple[int, int]]:
    """(row, col) of an n x n grid (n a power of two) in Z order: every aligned 2^k x 2^k block is contiguous."""
    return sorted(((r, c) for r in range(n) for c in range(n)), key=lambda rc: morton_key(*rc))


@_quiet_zarr
def _write_overviews(path: Path, layout: StoreLayout) -> list[int]:
    """Nearest-neighbour (centre pixel) overviews of the map variables under overviews/<f>.

    Level ``f`` holds the full-resolution pixel ``f * i + f // 2`` at index ``i``. One pass over blocks of
    ``_OVERVIEW_UNIT`` x ``_OVERVIEW_UNIT`` full-resolution chunks in Z order: an overview chunk of level ``f``
    covers ``f x f`` chunks, which Z order visits one after another, so each level keeps only the overview
    block being filled (memory O(tile) per level), every full-resolution chunk is decoded once (the old
    writer decoded it once per level: 4.4 s for the 4 levels of 1024 km², now 2.2 s, half of it creating the
    levels' templates), and every overview chunk is written once.
    ``probability`` has none: the quicklooks need class, confidence and robustness only.
    """
    import zarr

    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    src = {name: root[name] for name in _OVERVIEW_FILL}
    h, w = src["class"].shape
    t = layout.tile_px  # the chunk size of every map variable
    factors = _overview_levels(layout)
    ov_dir = path / "overviews"
    if ov_dir.exists():
        shutil.rmtree(ov_dir)
    dst, shapes = {}, {}
    for f in factors:
        gb = layout.geobox.zoom_out(f)
        sub = StoreLayout(gb, layout.tile_px, layout.classes, layout.modalities, False, layout.zarr_format)
        ds, encoding = _template(sub, {"sgma:overview_factor": f, "sgma:nodata": {k: int(NODATA[k]) for k in _OVERVIEW_FILL},
                                       **_geozarr_attrs(gb)})
        ds = ds[list(_OVERVIEW_FILL)]
        encoding = {k: encoding[k] for k in _OVERVIEW_FILL}
        ds.to_zarr(str(path), group=f"overviews/{f}", mode="w", compute=False, consolidated=False,
                   zarr_format=layout.zarr_format, encoding=encoding)
        dst[f] = zarr.open_group(str(path / "overviews" / str(f)), mode="r+", use_consolidated=False)
        shapes[f] = gb.shape.yx
    lead = {name: src[name].shape[:-2] for name in _OVERVIEW_FILL}
    u = _OVERVIEW_UNIT
    side = {f: max(u // f, 1) * t for f in factors}  # overview pixels per side that a level's buffer holds
    span = {f: max(f // u, 1) for f in factors}  # units per side that one buffer covers
    filling: dict[int, tuple[tuple[int, int], dict[str, np.ndarray]]] = {}  # f -> (its buffer's key, buffers)

    def flush(f: int) -> None:
        (by, bx), bufs = filling.pop(f)
        oh, ow = shapes[f]
        y0, x0 = by * side[f], bx * side[f]
        y1, x1 = min(y0 + side[f], oh), min(x0 + side[f], ow)
        for name, buf in bufs.items():
            dst[f][name][..., y0:y1, x0:x1] = buf[..., : y1 - y0, : x1 - x0]

    ny, nx = -(-h // (u * t)), -(-w // (u * t))
    for uy, ux in _morton(1 << max(ny - 1, nx - 1, 0).bit_length()):
        if uy >= ny or ux >= nx:
            continue
        r0, r1, c0, c1 = uy * u * t, min((uy + 1) * u * t, h), ux * u * t, min((ux + 1) * u * t, w)
        block = {name: a[..., r0:r1, c0:c1] for name, a in src.items()}  # u x u aligned chunks each
        for f in factors:
            key = (uy // span[f], ux // span[f])
            if f in filling and filling[f][0] != key:
                flush(f)
            if f not in filling:
                n = side[f]
                filling[f] = (key, {k: np.full((*lead[k], n, n), fill, np.uint8) for k, fill in _OVERVIEW_FILL.items()})
            bufs = filling[f][1]
            # overview indices i with f * i + f // 2 inside this unit's rows / columns
            i0, i1 = -(-(r0 - f // 2) // f), -(-(r1 - f // 2) // f)
            j0, j1 = -(-(c0 - f // 2) // f), -(-(c1 - f // 2) // f)
            if i0 >= i1 or j0 >= j1:
                continue
            ys, xs = slice(f * i0 + f // 2 - r0, None, f), slice(f * j0 + f // 2 - c0, None, f)
            oy, ox = i0 - key[0] * side[f], j0 - key[1] * side[f]
            for name, data in block.items():
                bufs[name][..., oy : oy + i1 - i0, ox : ox + j1 - j0] = data[..., ys, xs]
    for f in list(filling):
        flush(f)
    return factors


def _coarsest_fitting(root: Any, name: str, max_px: int) -> np.ndarray:
    """``name`` from the finest overview no larger than ``max_px`` (subsampled if none is small enough)."""
    arr = root[name]
    if max(arr.shape[-2:]) > max_px and "overviews" in root:
        for f in sorted(int(k) for k in root["overviews"].group_keys()):
            arr = root["overviews"][str(f)][name]
            if max(arr.shape[-2:]) <= max_px:
                break
    data = np.asarray(arr[...])
    if max(data.shape[-2:]) > max_px:
        step = -(-max(data.shape[-2:]) // max_px)
        data = data[..., ::step, ::step]
    return data


@_quiet_zarr
def render_quicklook(path: str | Path, png: str | Path, *, max_px: int = 1024) -> Path:
    """A PNG of the class map (from the finest overview no larger than ``max_px``) with a legend."""
    import zarr
    from PIL import Image, ImageDraw

    path, png = Path(path), Path(png)
    root = zarr.open_group(str(path), mode="r")
    attrs = root.attrs.asdict()
    classes = [(c["name"], c["color"]) for c in attrs["sgma:classes"]]
    data = _coarsest_fitting(root, "class", max_px)
    palette = np.full((256, 4), (255, 255, 255, 0), np.uint8)
    for i, (_, color) in enumerate(classes):
        palette[i] = (*bytes.fromhex(color.lstrip("#")), 255)
    rgba = palette[data]  # (H, W, 4)
    h, w = data.shape
    row_h, legend_w = 18, 150
    canvas = Image.new("RGBA", (w + legend_w, max(h, row_h * (len(classes) + 2))), (255, 255, 255, 255))
    canvas.paste(Image.fromarray(rgba, "RGBA"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + 8, 4), "class", fill=(0, 0, 0, 255))
    for i, (name, color) in enumerate(classes):
        y = 4 + row_h * (i + 1)
        draw.rectangle((w + 8, y, w + 22, y + 12), fill=color, outline=(0, 0, 0, 255))
        draw.text((w + 28, y), name, fill=(0, 0, 0, 255))
    png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(png)
    return png


#: Robustness composite: which channel shows which modality's fusion weight.
DRIVER_CHANNELS = {"s2": 0, "s1": 1, "dem": 2}  # red, green, blue


@_quiet_zarr
def render_drivers(path: str | Path, png: str | Path, *, max_px: int = 1024) -> Path:
    """A PNG of what drove each decision: the robustness maps as RGB (S2 red, S1 green, DEM blue; a pure
    colour = one sensor decided, a mix = shared) beside the confidence (dark = unsure), from overviews."""
    import zarr
    from PIL import Image, ImageDraw

    path, png = Path(path), Path(png)
    root = zarr.open_group(str(path), mode="r")
    modalities = list(root.attrs.asdict()["sgma:modalities"])
    valid = _coarsest_fitting(root, "class", max_px) != CLASS_NODATA  # (h, w)
    rob = _coarsest_fitting(root, "robustness", max_px)  # (M, h, w) uint8, weights x 254 (255 = nodata)
    rob = np.minimum((rob.astype(np.uint16) * 255 + ROBUSTNESS_SCALE // 2) // ROBUSTNESS_SCALE, 255).astype(np.uint8)
    conf = _coarsest_fitting(root, "confidence", max_px)  # (h, w) uint8
    h, w = valid.shape
    outside = (250, 235, 215)  # nodata: a pale beige, told apart from confident (white) pixels
    rgb = np.full((h, w, 3), outside, np.uint8)
    comp = np.zeros((h, w, 3), np.uint8)
    for i, m in enumerate(modalities):
        if m in DRIVER_CHANNELS:
            comp[..., DRIVER_CHANNELS[m]] = rob[i]
    rgb[valid] = comp[valid]
    gray = np.full((h, w, 3), outside, np.uint8)
    gray[valid] = conf[valid][:, None]
    gap, legend_w, row_h = 8, 170, 18
    canvas = Image.new("RGB", (2 * w + gap + legend_w, max(h, row_h * 8)), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    canvas.paste(Image.fromarray(gray, "RGB"), (w + gap, 0))
    draw = ImageDraw.Draw(canvas)
    x = 2 * w + gap + 8
    draw.text((x, 4), "left: decided by", fill=(0, 0, 0))
    for i, (name, color) in enumerate((("S2 optical", "#ff0000"), ("S1 SAR", "#00ff00"), ("DEM", "#0000ff"))):
        y = 4 + row_h * (i + 1)
        draw.rectangle((x, y, x + 14, y + 12), fill=color, outline=(0, 0, 0))
        draw.text((x + 20, y), name, fill=(0, 0, 0))
    y = 4 + row_h * 5
    draw.text((x, y), "right: confidence", fill=(0, 0, 0))
    for j in range(100):  # a 0..1 ramp
        v = int(j * 255 / 99)
        draw.line((x + j, y + row_h, x + j, y + row_h + 10), fill=(v, v, v))
    draw.text((x, y + row_h + 12), "0", fill=(0, 0, 0))
    draw.text((x + 94, y + row_h + 12), "1", fill=(0, 0, 0))
    png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(png)
    return png


def _stac_item(path: Path, layout: StoreLayout, attrs: Mapping[str, Any], footprint: Any) -> dict[str, Any]:
    g = layout.geobox
    ll = footprint if footprint is not None else g.extent.to_crs("EPSG:4326")
    geometry = ll.json if hasattr(ll, "json") else ll
    bbox = list(ll.boundingbox) if hasattr(ll, "boundingbox") else None
    window = attrs.get("sgma:window") or [None, None]
    created = attrs.get("sgma:created", datetime.now(UTC).isoformat())
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
        ],
        "id": path.name,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": None,
            "start_datetime": window[0],
            "end_datetime": window[1],
            "created": created,
            "proj:code": f"EPSG:{g.crs.epsg}" if g.crs.epsg else None,
            "proj:shape": [g.shape.y, g.shape.x],
            "proj:transform": list(g.transform)[:6],
            "sgma:model": attrs.get("sgma:model"),
            "sgma:model_hash": attrs.get("sgma:model_hash"),
            "sgma:config_hash": attrs.get("sgma:config_hash"),
            "sgma:modalities": list(layout.modalities),
            "classification:classes": [
                {"value": i, "name": n, "color_hint": c.lstrip("#").upper()} for i, (n, c) in enumerate(layout.classes)
            ],
        },
        "links": [],
        "assets": {
            "data": {"href": "./", "type": "application/vnd+zarr", "roles": ["data"],
                     "title": f"Zarr v{layout.zarr_format} mosaic"},
            "quicklook": {"href": "./quicklook.png", "type": "image/png", "roles": ["overview"],
                          "title": "class map with legend"},
            "drivers": {"href": "./drivers.png", "type": "image/png", "roles": ["overview"],
                        "title": "robustness RGB (S2 red, S1 green, DEM blue) and confidence"},
        },
    }


@_quiet_zarr
def finish_store(path: str | Path, layout: StoreLayout, *, footprint: Any = None) -> dict[str, Any]:
    """Overviews, consolidated metadata, quicklook PNGs (classes; drivers and confidence) and a STAC Item.

    Args:
        footprint: the AOI as an odc-geo Geometry in EPSG:4326 (default: the grid's extent).
    """
    import zarr

    path = Path(path)
    factors = _write_overviews(path, layout)
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    root.attrs.update({"sgma:overviews": factors, **_multiscales_attrs(layout, factors)})
    attrs = root.attrs.asdict()
    zarr.consolidate_metadata(str(path), zarr_format=layout.zarr_format)
    render_quicklook(path, path / "quicklook.png")
    render_drivers(path, path / "drivers.png")
    item = _stac_item(path, layout, attrs, footprint)
    _atomic_write_json(path / "item.json", item)
    return item


def tile_records_done(manifest: Mapping[str, Mapping[str, Any]], tasks: Sequence[Any]) -> set[str]:
    """Ids of tasks whose committed record is done with a matching content hash (reusable)."""
    return {
        t.tile_id for t in tasks
        if (rec := manifest.get(t.tile_id)) is not None
        and rec.get("status") in DONE_STATUSES and rec.get("content_hash") == t.content_hash
    }


@_quiet_zarr
def label_agreement(path: str | Path, labels: str | Path, *, label_nodata: int = CLASS_NODATA) -> dict[str, Any]:
    """Per-class agreement of a store's ``class`` with a label raster (class ids, ``label_nodata`` = none).

    The labels are read onto each chunk's grid (a plain window when aligned, nearest-neighbour warping
    otherwise), so memory is O(chunk). Labelled pixels the store left unmapped (255) are counted apart.

    Returns:
        ``{"pixels", "unmapped", "overall", "confusion" (K x K, rows = truth), "per_class": {name:
        {"truth", "predicted", "correct", "producer", "user", "iou"}}}`` (ratios None where undefined).
    """
    import zarr
    from odc.geo.geobox import GeoBox, GeoboxTiles

    from sgma_batch.read import _read_band
    from sgma_batch.scenes import AssetRef

    root = zarr.open_group(str(path), mode="r")
    attrs = root.attrs.asdict()
    names = [c["name"] for c in attrs["sgma:classes"]]
    grid = attrs["sgma:grid"]
    k = len(names)
    from affine import Affine

    gbox = GeoBox(tuple(grid["shape"]), Affine(*grid["transform"]), grid["crs"] if grid["epsg"] is None
                  else f"EPSG:{grid['epsg']}")
    tiles = GeoboxTiles(gbox, (grid["tile_px"], grid["tile_px"]))
    ref = AssetRef(str(labels), "label", "label", nodata=float(label_nodata))
    confusion = np.zeros((k, k), np.int64)
    unmapped = 0
    arr = root["class"]
    for iy in range(tiles.shape.y):
        for ix in range(tiles.shape.x):
            ys, xs = tiles.roi[iy, ix]
            pred = np.asarray(arr[ys, xs])
            truth = _read_band(ref, tiles[iy, ix], categorical=True)
            labelled = (truth != label_nodata) & np.isfinite(truth)
            truth = np.where(labelled, truth, 0).astype(np.int64)
            if labelled.any() and truth[labelled].max() >= k:
                raise StoreIncompatibleError(
                    f"label {int(truth[labelled].max())} in {labels} is not one of the store's {k} classes; "
                    "give labels with the model's class ids"
                )
            mapped = labelled & (pred != CLASS_NODATA)
            unmapped += int((labelled & ~mapped).sum())
            confusion += np.bincount(truth[mapped] * k + pred[mapped].astype(np.int64),
                                     minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    truth_n, pred_n = confusion.sum(1), confusion.sum(0)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    total = int(confusion.sum())
    return {
        "pixels": total,
        "unmapped": unmapped,
        "overall": ratio(int(tp.sum()), total),
        "confusion": confusion.tolist(),
        "per_class": {
            name: {"truth": int(truth_n[i]), "predicted": int(pred_n[i]), "correct": int(tp[i]),
                   "producer": ratio(int(tp[i]), int(truth_n[i])), "user": ratio(int(tp[i]), int(pred_n[i])),
                   "iou": ratio(int(tp[i]), int(truth_n[i] + pred_n[i] - tp[i]))}
            for i, name in enumerate(names)
        },
    }
