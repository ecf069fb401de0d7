"""``run_mosaic``: AOI + window + catalogue + checkpoint -> a seamless Zarr mosaic, resumable.

search -> grid -> plan (content hash per tile) -> skip tiles the manifest already holds with the same
hash -> execute the rest (Ray by default) -> finish (overviews, consolidated metadata, STAC Item,
quicklook). A rerun recomputes exactly the tiles whose scenes, model or config changed; degraded and
failed tiles are retried.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sgma_batch.errors import ModalityMismatchError, NothingFoundError, UsageError

log = logging.getLogger(__name__)

__all__ = ["Progress", "RunSpec", "RunSummary", "run_mosaic"]

# progress(completed_tiles, total_tiles, record or None): called once before the first tile and per tile.
Progress = Callable[[int, int, "dict[str, Any] | None"], None]


class RunSpec(BaseModel):
    """A validated ``sgma-batch run`` job (the edge: CLI, Ray job, notebooks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aoi: str | list[float] = Field(description="GeoJSON file, or a min_lon,min_lat,max_lon,max_lat bbox")
    out: str = Field(description="output Zarr store (a local path)")
    start: str | None = None
    end: str | None = None
    catalog: str | None = Field(None, description="STAC API URL or static catalog path; default: the demo archive")
    model: str | None = Field(None, description="checkpoint directory; default: the shipped demo model")
    cache_dir: str | None = Field(None, description="where the demo archive is generated when no catalog is given")
    address: str | None = Field(None, description="Ray address; None starts/uses a local Ray")
    executor: Literal["ray", "sequential"] = "ray"
    tile_px: int = Field(512, ge=16)
    halo_px: int = Field(64, ge=0)
    res_m: float = Field(10.0, gt=0)
    crs: str | None = None
    zarr_format: Literal[2, 3] = 3
    window_px: int = Field(256, ge=16)
    overlap_px: int = Field(64, ge=0)
    write_probability: bool = False
    max_actors: int | None = Field(None, ge=1)
    batch_size: int = Field(2, ge=1)
    threads: int = Field(1, ge=1)
    max_area_km2: float | None = None


@dataclass(frozen=True)
class RunSummary:
    store: str
    tiles: int
    reused: int
    computed: int
    degraded: int
    failed: int
    nodata: int
    area_km2: float
    seconds: float
    scenes: dict[str, int] = field(default_factory=dict)
    created: bool = True

    @property
    def exit_code(self) -> int:
        """0 ok, 3 partial (some tiles degraded or failed)."""
        return 3 if (self.degraded or self.failed) else 0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "exit_code": self.exit_code}


def _output_config(spec: RunSpec, aoi_wkb: bytes) -> dict[str, Any]:
    """The knobs that change output values: part of every tile's content hash."""
    return {
        "res_m": spec.res_m, "crs": spec.crs, "tile_px": spec.tile_px, "halo_px": spec.halo_px,
        "window_px": spec.window_px, "overlap_px": spec.overlap_px, "probability": spec.write_probability,
        "aoi": hashlib.sha256(aoi_wkb).hexdigest(), "start": spec.start, "end": spec.end,
    }


def _demo_catalog(spec: RunSpec) -> tuple[str, str | None, str | None]:
    from sgma_batch.synthetic import ensure_demo_archive

    if spec.cache_dir is None:
        raise UsageError("no --catalog given and no cache directory for the demo archive; pass one of them")
    info = ensure_demo_archive(Path(spec.cache_dir))
    dates = getattr(info, "dates", None)
    start = spec.start or (str(min(dates))[:10] if dates else None)
    end = spec.end or (str(max(dates))[:10] if dates else None)
    return str(info.catalog_path), start, end


