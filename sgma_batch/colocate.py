"""Co-location: the candidate scenes of each modality for one grid cell and window, ranked.

Ranking (deterministic; ties end on the scene id):

* optical (``s2``): most expected clear area over the cell first, i.e. the fraction of the cell the
  footprint covers times ``(1 - eo:cloud_cover / 100)`` (unknown cloud cover counts as 100 %),
  then lower cloud cover, then closer to the window centre;
* SAR (``s1``): closest in time to the best-ranked optical scene (to the window centre when there is
  none), then larger cell coverage;
* DEM (``dem``): any; larger cell coverage first. DEM scenes ignore the time window (static data).

Scenes whose footprint does not intersect the cell, or whose time lies outside the window
(except DEM), are not candidates. ``available`` says which modalities can exist at all in the cell.

A run ranks once for its whole AOI (:func:`rank_scenes`) and every cell keeps that order
(``plan_cell(..., keep_order=True)``): a pixel comes from the first scene in the run's order that has it
valid, so the acquisition chosen changes only where a scene's footprint or valid data ends, never at a
tile border.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from sgma_batch.aoi import split_antimeridian
from sgma_batch.scenes import Scene
from sgma_batch.search import TIMELESS_MODALITIES, parse_window

STATIC_MODALITIES = TIMELESS_MODALITIES  # ranked without the time window (the DEM)


def rank_scenes(
    aoi_lonlat_geometry: BaseGeometry | Mapping[str, Any],
    scenes_by_modality: Mapping[str, Iterable[Scene]],
    start: str | date | datetime,
    end: str | date | datetime,
) -> dict[str, tuple[Scene, ...]]:
    """One mosaic order per modality for a whole run: the ranking of :func:`plan_cell` with the coverage of
    the whole AOI instead of one cell's. Pass the result to ``plan_cell(..., keep_order=True)``."""
    return plan_cell(aoi_lonlat_geometry, scenes_by_modality, start, end).candidates


@dataclass(frozen=True)
class CellPlan:
    """Ranked candidate scenes per modality for one cell; ``available`` = modalities with any candidate."""

    candidates: dict[str, tuple[Scene, ...]]
    available: frozenset[str]

    def best(self, modality: str) -> Scene | None:
        found = self.candidates.get(modality, ())
        return found[0] if found else None


def _coverage(scene: Scene, cell: BaseGeometry) -> float:
    """Fraction of the cell's (lon/lat) area the scene footprint covers."""
    if cell.area == 0:
        return 1.0 if shape(scene.geometry).intersects(cell) else 0.0
    return shape(scene.geometry).intersection(cell).area / cell.area


def _seconds(a: datetime, b: datetime) -> float:
    return abs((a - b).total_seconds())


def _in_window(scene: Scene, start: datetime, end: datetime) -> bool:
    return start <= scene.datetime <= end


def _rank(covered: Mapping[str, list[tuple[Scene, float]]], centre: datetime) -> dict[str, list[Scene]]:
    """Order (scene, coverage) pairs per modality by the module's ranking rules."""
    ranked: dict[str, list[Scene]] = {}
    if "s2" in covered:
        def optical_key(sc: tuple[Scene, float]) -> tuple:
            s, cov = sc
            cloud = 100.0 if s.cloud_cover is None else float(s.cloud_cover)
            return (-round(cov * (1 - cloud / 100.0), 9), cloud, _seconds(s.datetime, centre), s.id)

        ranked["s2"] = [s for s, _ in sorted(covered["s2"], key=optical_key)]
    anchor = ranked["s2"][0].datetime if ranked.get("s2") else centre
    for mod, items in covered.items():
        if mod == "s2":
            continue
        if mod in STATIC_MODALITIES:
            ranked[mod] = [s for s, _ in sorted(items, key=lambda sc: (-round(sc[1], 9), sc[0].id))]
        else:
            ranked[mod] = [
                s for s, _ in sorted(items, key=lambda sc: (_seconds(sc[0].datetime, anchor), -round(sc[1], 9), sc[0].id))
            ]
    return ranked


def plan_cell(
    cell_lonlat_geometry: BaseGeometry | Mapping[str, Any],
    scenes_by_modality: Mapping[str, Iterable[Scene]],
    start: str | date | datetime,
    end: str | date | datetime,
    *,
    max_candidates: int | None = None,
    keep_order: bool = False,
) -> CellPlan:
    """Rank the candidate scenes of each modality for one grid cell.

    Args:
        cell_lonlat_geometry: the cell footprint in CRS84 (shapely or GeoJSON mapping); one across the
            antimeridian may jump 360° or run past 180°.
        scenes_by_modality: search results, ``{modality: [Scene, ...]}``.
        start, end: the time window.
        max_candidates: keep at most this many per modality (default: all).
        keep_order: the scenes are already ranked (:func:`rank_scenes` for the whole AOI): keep their
            order and only drop those that miss the cell or the window, so every cell of a run composites
            in one order and the scene chosen never changes at a cell border.
    """
    cell = cell_lonlat_geometry if isinstance(cell_lonlat_geometry, BaseGeometry) else shape(cell_lonlat_geometry)
    # A cell across ±180° arrives as a ring that jumps 360° (odc-geo's to_crs does not wrap): cut it at 180°
    # into its two real parts, or it would read as a band around the whole globe.
    cell = split_antimeridian(cell)
    t0, t1 = parse_window(start, end)
    centre = t0 + (t1 - t0) / 2
    covered: dict[str, list[tuple[Scene, float]]] = {}
    for mod, scenes in scenes_by_modality.items():
        keep = []
        for s in scenes:
            if mod not in STATIC_MODALITIES and not _in_window(s, t0, t1):
                continue
            cov = _coverage(s, cell)
            if cov > 0:
                keep.append((s, cov))
        covered[mod] = keep

    ranked = {m: [s for s, _ in v] for m, v in covered.items()} if keep_order else _rank(covered, centre)
    candidates = {
        mod: tuple(lst[:max_candidates] if max_candidates else lst) for mod, lst in ranked.items()
    }
    return CellPlan(candidates=candidates, available=frozenset(m for m, c in candidates.items() if c))
