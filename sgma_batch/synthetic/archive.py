"""Generate the synthetic scene archive: COGs plus a static STAC catalogue, tile by tile.

Memory is O(tile): every raster is produced in 512-pixel blocks that are independent of each other
(smooth fields are functions of map coordinates, per-pixel noise comes from a generator seeded by
(seed, date, sensor, block)). Output bytes depend only on the parameters.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo import geom
from odc.geo.geobox import GeoBox, GeoboxTiles

from sgma_batch.aoi import split_antimeridian
from sgma_batch.errors import StoreUnwritableError, UsageError
from sgma_batch.synthetic import stac
from sgma_batch.synthetic.cog import BLOCK_PX, CogWriter
from sgma_batch.synthetic.landscape import LABEL_NODATA, ground
from sgma_batch.synthetic.noise import field_key
from sgma_batch.synthetic.sensors import (
    S1_LOOKS,
    S1_NODATA,
    S2_NODATA,
    SCL_CIRRUS,
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MEDIUM,
    SCL_NODATA,
    SCL_NOT_VEGETATED,
    SCL_SHADOW,
    SCL_VEGETATION,
    SCL_WATER,
    HalfPlane,
    OpticalPass,
    RadarPass,
    s1_window,
    s2_window,
)

log = logging.getLogger(__name__)

CLASSES: tuple[tuple[str, str], ...] = (
    ("water", "#1f78b4"),
    ("trees", "#33a02c"),
    ("grass", "#b2df8a"),
    ("crops", "#ffd92f"),
    ("built_up", "#e31a1c"),
    ("bare", "#bfa27a"),
    ("wetland", "#6a3d9a"),
)
CLASSES_DESCRIPTION = (
    "0 water, 1 trees, 2 grass, 3 crops, 4 built_up, 5 bare, 6 wetland; 255 nodata. Built-up and bare share "
    "one optical spectrum (SAR separates them), crops and grass share one backscatter (red-edge/NIR "
    "separate them), water and wetland are optically alike (SAR and the DEM separate them)."
)

GENERATOR_VERSION = 1
DEFAULT_ORIGIN_UTM = (499_980.0, 5_300_040.0)  # upper-left corner (x, y), EPSG:32633 ~ 47.8N 15.0E
DEFAULT_START = date(2024, 5, 3)
S2_REVISIT_DAYS = 5
DEM_RES_M = 30.0

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Acquisition:
    """One date of the archive: a Sentinel-2 pass and, unless missing, a Sentinel-1 pass."""

    index: int
    s2_time: datetime
    optical: OpticalPass
    s1_time: datetime | None
    radar: RadarPass | None
    orbit_state: str


@dataclass(frozen=True)
class ArchiveInfo:
    """Where a generated archive lies and what grid it covers.

    Attributes:
        root: the archive folder.
        catalog_path: its static STAC ``catalog.json``.
        label_path: the label COG (uint8 class ids, 255 nodata).
        epsg: the UTM EPSG code of every raster.
        geobox: the 10 m grid of the S2/S1/label rasters.
        seed: the generation seed.
        dates: the Sentinel-2 acquisition times.
    """

    root: Path
    catalog_path: Path
    label_path: Path
    epsg: int
    geobox: GeoBox
    seed: int
    dates: tuple[datetime, ...] = field(default=())

    @property
    def bounds(self):  # -> odc.geo.geom.BoundingBox (left, bottom, right, top) in the UTM CRS
        """The extent in the archive's UTM CRS (a BoundingBox that carries its CRS)."""
        return self.geobox.boundingbox


def _resolve_dates(dates: int | Sequence[date | datetime | str]) -> list[date]:
    if isinstance(dates, int):
        if dates < 1:
            raise UsageError("--dates must be at least 1")
        return [DEFAULT_START + timedelta(days=S2_REVISIT_DAYS * i) for i in range(dates)]
    out: list[date] = []
    for d in dates:
        if isinstance(d, datetime):
            out.append(d.date())
        elif isinstance(d, date):
            out.append(d)
        else:
            out.append(date.fromisoformat(str(d)[:10]))
    if not out:
        raise UsageError("give at least one date")
    if out[0] < date(2022, 1, 25):
        raise UsageError("synthetic dates must be on or after 2022-01-25 (processing baseline 05.10)")
    return sorted(set(out))


