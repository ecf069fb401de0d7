"""Target grid, tiling and the per-tile plan of ``sgma-batch run``.

The output grid is one odc-geo :class:`GeoBox` (CRS, resolution, pixel grid anchored to whole
multiples of the resolution). It is split into tiles of ``tile_px`` square; a tile's core is exactly
one output chunk (one writer per chunk), and its halo GeoBox (core padded by ``halo_px``, clipped to the
grid) is what the readers load and the model sees, so that pixels near the core's edge have context. A :class:`TileTask` is the small frozen
record that travels through Ray: core + halo GeoBoxes, the candidate scenes per modality and the
content hash that decides whether a rerun must recompute the tile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from odc.geo import geom
from odc.geo.geobox import GeoBox, GeoboxTiles

from sgma_batch.aoi import utm_epsg_for, utm_epsg_of  # one UTM rule (utm_epsg_for re-exported here)
from sgma_batch.errors import UsageError
from sgma_batch.scenes import Scene

__all__ = [
    "TileTask",
    "config_hash",
    "content_hash",
    "morton_key",
    "plan_tiles",
    "target_geobox",
    "tile_grid",
    "utm_epsg_for",
    "with_neighbour_hashes",
]


def morton_key(row: int, col: int) -> int:
    """Z-order (Morton) key of a grid cell: interleaved bits of ``row`` and ``col`` (non-negative).

    Sorting cells by it makes every aligned 2^k x 2^k block contiguous, so neighbours in the order are
    neighbours on the ground (what a reader's block cache and the overview pass reuse).
    """
    key, bit = 0, 0
    while row >> bit or col >> bit:
        key |= ((col >> bit) & 1) << (2 * bit) | ((row >> bit) & 1) << (2 * bit + 1)
        bit += 1
    return key


def target_geobox(aoi_geometry: Any, *, res_m: float = 10.0, crs: str | int | None = None) -> GeoBox:
    """The output grid that covers an AOI.

    Args:
        aoi_geometry: shapely geometry (or GeoJSON mapping) in CRS84.
        res_m: pixel size in the target CRS's units.
        crs: target CRS; default the UTM zone of the AOI centroid (:func:`sgma_batch.aoi.utm_epsg_of`: an AOI
            split at the antimeridian gets its own zone).

    Returns:
        A north-up GeoBox whose edges are whole multiples of ``res_m`` (so reruns and neighbouring
        AOIs share one pixel grid).
    """
    if res_m <= 0:
        raise UsageError(f"resolution must be positive, got {res_m}; pass --res in metres, e.g. 10")
    aoi = geom.Geometry(aoi_geometry, "EPSG:4326")
    if crs is None:
        crs = f"EPSG:{utm_epsg_of(aoi.geom)}"
    elif isinstance(crs, int):
        crs = f"EPSG:{crs}"
    projected = aoi.to_crs(crs)
    return GeoBox.from_bbox(projected.boundingbox, crs=crs, resolution=res_m)


def tile_grid(geobox: GeoBox, tile_px: int) -> GeoboxTiles:
    """Split the grid into square tiles of ``tile_px`` (the last row/column may be smaller)."""
    if tile_px <= 0 or tile_px % 16:
        raise UsageError(f"tile size must be a positive multiple of 16 pixels, got {tile_px}")
    return GeoboxTiles(geobox, (tile_px, tile_px))


@dataclass(frozen=True)
class TileTask:
    """One tile of the plan: what a worker needs to read, infer and write it.

    ``region`` is the tile core's (row slice, col slice) in the output grid: exactly one chunk;
    ``halo_region`` the halo's, clipped to the grid (so a tile on the grid's edge has no context beyond
    it: nothing outside the grid is mapped, so nothing there is read or forwarded).
    """

    tile_id: str  # "r{row}_c{col}" of the tile index
    index: tuple[int, int]  # (tile row, tile col)
    core: GeoBox
    halo: GeoBox
    region: tuple[slice, slice]
    scenes: Mapping[str, tuple[Scene, ...]] = field(default_factory=dict)
    content_hash: str = ""
    halo_region: tuple[slice, slice] | None = None  # None: the halo is the core padded on every side

    @property
    def crop(self) -> tuple[slice, slice]:
        """(rows, cols) of the core inside the halo tile."""
        if self.halo_region is None:
            pad_y = (self.halo.shape.y - self.core.shape.y) // 2
            pad_x = (self.halo.shape.x - self.core.shape.x) // 2
        else:
            pad_y = self.region[0].start - self.halo_region[0].start
            pad_x = self.region[1].start - self.halo_region[1].start
        return slice(pad_y, pad_y + self.core.shape.y), slice(pad_x, pad_x + self.core.shape.x)

    @property
    def origin(self) -> tuple[int, int]:
        """(row, col) of the halo tile's first pixel in the output grid."""
        rows, cols = self.crop
        return self.region[0].start - rows.start, self.region[1].start - cols.start

    @property
    def signature(self) -> tuple[str, ...]:
        """Modalities that have at least one candidate scene, sorted: tiles batch by this."""
        return tuple(sorted(m for m, s in self.scenes.items() if s))

    def scene_ids(self) -> dict[str, list[str]]:
        return {m: [s.id for s in scenes] for m, scenes in sorted(self.scenes.items())}


