"""Areas of interest: GeoJSON (Geometry, Feature, FeatureCollection) in CRS84, or a bbox.

Every problem a user can make with an AOI becomes one typed, one-line error from
:mod:`sgma_batch.errors` with its own exit code.

Grid policy for AOIs that span several UTM zones: the whole run uses **one** grid in the UTM zone of
the AOI centroid (north ``326zz`` / south ``327zz``); pixels outside that zone are still mapped, in that
zone's projection (distortion stays small for AOIs a few zones wide). A warning is logged when the AOI
spans more than one zone.

Antimeridian: an AOI that crosses ±180° longitude may be given as a ring whose longitudes run past 180
(``179.5 .. 180.5``), as a ring that jumps from ``179.5`` to ``-179.5`` (an edge longer than 180° is read as
crossing, as RFC 7946 tools do), as a MultiPolygon already split at 180°, or as a bbox with
``min_lon > max_lon``. It becomes a MultiPolygon split at ±180° (RFC 7946 §3.1.9), so every STAC search
(an ``intersects`` MultiPolygon) finds the scenes on both sides; its centroid, UTM zones and bbox are taken
on the continuous longitude range (the bbox then has ``min_lon > max_lon``). A ring that encircles a pole
is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import shapely
from pyproj import Geod
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
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
    bbox: tuple[float, float, float, float]  # (west, south, east, north); west > east across the antimeridian
    repaired: bool = False  # True when an invalid input geometry was repaired with make_valid
    utm_zones: tuple[int, ...] = ()  # every UTM zone number the AOI touches, west to east (informational)
    source: str = ""

    @property
    def geojson(self) -> dict[str, Any]:
        """The geometry as a GeoJSON mapping (for STAC ``intersects``)."""
        return dict(mapping(self.geometry))


def utm_epsg_for(lon: float, lat: float) -> int:
    """EPSG code of the standard UTM zone at a point (no Norway/Svalbard exceptions)."""
    return (32600 if lat >= 0 else 32700) + _zone_number(lon)


def utm_epsg_of(geometry: BaseGeometry) -> int:
    """The one UTM rule of sgma-batch: the zone of the centroid of a lon/lat geometry, taken on its continuous
    form, so an AOI split at the antimeridian gets zone 60 or 1 (its own), not the zone of lon 0 (31)."""
    centroid = _continuous(geometry).centroid
    return utm_epsg_for(centroid.x, centroid.y)


def _zone_number(lon: float) -> int:
    """UTM zone number of a longitude in any 360° frame (181° is zone 1)."""
    return math.floor(((lon + 180.0) % 360.0) / 6.0) % 60 + 1


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
        for g in geoms:
            _check_lonlat(g, name)
        geoms = [_unwrap(g, name) for g in geoms]  # a feature across 180° must not be merged as a 359° band
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
    """Refuse coordinates that cannot be lon/lat. Longitudes up to ±360° are an unwrapped ring (e.g. 179..181)."""
    minx, miny, maxx, maxy = geometry.bounds
    if minx < -360 or maxx > 360 or maxx - minx > 360 or miny < -90 or maxy > 90:
        raise AOIProjectedCoordinatesError(
            f"AOI {name} has coordinates outside lon/lat range (bounds {minx:.6g}, {miny:.6g}, {maxx:.6g}, {maxy:.6g}); "
            f"it looks projected: reproject it to EPSG:4326 (CRS84)"
        )


# -- antimeridian ---------------------------------------------------------------------------------
_WORLD = box(-180.0, -90.0, 180.0, 90.0)
_EAST_OF_180 = box(180.0, -90.0, 540.0, 90.0)


def _unwrap_ring(coords: Sequence[Sequence[float]], name: str) -> list[tuple[float, float]]:
    """A ring with continuous longitudes: a step of more than 180° is read as crossing the antimeridian."""
    x0, y0 = float(coords[0][0]), float(coords[0][1])
    out = [(x0, y0)]
    prev = x0
    for c in coords[1:]:
        x, y = float(c[0]), float(c[1])
        step = x - prev
        if step > 180.0:
            step -= 360.0
        elif step < -180.0:
            step += 360.0
        out.append((out[-1][0] + step, y))
        prev = x
    if abs(out[-1][0] - out[0][0]) > 1e-9:
        raise AOIAntimeridianError(
            f"AOI {name} has a ring that goes all the way around the globe (it encircles a pole); "
            "give the polar area as a polygon that does not wrap around the pole"
        )
    return out


def _unwrap_polygon(poly: Polygon, name: str) -> Polygon:
    """The polygon on one continuous longitude range whose west end lies in [-180, 180)."""
    shell = _unwrap_ring(poly.exterior.coords, name)
    west = min(x for x, _ in shell)
    shift = -360.0 * math.floor((west + 180.0) / 360.0)
    shell = [(x + shift, y) for x, y in shell]
    centre = 0.5 * (min(x for x, _ in shell) + max(x for x, _ in shell))
    holes = []
    for ring in poly.interiors:
        hole = _unwrap_ring(ring.coords, name)
        mid = 0.5 * (min(x for x, _ in hole) + max(x for x, _ in hole))
        k = 360.0 * round((centre - mid) / 360.0)  # the hole goes where its shell is
        holes.append([(x + k, y) for x, y in hole])
    return Polygon(shell, holes)


def _unwrap(geometry: BaseGeometry, name: str) -> BaseGeometry:
    """Each polygon on a continuous longitude range; the input itself when nothing had to move."""
    if geometry.geom_type == "Polygon":
        unwrapped = _unwrap_polygon(geometry, name)  # type: ignore[arg-type]
        return geometry if unwrapped.equals_exact(geometry, 0.0) else unwrapped
    if geometry.geom_type in ("MultiPolygon", "GeometryCollection"):
        parts = [_unwrap(g, name) for g in geometry.geoms]  # type: ignore[attr-defined]
        if all(a is b for a, b in zip(parts, geometry.geoms, strict=True)):  # type: ignore[attr-defined]
            return geometry
        if all(p.geom_type == "Polygon" for p in parts):
            return MultiPolygon(parts)
        return shapely.GeometryCollection(parts)
    return geometry


def split_antimeridian(geometry: BaseGeometry) -> BaseGeometry:
    """A lon/lat polygonal geometry cut at ±180° into parts within [-180, 180] (RFC 7946 §3.1.9).

    Rings may run past ±180 or jump across it; a geometry already inside [-180, 180] without such jumps is
    returned unchanged (the same object).
    """
    unwrapped = _unwrap(geometry, "geometry")
    minx, _, maxx, _ = unwrapped.bounds
    if unwrapped is geometry and minx >= -180.0 and maxx <= 180.0:
        return geometry
    polys = [g for g in getattr(unwrapped, "geoms", [unwrapped]) if g.geom_type in ("Polygon", "MultiPolygon")]
    parts: list[BaseGeometry] = []
    for poly in polys:
        parts.append(poly.intersection(_WORLD))
        if poly.bounds[2] > 180.0:
            parts.append(translate(poly.intersection(_EAST_OF_180), xoff=-360.0))
    pieces = [p for part in parts for p in getattr(part, "geoms", [part]) if p.geom_type == "Polygon" and p.area > 0]
    return shapely.union_all(pieces)  # parts that overlap once brought back to [-180, 180] merge


def _continuous(geometry: BaseGeometry) -> BaseGeometry:
    """The parts moved by 360° where needed so the geometry spans one continuous longitude range
    (cut at the widest empty meridian gap): for the centroid, UTM zones and bbox of a split AOI."""
    parts = list(getattr(geometry, "geoms", [geometry]))
    spans: list[list[float]] = []
    for west, east in sorted((p.bounds[0], p.bounds[2]) for p in parts):
        if spans and west <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], east)
        else:
            spans.append([west, east])
    around = spans[0][0] + 360.0 - spans[-1][1]  # the gap across ±180
    gaps = [(b[0] - a[1], b[0]) for a, b in pairwise(spans)]
    widest, start = max(gaps, default=(-1.0, 0.0))
    if widest <= around:
        return geometry
    return shapely.union_all([translate(p, xoff=360.0) if p.bounds[0] < start else p for p in parts])


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
            from sgma_batch.inputs import parse_json_text, read_text_bounded

            # bounded: regular files only (not /dev/zero or a FIFO), at most 64 MiB, nesting at most 16
            raw = read_text_bounded(text, what="AOI file", error=AOIUnreadableError,
                                    hint="check the path and permissions")
            obj = parse_json_text(raw, what="AOI file", name=text, error=AOINotGeoJSONError, max_depth=16,
                                  hint="give a GeoJSON file in CRS84")
            geometry = _geometry_from_geojson(obj, name)
    return _validate(geometry, name, max_area_km2, repair)


def _bbox_geometry(values: tuple[float, ...], name: str) -> BaseGeometry:
    if len(values) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise AOINotGeoJSONError(f"AOI bbox must be 4 finite numbers min_lon,min_lat,max_lon,max_lat, got {values!r}")
    minx, miny, maxx, maxy = (float(v) for v in values)
    _check_lonlat(box(minx, miny, maxx, maxy), name)
    if miny > maxy:
        raise AOIEmptyError(f"AOI bbox min_lat {miny} > max_lat {maxy}; give min_lon,min_lat,max_lon,max_lat")
    if minx > maxx:  # west > east: the bbox crosses the antimeridian (RFC 7946 §5.2)
        if not (-180.0 <= maxx and minx <= 180.0):
            raise AOIProjectedCoordinatesError(
                f"AOI bbox min_lon {minx} > max_lon {maxx} outside -180..180; give min_lon,min_lat,max_lon,max_lat"
            )
        return box(minx, miny, maxx + 360.0, maxy)
    return box(minx, miny, maxx, maxy)


def _validate(geometry: BaseGeometry, name: str, max_area_km2: float | None, repair: bool) -> AOI:
    if geometry.is_empty:
        raise AOIEmptyError(f"AOI {name} is empty; give a Polygon or MultiPolygon")
    _check_lonlat(geometry, name)
    geometry = _unwrap(geometry, name)  # rings on continuous longitudes, so validity is judged on the real shape
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
    geometry = split_antimeridian(polygonal)
    area = geodesic_area_km2(geometry)
    if max_area_km2 is not None and area > max_area_km2:
        raise AOITooLargeError(
            f"AOI {name} is {area:,.1f} km², above the {max_area_km2:,.1f} km² guard; use a smaller AOI or raise --max-area-km2"
        )
    continuous = _continuous(geometry)
    minx, miny, maxx, maxy = continuous.bounds
    centroid = continuous.centroid
    epsg = utm_epsg_for(centroid.x, centroid.y)
    # zone borders lie on whole degrees: sample each degree, and the east edge just inside (a box ending
    # on a border does not reach the next zone)
    zones = tuple(dict.fromkeys(_zone_number(x) for x in (*range(math.floor(minx), math.ceil(maxx)), maxx - 1e-9)))
    if maxx > 180.0:
        maxx -= 360.0  # RFC 7946 bbox across the antimeridian: west > east
        log.info("AOI %s crosses the antimeridian; searched as %d parts split at ±180°", name,
                 len(getattr(geometry, "geoms", [geometry])))
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