def _edge(geobox: GeoBox, rng: np.random.Generator, angle_deg: float, keep: float, east: bool) -> HalfPlane:
    """A straight swath edge tilted ``angle_deg`` from north; ``keep`` of the width stays valid."""
    b = geobox.boundingbox
    phi = math.radians(angle_deg)
    nx, ny = math.cos(phi), math.sin(phi)
    x_cut = b.left + (keep if east else 1.0 - keep) * (b.right - b.left)
    y_mid = 0.5 * (b.bottom + b.top)
    c = nx * x_cut + ny * y_mid
    return HalfPlane(nx, ny, c) if east else HalfPlane(-nx, -ny, -c)


def plan_acquisitions(seed: int, days: Sequence[date], geobox: GeoBox) -> list[Acquisition]:
    """The weather and geometry of every date, from the seed alone.

    Pattern (repeating every four dates): a clear date, a date on the S2 orbit edge, a date without
    Sentinel-1, a cloudy date whose Sentinel-1 pass has a swath edge.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A7E]))
    base_cover = (0.03, 0.25, 0.12, 0.6)
    plans = []
    for i, day in enumerate(days):
        phase = i % 4
        cover = float(np.clip(base_cover[phase] * rng.uniform(0.7, 1.3), 0.0, 0.95))
        shift = (float(rng.uniform(200, 500)), float(rng.uniform(100, 400)))  # sun from the south-east
        growth = float(np.clip(0.15 + 0.7 * i / max(len(days) - 1, 1) + rng.uniform(-0.05, 0.05), 0, 1))
        s2_edge = _edge(geobox, rng, float(rng.uniform(8, 16)), float(rng.uniform(0.6, 0.8)), east=True) \
            if phase == 1 else None
        s2_time = datetime.combine(day, time(10, 0, 31), tzinfo=UTC) + timedelta(
            seconds=int(rng.integers(0, 900)))
        optical = OpticalPass(
            key=field_key(seed, f"clouds-{day.isoformat()}"), cloud_fraction=cover,
            shadow_shift_m=shift, growth=growth, edge=s2_edge,
        )
        orbit = "descending" if i % 2 == 0 else "ascending"
        radar = None
        s1_time = None
        if phase != 2:
            s1_edge = _edge(geobox, rng, float(rng.uniform(-14, -8)), float(rng.uniform(0.6, 0.8)), east=False) \
                if phase == 3 else None
            radar = RadarPass(
                key=field_key(seed, f"radar-{day.isoformat()}"), wind_db=float(rng.uniform(0.0, 4.0)),
                soil_moisture_db=float(rng.uniform(-1.0, 1.0)), edge=s1_edge,
            )
            # Descending passes in the morning of the same day, ascending ones the evening before: every
            # S1 scene falls within the calendar days of the S2 dates.
            if orbit == "descending":
                s1_time = datetime.combine(day, time(5, 12, 4), tzinfo=UTC)
            else:
                s1_time = datetime.combine(day - timedelta(days=1), time(16, 58, 40), tzinfo=UTC)
        else:
            rng.uniform(size=4)  # keep the stream aligned whatever the pattern
        plans.append(Acquisition(i, s2_time, optical, s1_time, radar, orbit))
    return plans


def make_geobox(origin_utm: tuple[float, float], size_km: tuple[float, float], epsg: int, res_m: float = 10.0) -> GeoBox:
    """The 10 m grid: upper-left corner snapped to whole multiples of 30 m (so the DEM grid aligns)."""
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise UsageError(f"EPSG:{epsg} is not a WGS 84 / UTM zone; use 326xx (north) or 327xx (south)")
    width_km, height_km = size_km
    if width_km <= 0 or height_km <= 0:
        raise UsageError("--size-km must be positive")
    x0 = math.floor(origin_utm[0] / DEM_RES_M) * DEM_RES_M
    y0 = math.ceil(origin_utm[1] / DEM_RES_M) * DEM_RES_M
    nx = max(1, round(width_km * 1000.0 / res_m))
    ny = max(1, round(height_km * 1000.0 / res_m))
    return GeoBox.from_bbox((x0, y0 - ny * res_m, x0 + nx * res_m, y0), f"epsg:{epsg}", resolution=res_m)


def _centres(gbox: GeoBox) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x along columns, y along rows) of a GeoBox (north-up)."""
    a = gbox.affine
    ny, nx = gbox.shape
    x = a.c + a.a * (np.arange(nx) + 0.5)
    y = a.f + a.e * (np.arange(ny) + 0.5)
    return x, y


