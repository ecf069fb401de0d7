"""The store layout: variables, nodata, georeferencing attributes, the template; create, open, check.

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
* optional ``probability`` (class, y, x) float16, NaN = nodata;
* ``acquired`` (modality, y, x) uint16, the acquisition date (days since 1970-01-01, CF ``units``) of the
  scene each pixel of a modality came from, 0 = none (the DEM and absent modalities): a run ranks scenes
  once for its whole AOI, so this changes where a scene's footprint or valid data ends, never at a tile
  border. Stores made before it existed have none and are written without it.

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
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox

from sgma_batch import __version__
from sgma_batch.errors import StoreIncompatibleError, StoreUnwritableError

log = logging.getLogger(__name__)

CLASS_NODATA = 255
#: Nodata of every map variable: its fill value on disk (Zarr ``fill_value``, v2 and v3), CF ``_FillValue``
#: and GDAL's nodata. The variables' docs are in the module docstring.
NODATA: Mapping[str, float] = MappingProxyType(
    {"class": CLASS_NODATA, "confidence": 0, "modality_mask": 0, "robustness": 255, "probability": float("nan"),
     "acquired": 0}
)
#: Robustness is stored as round(weight x 254): 255 stays free for nodata and a weight of 1 stays exact.
ROBUSTNESS_SCALE = 254
#: Bumped when the on-disk encoding changes (fill values, scales); a store of another version is refused.
LAYOUT_VERSION = 2
MANIFEST_DIR = "manifest"


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
    acquired: np.ndarray | None = None  # (M, H, W) uint16 days since 1970-01-01 of each pixel's scene, 0 none


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


@dataclass(frozen=True)
class _Var:
    """One array of the store template: a map variable (``fill``, chunked by tile) or a coordinate (``values``)."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    attrs: Mapping[str, Any]
    chunks: tuple[int, ...] | None = None  # None: one chunk
    fill: Any = None  # on-disk fill value = nodata (map variables)
    scale: float | None = None  # CF scale_factor (robustness)
    values: np.ndarray | None = None  # coordinate values, written with the template


def _template_vars(layout: StoreLayout) -> dict[str, _Var]:
    """Every array of a store of ``layout``: the map variables (empty) and their coordinates.

    The CF/GeoZarr conventions of each variable live here once; :func:`_write_template` writes them.
    """
    from pyproj import CRS as ProjCRS

    g = layout.geobox
    t = layout.tile_px
    h, w = g.shape.yx
    m, k = len(layout.modalities), len(layout.classes)
    names = [c[0] for c in layout.classes]
    geo = {**_geozarr_attrs(g), "grid_mapping": "spatial_ref"}
    x_attrs, y_attrs = _xy_attrs(g)
    # the coordinates odc-geo gives a GeoBox (odc.geo.xr.xr_coords), with the CF attributes on top
    crs_attrs = ProjCRS.from_user_input(g.crs.wkt).to_cf()
    crs_attrs["GeoTransform"] = " ".join(f"{v:.24f}".rstrip("0").rstrip(".") for v in g.transform.to_gdal())
    crs = g.crs
    coord_ref = str(crs.epsg and f"EPSG:{crs.epsg}" or crs.wkt)
    xs, ys = g.coordinates["x"], g.coordinates["y"]
    out: dict[str, _Var] = {
        "y": _Var(("y",), (h,), "float64", {"units": ys.units, "resolution": ys.resolution, "crs": coord_ref,
                                             **y_attrs}, values=np.asarray(ys.values, "float64")),
        "x": _Var(("x",), (w,), "float64", {"units": xs.units, "resolution": xs.resolution, "crs": coord_ref,
                                             **x_attrs}, values=np.asarray(xs.values, "float64")),
        "spatial_ref": _Var((), (), "int32", {"spatial_ref": crs_attrs.get("crs_wkt") or crs.wkt, **crs_attrs},
                            values=np.asarray(crs.epsg or 0, "int32")),
        "modality": _Var(("modality",), (m,), "str", {}, values=np.array(layout.modalities, dtype=object)),
        "class": _Var(("y", "x"), (h, w), "uint8", {
            "long_name": "land-cover class id", "flag_values": list(range(k)), "flag_meanings": " ".join(names),
            "flag_colors": [c[1] for c in layout.classes], **geo}, (t, t), NODATA["class"]),
        "confidence": _Var(("y", "x"), (h, w), "uint8", {
            "long_name": "max blended class probability x 255", "valid_range": [1, 255], **geo}, (t, t),
            NODATA["confidence"]),
        "modality_mask": _Var(("y", "x"), (h, w), "uint8", {
            "long_name": "bit m set where modality m was present", "flag_masks": [1 << i for i in range(m)],
            "flag_meanings": " ".join(layout.modalities), **geo}, (t, t), NODATA["modality_mask"]),
        "robustness": _Var(("modality", "y", "x"), (m, h, w), "uint8", {
            "long_name": "SGF fusion weight per modality (robustness map)", "valid_range": [0, ROBUSTNESS_SCALE],
            **geo}, (m, t, t), NODATA["robustness"], scale=1.0 / ROBUSTNESS_SCALE),
        # one mosaic order per run: where this changes, a scene's footprint or valid data ended, not a tile
        "acquired": _Var(("modality", "y", "x"), (m, h, w), "uint16", {
            "long_name": "acquisition date of the scene each pixel of a modality came from",
            "units": "days since 1970-01-01", "calendar": "proleptic_gregorian", **geo}, (m, t, t),
            NODATA["acquired"]),
    }
    if layout.write_probability:
        out["class_name"] = _Var(("class_name",), (k,), "str", {}, values=np.array(names, dtype=object))
        out["probability"] = _Var(("class_name", "y", "x"), (k, h, w), "float16", {
            "long_name": "blended class probability", **geo}, (k, t, t), NODATA["probability"])
    return out


