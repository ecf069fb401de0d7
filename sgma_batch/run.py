"""``run_mosaic``: AOI + window + catalogue + checkpoint -> a seamless Zarr mosaic, resumable.

search -> grid -> plan (content hash per tile) -> skip tiles the manifest already holds with the same
hash -> execute the rest (Ray by default) -> finish (overviews, consolidated metadata, STAC Item,
quicklook). A rerun recomputes exactly the tiles whose scenes, model or config changed; degraded and
failed tiles are retried. :func:`plan_run` does everything but the side effects (``sgma-batch plan``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sgma_batch.errors import EmptyDataError, ModalityMismatchError, NothingFoundError, Terminated, UsageError

if TYPE_CHECKING:
    from sgma_batch.store import TileRecord

log = logging.getLogger(__name__)

__all__ = ["Progress", "RunPlan", "RunSpec", "RunSummary", "plan_run", "run_mosaic"]

# progress(completed_tiles, total_tiles, record or None): called once before the first tile and per tile.
Progress = Callable[[int, int, "TileRecord | None"], None]


class RunSpec(BaseModel):
    """A validated ``sgma-batch run`` job (the edge: CLI, Ray job, notebooks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aoi: str | list[float] = Field(description="GeoJSON file, or a min_lon,min_lat,max_lon,max_lat bbox")
    out: str = Field(description="output Zarr store: a local path or an s3:// gs:// az:// URL")
    start: str | None = None
    end: str | None = None
    catalog: str | None = Field(None, description="STAC API URL or static catalog path; default: the demo archive")
    model: str | None = Field(None, description="checkpoint directory; default: the shipped demo model")
    collections: str | dict[str, str] | None = Field(
        None, description="per-modality collection overrides, 's2=id[:profile],s1=...' (see search)"
    )
    signer: str | None = Field(None, description="href signer applied at read time ('planetary-computer', 'mod:fn')")
    cache_dir: str | None = Field(None, description="where the demo archive is generated when no catalog is given")
    address: str | None = Field(None, description="Ray cluster to run on ('auto', 'ray://host:10001'); None: "
                                "this process, unless RAY_ADDRESS is set or Ray is connected")
    executor: Literal["auto", "local", "ray", "sequential"] = Field(
        "auto", description="auto: Ray when an address is given, else in this process (threads); "
        "local: in this process; ray: Ray (local if no address); sequential: one thread, for tests")
    tile_px: int = Field(512, ge=16)
    halo_px: int = Field(16, ge=0)
    res_m: float = Field(10.0, gt=0, allow_inf_nan=False)
    crs: str | None = None
    zarr_format: Literal[2, 3] = 3
    window_px: int | None = Field(
        None, ge=16, description="None: each tile's halo box in one forward, blended with its neighbours' "
        "windows across tile borders; else sliding windows of this size inside each tile, blended")
    overlap_px: int = Field(64, ge=0, description="overlap of sliding windows (with window_px)")
    write_probability: bool = False
    max_actors: int | None = Field(None, ge=1)
    gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs per inference actor; None = 1 when the Ray cluster has GPUs, else CPU actors"
    )
    batch_size: int | None = Field(
        None, ge=1, description="tiles per forward; default 1 on a CPU, sized to the GPU's memory on a GPU")
    threads: int = Field(1, ge=1)
    read_retries: int = Field(3, ge=0, description="retries of a failed asset read (exponential backoff)")
    read_backoff_s: float = Field(0.5, ge=0, description="first backoff delay; doubles per retry")
    allow_domain_shift: bool = Field(False, description="run scenes of another processing level than the model "
                                     "card's (L1C for L2A, GRD for RTC) with a warning instead of exit 35")
    max_area_km2: float | None = Field(None, gt=0, allow_inf_nan=False)
    connect_timeout_s: float = Field(120.0, gt=0, allow_inf_nan=False,
                                     description="how long to wait for the Ray cluster before giving up (exit 5)")
    break_lock: bool = Field(False, description="remove the store's run lock if its owner is dead")
    force: bool = Field(False, description="with break_lock: also when the owner may be alive")
    task_order_seed: int | None = Field(
        None, description="run tiles in a seeded shuffled order instead of by signature (determinism tests)"
    )


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
    executor: str = ""
    model_work_per_px: float | None = None  # pixels forwarded per output pixel (AOI) of the computed tiles
    read_s: float | None = None  # seconds the computed tiles spent reading (summed over tiles: `plan` estimates it)
    model_s: float | None = None  # seconds they spent in the model (summed over tiles)

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
        "window_px": spec.window_px, "overlap_px": spec.overlap_px if spec.window_px else None,
        "probability": spec.write_probability,
        # window placement: the halo tile in one forward, or sliding windows (sgma_batch.blend.lattice_starts)
        "windows": "grid-lattice" if spec.window_px else "halo-tile",
        "aoi": hashlib.sha256(aoi_wkb).hexdigest(), "start": spec.start, "end": spec.end,
    }