def run_mosaic(spec: RunSpec, *, progress: Progress | None = None) -> RunSummary:
    """Map an AOI into the Zarr store ``spec.out``; resumes and updates incrementally.

    Raises:
        NothingFoundError: no scene of any model modality over the AOI and window.
        StoreIncompatibleError: ``spec.out`` holds a store with another grid, tiling or classes.
    """
    from sgma_batch.aoi import load_aoi
    from sgma_batch.colocate import plan_cell
    from sgma_batch.execute import InferenceConfig, execute_ray, execute_sequential
    from sgma_batch.grid import config_hash, plan_tiles, target_geobox
    from sgma_batch.search import search_scenes
    from sgma_batch.store import (
        StoreLayout,
        finish_store,
        open_or_create_store,
        read_manifest,
        tile_records_done,
    )
    from sgma_model import read_card

    t0 = time.perf_counter()
    if spec.overlap_px >= spec.window_px:
        raise UsageError(f"overlap {spec.overlap_px} px must be smaller than the window {spec.window_px} px")
    if spec.tile_px % 16:
        raise UsageError(f"--tile-px must be a multiple of 16, got {spec.tile_px}")
    aoi = load_aoi(spec.aoi if isinstance(spec.aoi, str) else tuple(spec.aoi),
                   **({"max_area_km2": spec.max_area_km2} if spec.max_area_km2 else {}))
    if spec.catalog is None:
        catalog, start, end = _demo_catalog(spec)
    else:
        catalog, start, end = spec.catalog, spec.start, spec.end
    if start is None or end is None:
        raise UsageError("no time window: pass --start and --end (YYYY-MM-DD)")
    if spec.model is None:
        from sgma_batch.models import default_checkpoint

        model_path = str(default_checkpoint())
    else:
        model_path = spec.model
    card = read_card(model_path)
    modalities = tuple(card.modality_names)
    found = search_scenes(catalog, aoi, start, end, modalities=modalities, allow_empty=True)
    scenes = {m: list(v) for m, v in found.items() if m in modalities}
    if not any(scenes.values()):
        raise NothingFoundError(
            f"no scenes of {', '.join(modalities)} over the AOI between {start} and {end} in {catalog}; "
            "widen the time window or check the catalogue"
        )
    if not scenes:
        raise ModalityMismatchError(f"the catalogue offers none of the model's modalities {modalities}")

    geobox = target_geobox(aoi.geometry, res_m=spec.res_m, crs=spec.crs or aoi.utm_epsg)
    cfg_hash = config_hash(_output_config(spec, aoi.geometry.wkb))
    tasks = plan_tiles(
        geobox, aoi.geometry, tile_px=spec.tile_px, halo_px=spec.halo_px,
        scenes_for=lambda cell: plan_cell(cell.geom, scenes, start, end).candidates,
        model_hash=card.model_hash, cfg_hash=cfg_hash,
    )
    layout = StoreLayout(
        geobox=geobox, tile_px=spec.tile_px, classes=tuple((c.name, c.color) for c in card.classes),
        modalities=modalities, write_probability=spec.write_probability, zarr_format=spec.zarr_format,
    )
    from datetime import datetime

    from sgma_batch import __version__

    provenance = {
        "model": card.architecture, "model_path": model_path, "model_hash": card.model_hash,
        "config_hash": cfg_hash, "config": _output_config(spec, aoi.geometry.wkb), "catalog": str(catalog),
        "window": [start, end], "created": datetime.now(UTC).isoformat(), "software": __version__,
    }
    created = open_or_create_store(spec.out, layout, provenance)
    done = tile_records_done(read_manifest(spec.out), tasks)
    todo = [t for t in tasks if t.tile_id not in done]
    log.info("%d tiles: %d reused, %d to compute", len(tasks), len(done), len(todo))

    aoi_grid = aoi_in_grid_crs(aoi.geometry, geobox)
    cfg = InferenceConfig(
        checkpoint=model_path, store=str(spec.out), layout=layout, aoi_wkt=aoi_grid.wkt,
        window_px=spec.window_px, overlap_px=spec.overlap_px, threads=spec.threads,
    )
    completed = [len(done)]
    if progress is not None:
        progress(len(done), len(tasks), None)

    def on_record(rec: dict[str, Any]) -> None:
        completed[0] += 1
        if progress is not None:
            progress(completed[0], len(tasks), rec)

    if not todo:
        records: list[dict[str, Any]] = []
    elif spec.executor == "sequential":
        records = execute_sequential(todo, cfg, on_record=on_record)
    else:
        records = _with_ray(spec.address, lambda: execute_ray(
            todo, cfg, max_actors=spec.max_actors, batch_size=spec.batch_size, on_record=on_record))
    finish_store(spec.out, layout, footprint=_lonlat(aoi.geometry))
    counts = {s: sum(1 for r in records if r["status"] == s) for s in ("computed", "degraded", "failed", "nodata")}
    return RunSummary(
        store=str(spec.out), tiles=len(tasks), reused=len(done), computed=counts["computed"],
        degraded=counts["degraded"], failed=counts["failed"], nodata=counts["nodata"],
        area_km2=round(aoi.area_km2, 4), seconds=round(time.perf_counter() - t0, 3),
        scenes={m: len(v) for m, v in scenes.items()}, created=created,
    )


def aoi_in_grid_crs(geometry: Any, geobox: Any) -> Any:
    """The AOI polygon (CRS84 shapely) in the grid's CRS, as shapely."""
    from odc.geo import geom

    return geom.Geometry(geometry, "EPSG:4326").to_crs(geobox.crs).geom


def _lonlat(geometry: Any) -> Any:
    from odc.geo import geom

    return geom.Geometry(geometry, "EPSG:4326")


def _with_ray(address: str | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a Ray cluster: the one already connected, else ``address`` (None = start locally)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        return fn()
    finally:
        if started:
            ray.shutdown()