def _footprint(geobox: GeoBox, edge: HalfPlane | None) -> tuple[dict[str, Any], list[float]]:
    """CRS84 footprint of the valid part of a scene and its bbox, rounded for stable bytes."""
    b = geobox.boundingbox
    poly = geom.box(b.left, b.bottom, b.right, b.top, geobox.crs)
    if edge is not None:
        # The valid half-plane nx*x + ny*y <= c, clipped by a big box around the extent.
        span = 10 * max(b.right - b.left, b.top - b.bottom)
        cx, cy = 0.5 * (b.left + b.right), 0.5 * (b.bottom + b.top)
        t = (edge.c - edge.nx * cx - edge.ny * cy)
        px, py = cx + edge.nx * t, cy + edge.ny * t  # a point on the edge line
        dx, dy = -edge.ny, edge.nx  # along the line
        half = geom.polygon(
            [
                (px + dx * span, py + dy * span),
                (px - dx * span, py - dy * span),
                (px - dx * span - edge.nx * span, py - dy * span - edge.ny * span),
                (px + dx * span - edge.nx * span, py + dy * span - edge.ny * span),
                (px + dx * span, py + dy * span),
            ],
            geobox.crs,
        )
        poly = poly & half
    # An extent across 180° comes back as a ring that jumps 360°: cut it there, as real catalogues do.
    shape = split_antimeridian(poly.to_crs("epsg:4326", resolution=math.inf).geom)
    rings = [[[round(float(x), 7), round(float(y), 7)] for x, y in part.exterior.coords]
             for part in getattr(shape, "geoms", [shape])]
    xs = [c[0] for ring in rings for c in ring]
    ys = [c[1] for ring in rings for c in ring]
    bbox = [min(xs), min(ys), max(xs), max(ys)]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": rings}, bbox
    return {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}, bbox


def _file_fields(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"file:checksum": "1220" + hashlib.sha256(data).hexdigest(), "file:size": len(data)}


