"""Areas of interest: GeoJSON (Geometry, Feature, FeatureCollection) in CRS84, or a bbox.

Every problem a user can make with an AOI becomes one typed, one-line error from
:mod:`sgma_batch.errors` with its own exit code.

Grid policy for AOIs that span several UTM zones: the whole run uses **one** grid in the UTM zone of
the AOI centroid (north ``326zz`` / south ``327zz``); pixels outside that zone are still mapped, in that
zone's projection (distortion stays small for AOIs a few zones wide). A warning is logged when the AOI
spans more than one zone. AOIs that cross the antimeridian are refused (split them at 180°), because
one UTM grid and one lon/lat bbox cannot describe them without wrapping.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from pyproj import Geod
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from sgma_batch.errors import (
    AOIAntimeridianError,
    AOIEmptyError,
    AOIInvalidGeometryError,
    AOINotGeoJSONError,
    AOIProjectedCoordinatesError,
    AOITooLargeError,
    AOIUnreadableError,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_AREA_KM2 = 10_000.0
_GEOD = Geod(ellps="WGS84")
_CRS84_NAMES = {
    "urn:ogc:def:crs:OGC:1.3:CRS84",
    "urn:ogc:def:crs:OGC::CRS84",
    "urn:ogc:def:crs:EPSG::4326",
    "EPSG:4326",
    "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
}


@dataclass(frozen=True)
class AOI:
    """A validated, polygonal area of interest in CRS84 (lon/lat, WGS84)."""

    geometry: BaseGeometry  # Polygon or MultiPolygon, valid, lon/lat
    area_km2: float  # geodesic area on WGS84
    utm_epsg: int  # the grid CRS of the whole run: UTM zone of the centroid
    bbox: tuple[float, float, float, float]  # (min_lon, min_lat, max_lon, max_lat)
    repaired: bool = False  # True when an invalid input geometry was repaired with make_valid
    utm_zones: tuple[int, ...] = ()  # every UTM zone number the AOI touches (informational)
    source: str = ""

    @property
    def geojson(self) -> dict[str, Any]:
        """The geometry as a GeoJSON mapping (for STAC ``intersects``)."""
        return dict(mapping(self.geometry))


def utm_epsg_for(lon: float, lat: float) -> int:
    """EPSG code of the standard UTM zone at a point (no Norway/Svalbard exceptions)."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return (32600 if lat >= 0 else 32700) + zone


def _zone_number(lon: float) -> int:
    return min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))


def geodesic_area_km2(geometry: BaseGeometry) -> float:
    """Geodesic area of a lon/lat geometry on WGS84 in km²."""
    area_m2, _ = _GEOD.geometry_area_perimeter(shapely.orient_polygons(geometry))
    return abs(area_m2) / 1e6


def _parse_bbox_text(text: str) -> tuple[float, ...] | None:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        return None
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        return None


def _geometry_from_geojson(obj: Any, name: str) -> BaseGeometry:
    if not isinstance(obj, dict) or "type" not in obj:
        raise AOINotGeoJSONError(f"AOI {name} is JSON but not GeoJSON (no 'type'); give a Geometry, Feature or FeatureCollection")
    crs = obj.get("crs")
    if isinstance(crs, dict):
        crs_name = str((crs.get("properties") or {}).get("name", ""))
        if crs_name and crs_name not in _CRS84_NAMES:
            raise AOIProjectedCoordinatesError(
                f"AOI {name} declares CRS {crs_name}; reproject it to lon/lat (EPSG:4326 / CRS84), e.g. "
                f"with `ogr2ogr -t_srs EPSG:4326`"
            )
    kind = obj["type"]
    if kind == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            raise AOINotGeoJSONError(f"AOI {name} is a FeatureCollection without a 'features' list")
        geoms = [_geometry_from_geojson(f, name) for f in feats]
        geoms = [g for g in geoms if not g.is_empty]
        if not geoms:
            raise AOIEmptyError(f"AOI {name} has no features with a geometry; add a Polygon")
        return shapely.union_all(geoms) if all(g.is_valid for g in geoms) else shapely.GeometryCollection(geoms)
    if kind == "Feature":
        geom = obj.get("geometry")
        if geom is None:
            raise AOIEmptyError(f"AOI {name} is a Feature with a null geometry; add a Polygon")
        return _geometry_from_geojson(geom, name)
    try:
        return shape(obj)
    except Exception as exc:  # noqa: BLE001 - shapely raises many kinds for malformed input
        raise AOINotGeoJSONError(f"AOI {name} is not a valid GeoJSON geometry ({exc}); check its 'type' and 'coordinates'") from None


def _check_lonlat(geometry: BaseGeometry, name: str) -> None:
    minx, miny, maxx, maxy = geometry.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise AOIProjectedCoordinatesError(
            f"AOI {name} has coordinates outside lon/lat range (bounds {minx:.6g}, {miny:.6g}, {maxx:.6g}, {maxy:.6g}); "
            f"it looks projected: reproject it to EPSG:4326 (CRS84)"
        )