def _write_template(store: Any, layout: StoreLayout, attrs: Mapping[str, Any], *, group: str | None = None,
                    only: Sequence[str] | None = None) -> None:
    """Create the store template with zarr: root attributes, coordinates, and the map variables (``only``
    these, with the coordinates they use) unwritten, so every chunk reads as nodata until a tile writes it.

    The metadata is what xarray's ``to_zarr(compute=False)`` writes for the same arrays (CF ``_FillValue``,
    ``scale_factor``, ``coordinates``, dimension names; tests/unit/test_store_template.py compares the two),
    without importing xarray, pandas and dask on the way to the first tile.
    """
    import zarr

    fmt = layout.zarr_format
    arrays = _template_vars(layout)
    if only is not None:
        used = {d for name in only for d in arrays[name].dims} | {"spatial_ref"}
        arrays = {n: v for n, v in arrays.items() if n in only or n in used}
    root = zarr.open_group(store, mode="w", path=group or "", zarr_format=fmt, attributes=dict(attrs))
    nan64 = "AAAAAAAA+H8="  # xarray's v3 _FillValue attribute for a float NaN (base64 of a float64 NaN)
    for name, v in arrays.items():
        attrs_v = dict(v.attrs)
        if v.values is None:  # a map variable
            attrs_v["coordinates"] = "spatial_ref"
            if v.scale is not None:
                attrs_v["scale_factor"] = v.scale
            fill = np.dtype(v.dtype).type(v.fill)
            if fmt == 3:
                attrs_v["_FillValue"] = nan64 if np.isnan(fill) else int(fill)
        elif v.dtype == "float64":
            fill = np.float64("nan")
            if fmt == 3:
                attrs_v["_FillValue"] = nan64
        else:
            fill = None
        dtype: Any = str if v.dtype == "str" else v.dtype  # variable-length UTF-8 (v2: the vlen-utf8 filter)
        kw: dict[str, Any] = {"dimension_names": list(v.dims)} if fmt == 3 else {}
        if fmt == 2:
            attrs_v["_ARRAY_DIMENSIONS"] = list(v.dims)
        arr = root.create_array(name, shape=v.shape, chunks=v.chunks or v.shape, dtype=dtype,
                                fill_value=fill if fill is not None else (None if fmt == 2 else 0 if v.dtype != "str"
                                                                          else ""),
                                attributes=attrs_v, **kw)
        if v.values is not None:
            arr[...] = v.values


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


def _check_compatible(path: Path | str, attrs: Mapping[str, Any], layout: StoreLayout) -> None:
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

    ``path`` is a local path or an object-storage URL (:mod:`sgma_batch.storage`).

    Returns:
        True when the store was created, False when an existing compatible store is reused (its root
        attributes are then refreshed with the new provenance).
    """
    import zarr

    from sgma_batch import storage

    path = storage.user_location(path)  # an unsupported scheme:// is a usage error (exit 2), not a folder
    attrs = _root_attrs(layout, provenance)
    try:
        with storage.as_oserror(path):
            present = storage.has_children(path)
    except OSError as exc:
        raise StoreUnwritableError(f"cannot list {path} ({exc.strerror}); check the URL and credentials") from None
    if present:
        try:
            group = zarr.open_group(storage.zarr_store(path), mode="r+")
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
    if isinstance(path, Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnwritableError(f"cannot create {path.parent} ({exc.strerror}); choose a writable --out") from None
    try:
        with storage.as_oserror(path):
            _write_template(storage.zarr_store(path), layout, attrs)
    except OSError as exc:
        if isinstance(path, Path):
            raise
        raise StoreUnwritableError(f"cannot write {path} ({exc.strerror}); check the bucket and credentials") from None
    if isinstance(path, Path):  # object storage has no folders: manifest/ appears with its first record
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
    import odc.geo.xr  # noqa: F401 - registers the ``.odc`` accessor
    import xarray as xr

    with warnings.catch_warnings():  # a store still being written has no consolidated metadata yet
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated", category=RuntimeWarning)
        from sgma_batch import storage

        store = storage.zarr_store(storage.location(path), read_only=True)  # a path or an s3:// gs:// az:// URL
        return xr.open_zarr(store, group=group, decode_coords="all", mask_and_scale=False)


@_quiet_zarr
def check_store(path: str | Path, layout: StoreLayout) -> bool:
    """Read-only: False when ``path`` holds no store yet, True when it holds a compatible one.

    Raises:
        StoreIncompatibleError: as :func:`open_or_create_store` would, without changing anything.
    """
    import zarr

    from sgma_batch import storage

    path = storage.user_location(path)
    try:
        with storage.as_oserror(path):
            if not storage.has_children(path):
                return False
    except OSError as exc:
        raise StoreUnwritableError(f"cannot list {path} ({exc.strerror}); check the URL and credentials") from None
    try:
        group = zarr.open_group(storage.zarr_store(path, read_only=True), mode="r", use_consolidated=False)
    except Exception:  # noqa: BLE001 - any failure to open means "not a store we can use"
        raise StoreIncompatibleError(f"{path} exists and is not a readable Zarr store; pass a new --out path") from None
    if group.metadata.zarr_format != layout.zarr_format:
        raise StoreIncompatibleError(
            f"store {path} is Zarr v{group.metadata.zarr_format}, not v{layout.zarr_format}; "
            f"pass --zarr-format {group.metadata.zarr_format} or a new --out"
        )
    _check_compatible(path, group.attrs.asdict(), layout)
    return True