def generate_archive(
    out_dir: str | Path,
    *,
    seed: int = 0,
    size_km: tuple[float, float] = (5.0, 5.0),
    origin_utm: tuple[float, float] = DEFAULT_ORIGIN_UTM,
    epsg: int = 32633,
    dates: int | Sequence[date | datetime | str] = 4,
    progress: Progress | None = None,
) -> ArchiveInfo:
    """Write a deterministic synthetic S2 L2A / S1 RTC / DEM / label archive with a static STAC catalogue.

    Args:
        out_dir: target folder (created; must be empty if it exists).
        seed: world and weather seed; the same parameters give the same bytes.
        size_km: (width, height) of the extent in kilometres.
        origin_utm: (x, y) of the upper-left corner in the UTM CRS, snapped to multiples of 30 m.
        epsg: a WGS 84 / UTM EPSG code.
        dates: number of Sentinel-2 dates (5 days apart from 2024-05-03) or explicit dates.
        progress: called with (blocks done, blocks total) while rasters are written.

    Returns:
        The archive's :class:`ArchiveInfo`.
    """
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise StoreUnwritableError(f"{root} is not empty; give a new or empty folder for the synthetic archive")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnwritableError(f"cannot create {root}: {exc.strerror}; choose a writable folder") from None
    geobox = make_geobox(origin_utm, size_km, epsg)
    days = _resolve_dates(dates)
    plans = plan_acquisitions(seed, days, geobox)
    ids = _item_ids(seed, plans, geobox)

    tiles = GeoboxTiles(geobox, (BLOCK_PX, BLOCK_PX))
    dem_box = _dem_geobox(geobox)
    dem_tiles = GeoboxTiles(dem_box, (BLOCK_PX, BLOCK_PX))
    total = tiles.shape[0] * tiles.shape[1] + dem_tiles.shape[0] * dem_tiles.shape[1]
    done = 0
    log.info("synthetic archive %s: %s px, %d dates, seed %d", root, geobox.shape, len(plans), seed)

    s2_counts = [np.zeros(256, dtype=np.int64) for _ in plans]
    s1_valid = [0 for _ in plans]
    with ExitStack() as stack:
        label_path = root / stac.LABEL_COLLECTION / ids["label"] / stac.LABEL_FILE
        label_path.parent.mkdir(parents=True)
        label_w = stack.enter_context(CogWriter(label_path, geobox, "uint8", LABEL_NODATA, "nearest"))
        s2_w: list[list[CogWriter]] = []
        s1_w: list[list[CogWriter] | None] = []
        for acq in plans:
            folder = root / stac.S2_COLLECTION / ids["s2"][acq.index]
            folder.mkdir(parents=True)
            writers = [stack.enter_context(CogWriter(folder / f, geobox, "uint16", S2_NODATA, "average"))
                       for _, f, *_ in stac.S2_ASSETS]
            writers.append(stack.enter_context(CogWriter(folder / stac.S2_SCL_FILE, geobox, "uint8",
                                                         SCL_NODATA, "nearest")))
            s2_w.append(writers)
            if acq.radar is None:
                s1_w.append(None)
                continue
            folder = root / stac.S1_COLLECTION / ids["s1"][acq.index]
            folder.mkdir(parents=True)
            s1_w.append([stack.enter_context(CogWriter(folder / stac.S1_FILES[b], geobox, "float32",
                                                       S1_NODATA, "average")) for b in ("vv", "vh")])

        for ti in range(tiles.shape[0]):
            for tj in range(tiles.shape[1]):
                tile = tiles[ti, tj]
                row0, col0 = ti * BLOCK_PX, tj * BLOCK_PX
                x_m, y_m = _centres(tile)
                g = ground(x_m, y_m, seed)
                label_w.write(g.label, row0, col0)
                for acq in plans:
                    rng = np.random.default_rng(np.random.SeedSequence([seed, acq.index, 2, ti, tj]))
                    dn, scl = s2_window(g, x_m, y_m, acq.optical, rng)
                    for b in range(10):
                        s2_w[acq.index][b].write(dn[b], row0, col0)
                    s2_w[acq.index][10].write(scl, row0, col0)
                    s2_counts[acq.index] += np.bincount(scl.ravel(), minlength=256)
                    if acq.radar is not None:
                        rng = np.random.default_rng(np.random.SeedSequence([seed, acq.index, 1, ti, tj]))
                        g0 = s1_window(g, x_m, y_m, acq.radar, seed, rng)
                        s1_w[acq.index][0].write(g0[0], row0, col0)
                        s1_w[acq.index][1].write(g0[1], row0, col0)
                        s1_valid[acq.index] += int((g0[0] != S1_NODATA).sum())
                done += 1
                if progress is not None:
                    progress(done, total)

        dem_path = root / stac.DEM_COLLECTION / ids["dem"] / stac.DEM_FILE
        dem_path.parent.mkdir(parents=True)
        with CogWriter(dem_path, dem_box, "float32", None, "average") as dem_w:
            for ti in range(dem_tiles.shape[0]):
                for tj in range(dem_tiles.shape[1]):
                    x_m, y_m = _centres(dem_tiles[ti, tj])
                    dem_w.write(ground(x_m, y_m, seed).elevation_m, ti * BLOCK_PX, tj * BLOCK_PX)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        log.info("synthetic archive %s: converting to COGs", root)

    _write_catalog(root, seed, geobox, dem_box, plans, ids, s2_counts, s1_valid)
    info = archive_info(root, seed=seed, geobox=geobox, days=[p.s2_time for p in plans], label_id=ids["label"])
    return info