def _crosses_antimeridian(geometry: BaseGeometry) -> bool:
    """True for rings that jump more than 180° in longitude, or parts that touch both ±180."""
    polys = list(getattr(geometry, "geoms", [geometry]))
    for poly in polys:
        rings = [poly.exterior, *poly.interiors] if poly.geom_type == "Polygon" else []
        for ring in rings:
            xs = [c[0] for c in ring.coords]
            if any(abs(b - a) > 180 for a, b in zip(xs, xs[1:])):
                return True
    minx, _, maxx, _ = geometry.bounds
    return len(polys) > 1 and minx <= -179.999999 and maxx >= 179.999999


def load_aoi(
    source: str | Path | Sequence[float] | dict[str, Any],
    max_area_km2: float | None = DEFAULT_MAX_AREA_KM2,
    *,
    repair: bool = True,
) -> AOI:
    """Load and validate an AOI.

    Args:
        source: a GeoJSON file path, a GeoJSON mapping, a ``(min_lon, min_lat, max_lon, max_lat)`` bbox,
            or a ``"min_lon,min_lat,max_lon,max_lat"`` string.
        max_area_km2: refuse larger AOIs (``None`` disables the guard).
        repair: repair invalid geometries with ``shapely.make_valid`` (logged) instead of refusing.

    Raises:
        AOIError subclasses, each with a one-line message saying what to do.
    """
    if isinstance(source, dict):
        name = "<mapping>"
        geometry = _geometry_from_geojson(source, name)
    elif isinstance(source, (tuple, list)):
        name = "bbox"
        geometry = _bbox_geometry(tuple(source), name)
    else:
        text = str(source)
        parsed = _parse_bbox_text(text) if not Path(text).exists() else None
        if parsed is not None:
            name = "bbox"
            geometry = _bbox_geometry(parsed, name)
        else:
            name = text
            try:
                raw = Path(text).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise AOIUnreadableError(f"cannot read AOI file {text}: {reason}; check the path and permissions") from None
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise AOINotGeoJSONError(
                    f"AOI file {text} is not JSON (line {exc.lineno}: {exc.msg}); give a GeoJSON file in CRS84"
                ) from None
            geometry = _geometry_from_geojson(obj, name)
    return _validate(geometry, name, max_area_km2, repair)


def _bbox_geometry(values: tuple[float, ...], name: str) -> BaseGeometry:
    if len(values) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise AOINotGeoJSONError(f"AOI bbox must be 4 finite numbers min_lon,min_lat,max_lon,max_lat, got {values!r}")
    minx, miny, maxx, maxy = (float(v) for v in values)
    geometry = box(minx, miny, maxx, maxy)
    _check_lonlat(geometry, name)
    if minx > maxx:
        raise AOIAntimeridianError(
            f"AOI bbox min_lon {minx} > max_lon {maxx} crosses the antimeridian; split it at 180° into two runs"
        )
    if miny > maxy:
        raise AOIEmptyError(f"AOI bbox min_lat {miny} > max_lat {maxy}; give min_lon,min_lat,max_lon,max_lat")
    return geometry


def _validate(geometry: BaseGeometry, name: str, max_area_km2: float | None, repair: bool) -> AOI:
    if geometry.is_empty:
        raise AOIEmptyError(f"AOI {name} is empty; give a Polygon or MultiPolygon")
    _check_lonlat(geometry, name)
    if _crosses_antimeridian(geometry):
        raise AOIAntimeridianError(
            f"AOI {name} crosses the antimeridian (±180° longitude); split it at 180° into two AOIs and run each"
        )
    repaired = False
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        fixed = shapely.make_valid(geometry) if repair else None
        polygonal = _polygonal_part(fixed) if fixed is not None else None
        if polygonal is None or polygonal.is_empty or polygonal.area == 0:
            state = "could not be repaired" if repair else "was not repaired (repair disabled)"
            raise AOIInvalidGeometryError(f"AOI {name} geometry is invalid ({reason}) and {state}; fix the polygon rings")
        log.warning("AOI %s geometry was invalid (%s) and was repaired with make_valid", name, reason)
        geometry, repaired = polygonal, True
    polygonal = _polygonal_part(geometry)
    if polygonal is None or polygonal.is_empty or polygonal.area == 0:
        raise AOIEmptyError(
            f"AOI {name} has zero area ({geometry.geom_type}); give a Polygon or MultiPolygon, not points or lines"
        )
    geometry = polygonal
    area = geodesic_area_km2(geometry)
    if max_area_km2 is not None and area > max_area_km2:
        raise AOITooLargeError(
            f"AOI {name} is {area:,.1f} km², above the {max_area_km2:,.1f} km² guard; use a smaller AOI or raise --max-area-km2"
        )
    minx, miny, maxx, maxy = geometry.bounds
    centroid = geometry.centroid
    epsg = utm_epsg_for(centroid.x, centroid.y)
    zones = tuple(range(_zone_number(minx), _zone_number(maxx) + 1))
    if len(zones) > 1:
        log.warning(
            "AOI %s spans UTM zones %s; the whole grid uses the centroid's zone EPSG:%d", name, zones, epsg
        )
    return AOI(
        geometry=geometry,
        area_km2=area,
        utm_epsg=epsg,
        bbox=(minx, miny, maxx, maxy),
        repaired=repaired,
        utm_zones=zones,
        source=name,
    )


def _polygonal_part(geometry: BaseGeometry | None) -> BaseGeometry | None:
    """The union of the polygonal parts of a geometry (None when it has none)."""
    if geometry is None:
        return None
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return None
    return shapely.union_all(parts)