def content_hash(
    tile_id: str,
    scenes: Mapping[str, Iterable[Scene]],
    model_hash: str,
    cfg_hash: str,
) -> str:
    """What identifies a tile's output: its cell, its inputs' stamps, the model and the config."""
    payload = {
        "cell": tile_id,
        "scenes": {m: sorted(s.stamp for s in sc) for m, sc in sorted(scenes.items())},
        "model": model_hash,
        "config": cfg_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def with_neighbour_hashes(tasks: Sequence[TileTask]) -> list[TileTask]:
    """Tasks whose content hash also covers their 8 neighbours' (halo-tile windows blended across borders).

    A tile's border strips blend its neighbours' windows, so its output changes when a neighbour's inputs
    do: a new scene over one tile recomputes that tile and the ring around it, and a rerun after any
    update equals a fresh run.
    """
    own = {t.index: t.content_hash for t in tasks}
    out = []
    for t in tasks:
        iy, ix = t.index
        ring = [own.get((iy + dy, ix + dx), "") for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        out.append(replace(t, content_hash=hashlib.sha256("|".join(ring).encode()).hexdigest()))
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable hash of the knobs that change a tile's output values (JSON-serialisable mapping)."""
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str).encode()).hexdigest()


def plan_tiles(
    geobox: GeoBox,
    aoi_geometry: Any,
    *,
    tile_px: int,
    halo_px: int,
    scenes_for: Callable[[geom.Geometry], Mapping[str, Iterable[Scene]]] | None = None,
    model_hash: str = "",
    cfg_hash: str = "",
) -> list[TileTask]:
    """One TileTask per tile core that intersects the AOI, in row-major order.

    Args:
        geobox: the output grid (see :func:`target_geobox`).
        aoi_geometry: shapely geometry (or GeoJSON mapping) in CRS84.
        tile_px: tile core size; equals the output chunk size.
        halo_px: context read around each core (within the grid).
        scenes_for: optional callable ``(core_lonlat_geometry) -> Mapping[str, tuple[Scene, ...]]``
            that ranks the candidate scenes of a cell (``colocate.plan_cell`` behind an adapter).
        model_hash: the checkpoint's hash, part of the content hash.
        cfg_hash: hash of the output-changing config, part of the content hash.
    """
    if halo_px < 0:
        raise UsageError(f"halo must be >= 0 pixels, got {halo_px}")
    tiles = tile_grid(geobox, tile_px)
    aoi = geom.Geometry(aoi_geometry, "EPSG:4326").to_crs(geobox.crs)
    tasks: list[TileTask] = []
    ny, nx = tiles.shape.yx
    ny_px, nx_px = geobox.shape.yx
    for iy in range(ny):
        for ix in range(nx):
            core = tiles[iy, ix]
            if not core.extent.intersects(aoi):
                continue
            ys, xs = tiles.roi[iy, ix]
            halo_region = (slice(max(ys.start - halo_px, 0), min(ys.stop + halo_px, ny_px)),
                           slice(max(xs.start - halo_px, 0), min(xs.stop + halo_px, nx_px)))
            tile_id = f"r{iy:04d}_c{ix:04d}"
            scenes: dict[str, tuple[Scene, ...]] = {}
            if scenes_for is not None:
                found = scenes_for(core.extent.to_crs("EPSG:4326"))
                scenes = {m: tuple(s) for m, s in sorted(found.items())}
            tasks.append(
                TileTask(
                    tile_id=tile_id,
                    index=(iy, ix),
                    core=core,
                    halo=geobox[halo_region],
                    region=(ys, xs),
                    scenes=scenes,
                    content_hash=content_hash(tile_id, scenes, model_hash, cfg_hash),
                    halo_region=halo_region,
                )
            )
    return tasks