def archive_info(
    root: Path, *, seed: int, geobox: GeoBox, days: Sequence[datetime], label_id: str | None = None
) -> ArchiveInfo:
    """The :class:`ArchiveInfo` of an archive generated with these parameters into ``root``."""
    label_id = label_id or _label_id(seed, geobox)
    return ArchiveInfo(
        root=Path(root),
        catalog_path=Path(root) / "catalog.json",
        label_path=Path(root) / stac.LABEL_COLLECTION / label_id / stac.LABEL_FILE,
        epsg=int(geobox.crs.epsg),
        geobox=geobox,
        seed=seed,
        dates=tuple(days),
    )


def _dem_geobox(geobox: GeoBox) -> GeoBox:
    """A 30 m grid with the same upper-left corner that covers the 10 m grid."""
    b = geobox.boundingbox
    nx = math.ceil((b.right - b.left) / DEM_RES_M)
    ny = math.ceil((b.top - b.bottom) / DEM_RES_M)
    return GeoBox.from_bbox((b.left, b.top - ny * DEM_RES_M, b.left + nx * DEM_RES_M, b.top),
                            geobox.crs, resolution=DEM_RES_M)


def _label_id(seed: int, geobox: GeoBox) -> str:
    a = geobox.affine
    return f"sgma-synthetic-labels-s{seed}-{int(a.c)}-{int(a.f)}-{geobox.shape[1]}x{geobox.shape[0]}"


def _zone_code(epsg: int) -> str:
    return f"{epsg % 100:02d}"


def _item_ids(seed: int, plans: Sequence[Acquisition], geobox: GeoBox) -> dict[str, Any]:
    zone = _zone_code(int(geobox.crs.epsg))
    s2, s1 = {}, {}
    for acq in plans:
        sat = "A" if acq.index % 2 == 0 else "B"
        s2[acq.index] = f"S2{sat}_T{zone}SYN_{acq.s2_time:%Y%m%dT%H%M%S}_L2A"
        if acq.s1_time is not None:
            start = acq.s1_time
            end = start + timedelta(seconds=12)
            orbit = 53000 + (start.date() - date(2024, 1, 1)).days * 15 + seed % 15
            s1[acq.index] = (f"S1A_IW_GRDH_1SDV_{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}_"
                             f"{orbit:06d}_{(seed * 7919 + orbit) % 0xFFFFFF:06X}_rtc")
    b = geobox.extent.to_crs("epsg:4326").boundingbox
    lat, lon = math.floor(b.bottom), math.floor(b.left)
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    dem = f"Copernicus_DSM_COG_10_{ns}{abs(lat):02d}_00_{ew}{abs(lon):03d}_00_DEM_SYN{seed}"
    return {"s2": s2, "s1": s1, "dem": dem, "label": _label_id(seed, geobox)}


def _pct(n: int, total: int) -> float:
    return round(100.0 * n / total, 6) if total else 0.0