def _demo_catalog(spec: RunSpec) -> tuple[str, str | None, str | None]:
    from sgma_batch.synthetic import ensure_demo_archive

    info = ensure_demo_archive(Path(spec.cache_dir) if spec.cache_dir else None)  # None: ~/.cache/sgma-batch
    dates = getattr(info, "dates", None)
    start = spec.start or (str(min(dates))[:10] if dates else None)
    end = spec.end or (str(max(dates))[:10] if dates else None)
    return str(info.catalog_path), start, end


_NO_WINDOW = "no time window: pass --start and --end (YYYY-MM-DD)"


@dataclass(frozen=True)
class _Prepared:
    """Everything up to (not including) the first side effect: search results, grid, tasks, layout."""

    aoi: Any
    catalog: str
    start: str
    end: str
    model_path: str
    card: Any
    scenes: dict[str, list[Any]]
    geobox: Any
    cfg_hash: str
    tasks: list[Any]
    layout: Any
    #: (model, card) loaded in a thread while the catalogue is searched (a Future); the local executors take
    #: the model from it instead of loading the checkpoint again
    loaded: Any = None


def _prepare(spec: RunSpec, on_checked: Callable[[], None] | None = None) -> _Prepared:
    """Search and plan ``spec``; ``on_checked`` is called once the cheap checks (flags, AOI, model card)
    and the preflight (:mod:`sgma_batch.preflight`: window, signer, AOI in the catalogue, processing level,
    one asset per collection) have passed, so no setup error surfaces after Ray or the executor started."""
    from sgma_batch import preflight
    from sgma_batch.aoi import load_aoi
    from sgma_batch.colocate import STATIC_MODALITIES, plan_cell, rank_scenes
    from sgma_batch.grid import config_hash, plan_tiles, target_geobox, with_neighbour_hashes
    from sgma_batch.search import search_scenes
    from sgma_batch.store import StoreLayout
    from sgma_model import read_card

    if spec.window_px is not None and spec.overlap_px >= spec.window_px:
        raise UsageError(f"overlap {spec.overlap_px} px must be smaller than the window {spec.window_px} px")
    if spec.tile_px % 16:
        raise UsageError(f"--tile-px must be a multiple of 16, got {spec.tile_px}")
    aoi = load_aoi(spec.aoi if isinstance(spec.aoi, str) else tuple(spec.aoi),
                   **({"max_area_km2": spec.max_area_km2} if spec.max_area_km2 else {}))
    if spec.catalog is not None and (spec.start is None or spec.end is None):
        raise UsageError(_NO_WINDOW)
    if spec.model is None:
        from sgma_batch.models import default_checkpoint

        model_path = str(default_checkpoint())
    else:
        model_path = spec.model
    card = read_card(model_path)
    preflight.check_request(start=spec.start, end=spec.end, signer=spec.signer)
    # torch's import and the checkpoint load (~2 s) overlap the search and planning
    loaded = _in_background(_load_model, model_path)
    if spec.catalog is None:
        catalog, start, end = _demo_catalog(spec)
    else:
        catalog, start, end = spec.catalog, spec.start, spec.end
    if start is None or end is None:
        raise UsageError(_NO_WINDOW)
    modalities = tuple(card.modality_names)
    found = search_scenes(catalog, aoi, start, end, modalities=modalities, allow_empty=True,
                          collections=spec.collections, signer=spec.signer)
    scenes = {m: list(v) for m, v in found.items() if m in modalities}
    if not scenes:
        raise ModalityMismatchError(f"the catalogue offers none of the model's modalities {modalities}")
    dated = [m for m in scenes if m not in STATIC_MODALITIES] or list(scenes)
    if not any(scenes[m] for m in dated):  # a DEM alone (timeless) does not make a map of this window
        raise preflight.explain_empty(catalog, aoi, start, end, modalities, collections=spec.collections,
                                      demo=spec.catalog is None)
    _check_model_fits(loaded, card, scenes)
    preflight.check_scenes(scenes, card=card, allow_domain_shift=spec.allow_domain_shift)
    if on_checked is not None:
        on_checked()
    from sgma_batch.inputs import check_plan_size, checked_crs

    check_plan_size(pixels=aoi.area_km2 * 1e6 / spec.res_m**2, hint="use a coarser --res or a smaller AOI")
    geobox = target_geobox(aoi.geometry, res_m=spec.res_m, crs=checked_crs(spec.crs) or aoi.utm_epsg)
    check_plan_size(pixels=geobox.shape.y * geobox.shape.x,
                    tiles=-(-geobox.shape.y // spec.tile_px) * -(-geobox.shape.x // spec.tile_px),
                    hint="use a coarser --res, a larger --tile-px or a smaller AOI")
    cfg_hash = config_hash(_output_config(spec, aoi.geometry.wkb))
    order = rank_scenes(aoi.geometry, scenes, start, end)  # one mosaic order for the whole AOI
    tasks = plan_tiles(
        geobox, aoi.geometry, tile_px=spec.tile_px, halo_px=spec.halo_px,
        scenes_for=lambda cell: plan_cell(cell.geom, order, start, end, keep_order=True).candidates,
        model_hash=card.model_hash, cfg_hash=cfg_hash,
    )
    if spec.window_px is None:  # halo-tile windows: a tile's borders blend its neighbours' windows
        tasks = with_neighbour_hashes(tasks)
    layout = StoreLayout(
        geobox=geobox, tile_px=spec.tile_px, classes=tuple((c.name, c.color) for c in card.classes),
        modalities=modalities, write_probability=spec.write_probability, zarr_format=spec.zarr_format,
    )
    return _Prepared(aoi, str(catalog), start, end, model_path, card, scenes, geobox, cfg_hash, tasks, layout,
                     loaded)


def _in_background(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` in a daemon thread (an early error exit does not wait for it), as a Future."""
    fut: Future = Future()

    def target() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            fut.set_exception(exc)

    threading.Thread(target=target, name=f"sgma-{fn.__name__.strip('_')}", daemon=True).start()
    return fut


def _load_model(model_path: str) -> tuple[Any, Any]:
    from sgma_model import load_checkpoint

    return load_checkpoint(model_path, map_location="cpu")


def _check_model_fits(loaded: Any, card: Any, scenes: dict[str, list[Any]]) -> None:
    """Refuse a checkpoint before any store is touched: weights that do not match the card (31), or card
    bands that differ from what the sensors deliver (32). ``loaded``: the Future of :func:`_load_model`."""
    from sgma_batch.sensors import get_profile
    from sgma_model import check_inputs

    loaded.result()  # raises what loading raised
    check_inputs(card, {m: get_profile(v[0].sensor).bands for m, v in scenes.items() if v})


def _store_exists(out: str) -> bool:
    """Anything at ``out`` already (a path, or keys under an object-storage URL)."""
    from sgma_batch.storage import exists, user_location

    return exists(user_location(out))


def run_mosaic(spec: RunSpec, *, progress: Progress | None = None) -> RunSummary:
    """Map an AOI into the Zarr store ``spec.out``; resumes and updates incrementally.

    Raises:
        NothingFoundError: no scene of any model modality over the AOI and window.
        StoreIncompatibleError: ``spec.out`` holds a store with another grid, tiling or classes.
    """
    from datetime import datetime

    from sgma_batch import __version__
    from sgma_batch.execute import InferenceConfig, execute_local, execute_sequential
    from sgma_batch.execute_ray import execute_ray
    from sgma_batch.metrics import record_tile
    from sgma_batch.store import check_store, finish_store, open_or_create_store, read_manifest, tile_records_done

    from contextlib import ExitStack

    from sgma_batch.redact import redact_obj
    from sgma_batch.safety import as_store_error, check_output_target, discard_new_store, is_new_target, probe_ray_address, run_lock

    t0 = time.perf_counter()
    session: _RaySession | None = None
    executor = resolve_executor(spec)
    check_output_target(spec.out, kind="mosaic")  # never write into '.', '~', a file or a foreign folder
    fresh, finished, locked = is_new_target(spec.out), False, False  # a failed first run removes its new store
    if executor == "ray" and not _ray_connected():
        probe_ray_address(spec.address)  # a dead host:port fails in seconds, not after ray.init's retries
    locks = ExitStack()
    creating = None
    on_main = threading.current_thread() is threading.main_thread()
    # SIGTERM (a pod stopped, `timeout`) exits through the finally blocks: threads stopped, actors killed, Ray
    # shut down; the committed tiles stay (the CLI exits 143)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main else None

    def start_ray() -> None:
        nonlocal session
        # A fresh store computes every tile: start Ray now, so ray.init overlaps the search and planning. A
        # rerun may have nothing to do, so it starts Ray only once it knows there are tiles to compute.
        if executor == "ray" and not _store_exists(spec.out) and not _ray_connected():
            session = _RaySession(spec.address)

    try:
        prep = _prepare(spec, on_checked=start_ray)
        aoi, card, tasks, layout = prep.aoi, prep.card, prep.tasks, prep.layout
        provenance = {
            "model": card.architecture, "model_path": prep.model_path, "model_hash": card.model_hash,
            "config_hash": prep.cfg_hash, "config": _output_config(spec, aoi.geometry.wkb), "catalog": prep.catalog,
            "window": [prep.start, prep.end], "created": datetime.now(UTC).isoformat(), "software": __version__,
        }
        provenance = redact_obj(provenance)  # root attributes and the STAC item are world-readable
        if executor == "ray" and session is None and not _ray_connected() and _has_work(spec.out, layout, tasks):
            session = _RaySession(spec.address)
        if session is not None:
            session.wait(spec.connect_timeout_s)  # the cluster is usable before the store is touched
        locks.enter_context(run_lock(spec.out, note="sgma-batch run", break_lock=spec.break_lock, force=spec.force))
        locked = True
        creating = None
        if executor == "local" and not _store_exists(spec.out):
            # a new store has nothing to reuse: create it while the first tiles are read and forwarded
            creating = ThreadPoolExecutor(1, thread_name_prefix="sgma-store").submit(
                open_or_create_store, spec.out, layout, provenance)
            created, done = True, {}
        else:
            # read-only first: a damaged manifest or an incompatible store is refused before zarr.json changes
            done = _reusable(spec.out, tasks) if check_store(spec.out, layout) else set()  # hash and chunks match
            created = open_or_create_store(spec.out, layout, provenance)
        todo = [t for t in tasks if t.tile_id not in done]
        context = context_tiles(tasks, todo, spec.window_px)
        log.info("%d tiles: %d reused, %d to compute (%d more forwarded for their borders)", len(tasks), len(done),
                 len(todo), len(context))

        aoi_grid = aoi_in_grid_crs(aoi.geometry, prep.geobox)
        cfg = InferenceConfig(
            checkpoint=prep.model_path, store=str(spec.out), layout=layout, aoi_wkt=aoi_grid.wkt,
            window_px=spec.window_px, overlap_px=spec.overlap_px, threads=spec.threads,
            read_retries=spec.read_retries, read_backoff_s=spec.read_backoff_s,
        )
        completed = [len(done)]
        if progress is not None:
            progress(len(done), len(tasks), None)

        def on_record(rec: TileRecord) -> None:
            completed[0] += 1
            record_tile(rec, spec.res_m * spec.res_m / 1e6)  # Ray metrics (a no-op without Ray)
            if progress is not None:
                progress(completed[0], len(tasks), rec)

        if not todo:
            records: list[TileRecord] = []
        elif executor == "sequential":
            records = execute_sequential(todo, cfg, context=context, on_record=on_record,
                                         order_seed=spec.task_order_seed, loaded=prep.loaded.result())
        elif executor == "local":
            records = execute_local(todo, cfg, context=context, workers=spec.max_actors, batch_size=spec.batch_size,
                                    on_record=on_record, order_seed=spec.task_order_seed,
                                    before_write=creating.result if creating is not None else None,
                                    loaded=prep.loaded.result())
        else:
            if session is None and not _ray_connected():
                session = _RaySession(spec.address)
            if session is not None:
                session.wait()
            records = execute_ray(
                todo, cfg, context=context, max_actors=spec.max_actors, gpus_per_actor=spec.gpus_per_actor,
                batch_size=spec.batch_size, on_record=on_record, order_seed=spec.task_order_seed)
        if creating is not None:
            creating.result()  # raises what creating the store raised (also when there was nothing to compute)
        if session is not None:
            session.close(wait=False)  # the actors are gone: Ray shuts down while the store is finished
        finish_store(spec.out, layout, footprint=_lonlat(aoi.geometry))
        finished = True
    except SystemExit as exc:
        if _SIGTERM_RECEIVED.is_set() and not isinstance(exc, Terminated):
            raise Terminated from None  # raised inside Ray's wait: still a SIGTERM (exit 143, not 1)
        raise
    except OSError as exc:  # a full, read-only or vanishing file system: one line (41), not a traceback
        raise as_store_error(exc, spec.out) from None
    finally:
        if not finished and fresh and locked:  # the lock was ours, so the new store is
            _settle(creating)
            discard_new_store(spec.out)
        locks.close()
        if session is not None:
            session.close()
        if on_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    counts = {s: sum(1 for r in records if r.status == s) for s in ("computed", "degraded", "failed", "nodata")}
    if records and counts["nodata"] == len(records) and not done:
        raise EmptyDataError(
            f"no valid pixel in any of the {sum(map(len, prep.scenes.values()))} scenes over the AOI (all NaN or "
            f"nodata), so {spec.out} holds only nodata; check the assets' values and nodata, then rerun"
        )
    from sgma_batch.preflight import setup_error_from_records

    setup_error = setup_error_from_records(records)  # a dead asset in every tile: its own code, not exit 3
    if setup_error is not None:
        raise setup_error
    return RunSummary(
        store=str(spec.out), tiles=len(tasks), reused=len(done), computed=counts["computed"],
        degraded=counts["degraded"], failed=counts["failed"], nodata=counts["nodata"],
        area_km2=round(aoi.area_km2, 4), seconds=round(time.perf_counter() - t0, 3),
        scenes={m: len(v) for m, v in prep.scenes.items()}, created=created, executor=executor,
        model_work_per_px=model_work_per_px(todo, aoi_grid, spec, context),
        read_s=round(sum(r.timing.read_s for r in records if r.timing), 2) if records else None,
        model_s=round(sum(r.timing.infer_s for r in records if r.timing), 2) if records else None,
    )


# -- plan: everything but the side effects ---------------------------------------------------------------
#: Bytes per source sample by modality when the catalogue does not say (S2 DN uint16; S1 and DEM float32).
_SAMPLE_BYTES = {"s2": 2, "s1": 4, "dem": 4}


@dataclass(frozen=True)
class RunPlan:
    """What ``run`` would do, computed without writing anything (``sgma-batch plan``)."""

    store: str
    store_exists: bool
    tiles: int
    reuse: int
    compute: int
    area_km2: float
    grid: dict[str, Any]
    scenes: dict[str, int]  # modality -> scenes found
    tiles_with: dict[str, int]  # modality -> tiles where it has at least one candidate scene
    signatures: dict[str, int]  # "s1+s2" -> tiles to compute with exactly these modalities ("none" = nodata)
    bytes_to_read: int  # best-ranked scene per modality and tile to compute (uncompressed source samples)
    bytes_upper: int  # every candidate scene read (cloudy optical: the composite reads further scenes)
    model_px_per_s: float | None  # measured forward throughput of the checkpoint on this machine
    estimate_s: float | None  # model-bound time for the tiles to compute (windows incl. overlap and halo)
    model_work_per_px: float | None = None  # pixels forwarded per output (AOI) pixel of the tiles to compute
    bytes_by_res: dict[str, int] = field(default_factory=dict)  # bytes_to_read by "modality native-resolution"
    read_s_per_tile: float | None = None  # measured: median of reading up to 3 tiles to compute, one thread
    read_estimate_s: float | None = None  # read_s_per_tile x tiles to compute (one thread)
    wall_estimate_s: float | None = None  # sequential: read + model; local/ray: max of the two (overlapped)
    executor: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _res_label(modality: str, asset: Any) -> str:
    """``"s2 20 m"``, ``"s1 8.98e-05 deg"``: a modality and an asset's native pixel size in its CRS units."""
    if not asset.transform or asset.epsg is None:
        return f"{modality} unknown grid"
    unit = "deg" if asset.epsg == 4326 else "m"
    return f"{modality} {abs(asset.transform[0]):.3g} {unit}"


def _measure_read(tasks: list[Any], n: int = 3) -> float:
    """Seconds to read a tile's modalities (one thread, no retries): the median of the first ``n`` tiles."""
    from sgma_batch.read import read_modality_report
    from sgma_batch.sensors import get_profile

    times = []
    for task in tasks[:n]:
        t0 = time.perf_counter()
        for cands in task.scenes.values():
            if cands:
                read_modality_report(cands, task.halo, get_profile(cands[0].sensor), retries=0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _asset_bytes(asset: Any, modality: str, halo: Any) -> int:
    """Uncompressed bytes of the source window that covers a halo GeoBox (from the asset's grid if known):
    the halo's area in the asset's CRS over the asset's pixel area, so a 20 m band of a scene in another
    UTM zone (or in degrees) counts its own pixels, not the target's."""
    tf = asset.transform
    if not tf or asset.epsg is None or not tf[0] or not tf[4]:
        px = halo.shape.y * halo.shape.x  # unknown grid: assume the target's pixels
    else:
        px = int(_area_in(tuple(halo.extent.boundingbox), halo.crs.to_wkt(), int(asset.epsg)) / abs(tf[0] * tf[4]))
    return px * _SAMPLE_BYTES.get(modality, 4)


@functools.lru_cache(maxsize=4096)
def _area_in(bbox: tuple[float, ...], crs_wkt: str, epsg: int) -> float:
    """Area of a box of ``crs_wkt`` in the units of EPSG:``epsg`` (one reprojection per tile and CRS)."""
    from odc.geo import geom

    box = geom.box(*bbox, crs_wkt)
    return box.area if box.crs.epsg == epsg else box.to_crs(f"EPSG:{epsg}").area


def _measure_model(model_path: str, window_px: int, batch: int, threads: int, repeats: int = 5) -> float:
    """Pixels per second of a forward of ``batch`` all-modality windows: the median of ``repeats`` timed
    forwards after one warm-up (one timed forward varied 195k-713k px/s between plans on a shared machine)."""
    import torch

    from sgma_model import load_checkpoint

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, card = load_checkpoint(model_path, map_location="cpu")
        model.eval()
        g = torch.Generator().manual_seed(0)
        xs = {m: torch.randn(batch, n, window_px, window_px, generator=g) for m, n in card.band_counts().items()}
        times = []
        with torch.inference_mode():
            model(xs)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(xs)
                times.append(time.perf_counter() - t0)
        return batch * window_px * window_px / max(statistics.median(times), 1e-9)
    finally:
        torch.set_num_threads(prev)


def plan_run(spec: RunSpec, *, measure: bool = True) -> RunPlan:
    """What :func:`run_mosaic` would do for ``spec``, without creating or changing anything.

    Searches the catalogue, builds the grid and the tile plan, compares content hashes with the
    manifest of an existing store (read-only; an incompatible store raises as ``run`` would), counts
    tiles per modality and per modality signature, estimates the bytes to read and, with ``measure``,
    the model-bound time from one timed forward of the checkpoint on this machine.

    Raises:
        NothingFoundError, StoreIncompatibleError: as :func:`run_mosaic`.
    """
    from sgma_batch.store import check_store, read_manifest, tile_records_done

    prep = _prepare(spec)
    tasks = prep.tasks
    exists = check_store(spec.out, prep.layout)
    done = _reusable(spec.out, tasks) if exists else set()
    todo = [t for t in tasks if t.tile_id not in done]
    tiles_with = {m: sum(1 for t in tasks if t.scenes.get(m)) for m in prep.card.modality_names}
    signatures: dict[str, int] = {}
    best = upper = 0
    by_res: dict[str, int] = {}
    windows = 0
    for t in todo:
        key = "+".join(t.signature) or "none"
        signatures[key] = signatures.get(key, 0) + 1
        for m, cands in t.scenes.items():
            for i, scene in enumerate(cands):
                sizes = [(_res_label(m, a), _asset_bytes(a, m, t.halo)) for a in scene.assets.values()]
                n = sum(size for _, size in sizes)
                upper += n
                best += n if i == 0 else 0
                for label, size in sizes if i == 0 else ():
                    by_res[label] = by_res.get(label, 0) + size
        windows += model_pixels(t, spec.window_px, spec.overlap_px)
    window = spec.window_px or max(max(t.halo.shape.yx) for t in todo) if todo else 0
    rate = _measure_model(prep.model_path, window, 1 if spec.window_px is None else 8, spec.threads) \
        if measure and todo else None
    read_tile_s = _measure_read(todo) if measure and todo else None
    model_s = windows / rate if rate else None
    read_s = read_tile_s * len(todo) if read_tile_s is not None else None
    executor = resolve_executor(spec)
    wall = None
    if model_s is not None and read_s is not None:
        wall = read_s + model_s if executor == "sequential" else max(read_s, model_s)
    g = prep.geobox
    return RunPlan(
        store=str(spec.out), store_exists=exists, tiles=len(tasks), reuse=len(done), compute=len(todo),
        area_km2=round(prep.aoi.area_km2, 4),
        grid={"epsg": g.crs.epsg, "res_m": spec.res_m, "shape": [g.shape.y, g.shape.x], "tile_px": spec.tile_px,
              "halo_px": spec.halo_px},
        scenes={m: len(v) for m, v in prep.scenes.items()}, tiles_with=tiles_with,
        signatures=dict(sorted(signatures.items())), bytes_to_read=best, bytes_upper=upper,
        model_px_per_s=round(rate, 1) if rate else None,
        estimate_s=round(windows / rate, 2) if rate else None,
        model_work_per_px=model_work_per_px(todo, aoi_in_grid_crs(prep.aoi.geometry, g), spec),
        bytes_by_res=dict(sorted(by_res.items())),
        read_s_per_tile=round(read_tile_s, 3) if read_tile_s is not None else None,
        read_estimate_s=round(read_s, 1) if read_s is not None else None,
        wall_estimate_s=round(wall, 1) if wall is not None else None, executor=executor,
    )


def resolve_executor(spec: RunSpec) -> str:
    """``auto``: Ray when there is a cluster to use (``--address``, ``RAY_ADDRESS`` as a submitted Ray job
    has it, or a Ray already connected), else this process. On one machine the in-process executor does
    what local Ray does (every core or the GPU busy, reads overlapped) without Ray's start-up (3-10 s), its
    daemons' CPU and memory, or a second copy of the model per core (docs/performance.md)."""
    import os

    if spec.executor != "auto":
        return spec.executor
    return "ray" if spec.address or os.environ.get("RAY_ADDRESS") or _ray_connected() else "local"


def model_pixels(task: Any, window_px: int | None, overlap_px: int) -> int:
    """Pixels a tile puts through the model: its halo tile, or its sliding windows on the lattice."""
    from sgma_batch.blend import lattice_starts

    if not task.signature:
        return 0
    if window_px is None:
        return task.halo.shape.y * task.halo.shape.x
    n = 1
    for size, span, origin in zip(task.halo.shape.yx, task.crop, task.origin):
        n *= len(lattice_starts(max(size, window_px), window_px, window_px - overlap_px, offset=origin,
                                lo=span.start, hi=span.stop))
    return n * window_px * window_px


def model_work_per_px(tasks: list[Any], aoi_grid: Any, spec: RunSpec, context: list[Any] = ()) -> float | None:
    """Model work per output pixel: pixels forwarded (``tasks`` and their ``context``) / pixels of the AOI
    inside the tasks' cores."""
    from shapely.geometry import box

    out_px = sum(aoi_grid.intersection(box(*t.core.extent.boundingbox.bbox)).area for t in tasks) / spec.res_m**2
    if not out_px:
        return None
    forwarded = sum(model_pixels(t, spec.window_px, spec.overlap_px) for t in [*tasks, *context])
    return round(forwarded / out_px, 3)


def context_tiles(tasks: list[Any], todo: list[Any], window_px: int | None) -> list[Any]:
    """Tiles not to compute whose windows overlap one to compute: forwarded again for their parts (a rerun
    after a kill, or an update of some tiles). None with sliding windows inside tiles (no exchange)."""
    from sgma_batch.execute import neighbours

    if window_px is not None:
        return []
    wanted = {n for t in todo for n in neighbours(t.index)}
    computing = {t.index for t in todo}
    return [t for t in tasks if t.index in wanted and t.index not in computing]


def aoi_in_grid_crs(geometry: Any, geobox: Any) -> Any:
    """The AOI polygon (CRS84 shapely) in the grid's CRS, as shapely."""
    from odc.geo import geom

    return geom.Geometry(geometry, "EPSG:4326").to_crs(geobox.crs).geom


def _lonlat(geometry: Any) -> Any:
    from odc.geo import geom

    return geom.Geometry(geometry, "EPSG:4326")


def _settle(future: Any) -> None:
    """Wait (bounded) for a background store creation to stop, whatever it raised."""
    if future is not None:
        from concurrent.futures import wait

        wait([future], timeout=60)


def _has_work(out: str, layout: Any, tasks: list[Any]) -> bool:
    """Read-only: whether a run into ``out`` has tiles to compute (a new store has all of them)."""
    from sgma_batch.store import check_store, read_manifest, tile_records_done

    if not check_store(out, layout):
        return True
    return len(_reusable(out, tasks)) < len(tasks)


def _reusable(out: str, tasks: list[Any]) -> set[str]:
    """Tiles a rerun reuses: a done record with the task's content hash, and its chunks as the record's
    checksums say (a deleted or changed chunk is recomputed; sgma_batch/verify.py)."""
    from sgma_batch.store import read_manifest, tile_records_done
    from sgma_batch.verify import verified_done

    manifest = read_manifest(out)
    return verified_done(out, manifest, tile_records_done(manifest, tasks))


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # never imported: not connected (importing Ray costs ~1 s of start-up)
    return ray is not None and ray.is_initialized()


#: Set by the SIGTERM handler: Ray's ``ray.wait`` / ``ray.get`` check signals inside their C++ loop and turn
#: the handler's :class:`Terminated` into a plain ``SystemExit(1)``; this tells the two apart.
_SIGTERM_RECEIVED = threading.Event()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    _SIGTERM_RECEIVED.set()
    raise Terminated


class _NoSigtermWarning(logging.Filter):
    """Drops ray.init's warning that it set no SIGTERM handler off the main thread (:class:`_RaySession`
    sets it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


_NO_SIGTERM_WARNING = _NoSigtermWarning()


class _RaySession:
    """Ray started (``ray.init``) on a thread of its own, so the run can go on preparing meanwhile; shut
    down by :meth:`close`, on the same thread.

    The thread lives until then: a local Ray's processes are bound to the thread that started them and die
    with it (``PR_SET_PDEATHSIG``), so a thread that returned after ``ray.init`` would take Ray down.
    """

    def __init__(self, address: str | None) -> None:
        if threading.current_thread() is threading.main_thread():
            # What ray.init does on the main thread (and only there): SIGTERM exits through the finally
            # blocks, so the actors are killed and Ray is shut down instead of the process just vanishing.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            logging.getLogger("ray._private.worker").addFilter(_NO_SIGTERM_WARNING)
        self._address = address
        self._ready, self._stop = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="sgma-ray-session", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        import ray

        try:
            ray.init(address=self._address, include_dashboard=False, log_to_driver=False)
        except BaseException as e:  # noqa: BLE001 - handed to the caller by wait()
            self._error = e
            return
        finally:
            self._ready.set()
        self._stop.wait()
        ray.shutdown()

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until Ray is up (at most ``timeout_s``); re-raise what ``ray.init`` raised.

        Raises:
            ClusterUnreachableError: Ray did not connect in time (exit 5); ``ray.init`` stays stuck on its
                daemon thread, so the CLI exits without waiting for it.
        """
        from sgma_batch.errors import ClusterUnreachableError

        if not self._ready.wait(timeout_s):
            from sgma_batch.redact import redact

            err = ClusterUnreachableError(
                f"Ray cluster at {redact(self._address or 'RAY_ADDRESS/auto')} did not answer within "
                f"{timeout_s:g} s; start the cluster, fix --address/RAY_ADDRESS, or run without Ray")
            err.hard_exit = True  # type: ignore[attr-defined]
            raise err
        if self._error is not None:
            raise self._error

    def close(self, *, wait: bool = True) -> None:
        """Shut Ray down once it is up; ``wait``: until it is down. A ``ray.init`` still trying to connect
        is not waited for (it cannot be interrupted): its daemon thread ends with the process."""
        self._stop.set()
        if wait and self._ready.is_set():
            self._thread.join(timeout=60)