def _write_catalog(
    root: Path, seed: int, geobox: GeoBox, dem_box: GeoBox, plans: Sequence[Acquisition],
    ids: dict[str, Any], s2_counts: Sequence[np.ndarray], s1_valid: Sequence[int],
) -> None:
    epsg = int(geobox.crs.epsg)
    grid = stac.grid_fields(geobox)
    full_geometry, full_bbox = _footprint(geobox, None)
    centroid = geobox.extent.centroid.to_crs("epsg:4326").points[0]
    npx = geobox.shape[0] * geobox.shape[1]
    first, last = plans[0].s2_time, plans[-1].s2_time

    # Sentinel-2 L2A, Earth Search c1 conventions.
    s2_ids = []
    for acq in plans:
        item_id = ids["s2"][acq.index]
        s2_ids.append(item_id)
        folder = root / stac.S2_COLLECTION / item_id
        counts = s2_counts[acq.index]
        valid = npx - int(counts[SCL_NODATA])
        cloud = int(counts[SCL_CLOUD_MEDIUM] + counts[SCL_CLOUD_HIGH] + counts[SCL_CIRRUS])
        assets: dict[str, Any] = {}
        for key, fname, band, common, wl, fwhm, title in stac.S2_ASSETS:
            assets[key] = {
                "href": f"./{fname}", "type": stac.COG_TYPE, "title": title,
                "eo:bands": [{"name": band, "common_name": common, "center_wavelength": wl,
                              "full_width_half_max": fwhm}],
                "gsd": 10, **grid,
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 10,
                                  "scale": 0.0001, "offset": -0.1}],
                **_file_fields(folder / fname), "roles": ["data", "reflectance"],
            }
        assets["scl"] = {
            "href": f"./{stac.S2_SCL_FILE}", "type": stac.COG_TYPE, "title": "Scene classification map (SCL)",
            "gsd": 10, **grid,
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 10}],
            **_file_fields(folder / stac.S2_SCL_FILE), "roles": ["data"],
        }
        geometry, bbox = _footprint(geobox, acq.optical.edge)
        made = stac.processing_time(acq.s2_time, 7.4)
        sat = item_id[2].lower()
        gen = stac.processing_time(acq.s2_time, 4.2)
        props = {
            "created": stac.stamp(made), "platform": f"sentinel-2{sat}", "constellation": "sentinel-2",
            "instruments": ["msi"], "eo:cloud_cover": _pct(cloud, valid),
            "proj:epsg": epsg, "proj:centroid": {"lat": round(centroid[1], 5), "lon": round(centroid[0], 5)},
            "mgrs:utm_zone": epsg % 100, "mgrs:latitude_band": "S", "mgrs:grid_square": "YN",
            "grid:code": f"MGRS-{_zone_code(epsg)}SYN",
            "view:sun_azimuth": 150.0, "view:sun_elevation": 58.0,
            "s2:nodata_pixel_percentage": _pct(int(counts[SCL_NODATA]), npx),
            "s2:cloud_shadow_percentage": _pct(int(counts[SCL_SHADOW]), valid),
            "s2:vegetation_percentage": _pct(int(counts[SCL_VEGETATION]), valid),
            "s2:not_vegetated_percentage": _pct(int(counts[SCL_NOT_VEGETATED]), valid),
            "s2:water_percentage": _pct(int(counts[SCL_WATER]), valid),
            "s2:medium_proba_clouds_percentage": _pct(int(counts[SCL_CLOUD_MEDIUM]), valid),
            "s2:high_proba_clouds_percentage": _pct(int(counts[SCL_CLOUD_HIGH]), valid),
            "s2:thin_cirrus_percentage": _pct(int(counts[SCL_CIRRUS]), valid),
            "s2:snow_ice_percentage": 0,
            "s2:product_type": "S2MSI2A", "s2:processing_baseline": "05.10",
            "s2:product_uri": f"{item_id[:3]}_MSIL2A_{acq.s2_time:%Y%m%dT%H%M%S}_N0510_R022_T{_zone_code(epsg)}SYN_"
                              f"{gen:%Y%m%dT%H%M%S}.SAFE",
            "s2:generation_time": stac.stamp(gen),
            "earthsearch:boa_offset_applied": False,
            "processing:software": {"sgma-batch-synthetic": f"v{GENERATOR_VERSION}"},
            "updated": stac.stamp(made),
        }
        stac.write_json(folder / f"{item_id}.json", stac.item(
            item_id=item_id, collection=stac.S2_COLLECTION, when=acq.s2_time, geometry=geometry, bbox=bbox,
            properties=props, assets=assets, extensions=stac.s2_extensions()))

    # Sentinel-1 RTC, Planetary Computer conventions (proj:* on the item).
    s1_ids = []
    b = geobox.boundingbox
    for acq in plans:
        if acq.radar is None or acq.s1_time is None:
            continue
        item_id = ids["s1"][acq.index]
        s1_ids.append(item_id)
        folder = root / stac.S1_COLLECTION / item_id
        assets = {}
        for pol, upper in (("vh", "VH"), ("vv", "VV")):
            fname = stac.S1_FILES[pol]
            second_pol = upper[1]
            assets[pol] = {
                "href": f"./{fname}", **_file_fields(folder / fname), "type": stac.COG_TYPE, "roles": ["data"],
                "title": f"{upper}: vertical transmit, {'horizontal' if second_pol == 'H' else 'vertical'} receive",
                "description": f"Terrain-corrected gamma naught values of signal transmitted with vertical "
                               f"polarization and received with "
                               f"{'horizontal' if second_pol == 'H' else 'vertical'} polarization with "
                               f"radiometric terrain correction applied (synthetic).",
                "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10.0}],
            }
        geometry, bbox = _footprint(geobox, acq.radar.edge)
        a = geobox.affine
        orbit = int(item_id.split("_")[6])
        props = {
            "platform": "SENTINEL-1A", "s1:shape": [geobox.shape[1], geobox.shape[0]],
            "proj:bbox": [b.left, b.bottom, b.right, b.top], "proj:epsg": epsg,
            "proj:shape": [geobox.shape[0], geobox.shape[1]],
            "end_datetime": stac.stamp(acq.s1_time + timedelta(seconds=12)),
            "constellation": "Sentinel-1", "s1:resolution": "high",
            "proj:transform": [a.a, a.b, a.c, a.d, a.e, a.f, 0.0, 0.0, 1.0],
            "s1:datatake_id": str(400000 + orbit % 100000), "start_datetime": stac.stamp(acq.s1_time),
            "s1:orbit_source": "RESORB", "s1:slice_number": "1", "s1:total_slices": "1",
            "sar:looks_range": 5, "sat:orbit_state": acq.orbit_state, "sar:product_type": "GRD",
            "sar:looks_azimuth": 1, "sar:polarizations": ["VV", "VH"], "sar:frequency_band": "C",
            "sat:absolute_orbit": orbit, "sat:relative_orbit": (orbit - 73) % 175 + 1,
            "s1:processing_level": "1", "sar:instrument_mode": "IW", "sar:center_frequency": 5.405,
            "sar:resolution_range": 20, "s1:product_timeliness": "Fast-24h", "sar:resolution_azimuth": 22,
            "sar:pixel_spacing_range": 10, "sar:observation_direction": "right",
            "sar:pixel_spacing_azimuth": 10, "sar:looks_equivalent_number": S1_LOOKS,
            "s1:instrument_configuration_ID": "7", "sat:platform_international_designator": "2014-016A",
            "s1:valid_pixel_percentage": _pct(s1_valid[acq.index], npx),
        }
        stac.write_json(folder / f"{item_id}.json", stac.item(
            item_id=item_id, collection=stac.S1_COLLECTION, when=acq.s1_time + timedelta(seconds=6),
            geometry=geometry, bbox=bbox, properties=props, assets=assets, extensions=stac.s1_extensions()))

    # Copernicus DEM GLO-30, Planetary Computer conventions.
    dem_folder = root / stac.DEM_COLLECTION / ids["dem"]
    dem_geometry, dem_bbox = _footprint(dem_box, None)
    dem_when = datetime(2021, 4, 22, tzinfo=UTC)
    stac.write_json(dem_folder / f"{ids['dem']}.json", stac.item(
        item_id=ids["dem"], collection=stac.DEM_COLLECTION, when=dem_when, geometry=dem_geometry, bbox=dem_bbox,
        properties={"gsd": 30, "platform": "TanDEM-X", "proj:epsg": epsg, **stac.grid_fields(dem_box)},
        assets={"data": {
            "href": f"./{stac.DEM_FILE}", "type": stac.COG_TYPE, "title": "Data", "roles": ["data"],
            **stac.grid_fields(dem_box),
            "raster:bands": [{"data_type": "float32", "spatial_resolution": 30, "unit": "metre"}],
            **_file_fields(dem_folder / stac.DEM_FILE),
        }},
        extensions=stac.raster_extensions()))

    # Ground truth labels.
    label_folder = root / stac.LABEL_COLLECTION / ids["label"]
    class_list = [{"value": i, "name": n, "color_hint": c.lstrip("#").upper()} for i, (n, c) in enumerate(CLASSES)]
    stac.write_json(label_folder / f"{ids['label']}.json", stac.item(
        item_id=ids["label"], collection=stac.LABEL_COLLECTION, when=first, geometry=full_geometry,
        bbox=full_bbox,
        properties={
            "start_datetime": stac.stamp(first), "end_datetime": stac.stamp(last),
            "proj:epsg": epsg, **grid, "label:type": "raster", "label:tasks": ["segmentation"],
            "label:properties": None, "label:description": CLASSES_DESCRIPTION,
        },
        assets={"labels": {
            "href": f"./{stac.LABEL_FILE}", "type": stac.COG_TYPE, "title": "Land cover class ids",
            "roles": ["data", "labels"], **grid,
            "raster:bands": [{"nodata": LABEL_NODATA, "data_type": "uint8", "spatial_resolution": 10}],
            "classification:classes": class_list, **_file_fields(label_folder / stac.LABEL_FILE),
        }},
        extensions=stac.label_extensions()))

    synth = " (synthetic: generated by sgma-batch from a seed; not real data)"
    colls = [
        (stac.S2_COLLECTION, "Sentinel-2 Collection 1 Level-2A" + synth,
         "Sentinel-2 Collection 1 L2A-like bottom-of-atmosphere reflectance, processing baseline 05.10 "
         "(DN = 10000 x reflectance + 1000)" + synth, s2_ids, first, last),
        (stac.S1_COLLECTION, "Sentinel 1 Radiometrically Terrain Corrected (RTC)" + synth,
         "Sentinel-1 IW RTC-like linear gamma0 VV/VH with speckle" + synth, s1_ids,
         min((p.s1_time for p in plans if p.s1_time), default=first),
         max((p.s1_time for p in plans if p.s1_time), default=last)),
        (stac.DEM_COLLECTION, "Copernicus DEM GLO-30" + synth,
         "Copernicus DEM GLO-30-like digital surface model, float32 metres" + synth, [ids["dem"]],
         dem_when, dem_when),
        (stac.LABEL_COLLECTION, "sgma-batch land cover labels" + synth,
         "Ground-truth land cover of the synthetic archive: " + CLASSES_DESCRIPTION, [ids["label"]], first, last),
    ]
    for cid, title, desc, item_ids, start, end in colls:
        extra: dict[str, Any] = {}
        if cid == stac.LABEL_COLLECTION:
            extra = {"summaries": {"classification:classes": [class_list]}}
        stac.write_json(root / cid / "collection.json", stac.collection(
            collection_id=cid, title=title, description=desc, bbox=full_bbox, start=start, end=end,
            item_ids=item_ids, extra=extra))
    stac.write_json(root / "catalog.json", stac.catalog(
        catalog_id=f"sgma-synthetic-s{seed}", description="Synthetic Sentinel-2 / Sentinel-1 / DEM archive with "
        f"ground-truth labels, generated deterministically from seed {seed} by sgma-batch "
        f"(generator v{GENERATOR_VERSION}).", collection_ids=[c[0] for c in colls]))
    stac.write_json(root / "synthetic.json", {
        "generator_version": GENERATOR_VERSION, "seed": seed, "epsg": epsg,
        "geobox": {"shape": list(geobox.shape), "transform": list(stac.grid_fields(geobox)["proj:transform"])},
        "dates": [stac.stamp(p.s2_time) for p in plans],
    })


def ensure_archive(target: Path, build: Callable[[Path], object]) -> None:
    """Build an archive into ``target`` once, atomically (temp folder + rename); safe under races."""
    target = Path(target)
    if (target / "catalog.json").exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "catalog.json").exists():
                raise
            log.info("another process generated %s first; using it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
