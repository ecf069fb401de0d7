"""Execute a tile plan: read (CPU tasks) -> infer on actors (model loaded once) -> write + commit.

Two executors share every per-tile function, so they produce bitwise-identical stores:

* :func:`execute_ray` (the default): two pools of Ray actors fed by the driver. Readers
  (:class:`_ReadActor`) are long-lived, so each keeps its open datasets and GDAL block cache from tile to
  tile; inference actors (:class:`_TileActor`) load the model once. A finished read's arrays go through
  the object store to the least-loaded inference actor without a copy, and the driver bounds the tiles
  read ahead, so memory stays O(tile). :func:`plan_pool` sizes the pools: CPU actors one per CPU (so
  inference uses every core; the OS shares the cores with the readers), GPU actors one per GPU; readers
  one per inference actor or two per CPU the actors leave, each asking for less CPU than an actor, with
  CPUs kept out of the actor pool for them (ray #44687). A dead process is restarted by Ray and the calls
  queued on it rerun. This replaced a Ray Data pipeline (``map`` reads into ``map_batches`` on an actor
  pool), which cost 20 % more CPU on 2 cores: Arrow blocks of pickled tiles, helper actors, and read
  tasks landing on fresh workers with cold caches (docs/performance.md, run 6).
* :func:`execute_sequential`: the same functions in-process, for tiny jobs and tests.

Writing stays in the inference actor, on purpose: a tile's write is one chunk per variable (uint8),
the actor is the chunk's only writer, and no result array travels through the object store or the
driver, only a small record. Measured on CPU actors (``timing`` in the manifest records) the write is
about 5% of the actor's time (median 0.01-0.03 s against 0.15-0.5 s of inference per 96 px tile), so a
separate write stage would move every result through the object store to save little. On fast GPUs
the share grows; overlapping a tile's write with the next tile's inference inside the actor is the
step to take if GPU timings show it.

Tiles are ordered by modality signature so that a batch holds tiles with the same inputs, then in Z
order so that consecutive tiles overlap the same source blocks; each reader takes a contiguous run of
that order. Each tile's
windows are forwarded as one fixed set of batches (see :func:`sgma_batch.blend.blend_windows`), so a
tile's result never depends on which tiles share its batch or actor.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgma_batch.grid import TileTask, morton_key
from sgma_batch.store import CLASS_NODATA, StoreLayout, TileArrays, commit_tile, write_tile

log = logging.getLogger(__name__)

__all__ = [
    "InferenceConfig", "Normalisation", "PoolPlan", "TileInputs", "TileRunner", "execute_ray", "execute_sequential", "plan_pool",
    "read_tile",
]


@dataclass(frozen=True)
class InferenceConfig:
    """Everything a worker needs besides the tile: small, picklable."""

    checkpoint: str
    store: str
    layout: StoreLayout
    aoi_wkt: str  # the AOI polygon in the grid CRS (pixels outside are nodata)
    window_px: int = 256
    overlap_px: int = 64
    max_batch: int = 16
    threads: int = 1  # torch intra-op threads per worker
    read_retries: int = 3
    read_backoff_s: float = 0.5


@dataclass(frozen=True)
class TileInputs:
    """A tile after reading: normalised inputs and masks per present modality, and what went wrong."""

    task: TileTask
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)  # {m: (C, H, W) float32 normalised}
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)  # {m: (H, W) bool}
    scenes_used: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)  # "modality/scene" -> message
    read_s: float = 0.0


@dataclass(frozen=True)
class Normalisation:
    """A model card's per-band statistics as plain numbers: what a read task needs from the checkpoint.

    Read workers get this instead of the card, so they never import the model package (and torch).
    """

    stats: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]]  # modality -> (means, stds) in band order

    @classmethod
    def from_card(cls, card: Any) -> Normalisation:
        return cls({m.name: (tuple(b.mean for b in m.bands), tuple(b.std for b in m.bands))
                    for m in card.modalities})

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(self.stats)

    def normalise(self, modality: str, array: np.ndarray) -> np.ndarray:
        """(x - mean) / std per band of a (C, H, W) array, float32 (as ``ModelCard.normalise``)."""
        means, stds = self.stats[modality]
        mean = np.asarray(means, np.float32).reshape(-1, 1, 1)
        std = np.asarray(stds, np.float32).reshape(-1, 1, 1)
        return ((np.asarray(array, np.float32) - mean) / std).astype(np.float32)


def read_tile(task: TileTask, card: Any, cfg: InferenceConfig) -> TileInputs:
    """Read every modality of the model for a tile's halo, harmonised and normalised.

    ``card`` is the model card or its :class:`Normalisation` (anything with ``modality_names`` and
    ``normalise``).
    """
    from sgma_batch.read import read_modality_report
    from sgma_batch.sensors import get_profile

    t0 = time.perf_counter()
    inputs: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    used: dict[str, tuple[str, ...]] = {}
    errors: dict[str, str] = {}
    for m in card.modality_names:
        scenes = tuple(task.scenes.get(m, ()))
        if not scenes:
            continue
        try:
            res = read_modality_report(scenes, task.halo, get_profile(scenes[0].sensor),
                                       retries=cfg.read_retries, backoff_s=cfg.read_backoff_s)
        except Exception as exc:  # noqa: BLE001 - degrade: this modality is absent, recorded below
            errors[m] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("tile %s: modality %s absent: %s", task.tile_id, m, errors[m])
            continue
        errors.update({f"{m}/{sid}": msg for sid, msg in res.errors.items()})
        if not res.valid.any():
            continue
        x = card.normalise(m, res.data)  # (C, H, W)
        x[:, ~res.valid] = 0.0
        inputs[m], masks[m], used[m] = x, res.valid, res.scenes_used
    return TileInputs(task, inputs, masks, used, errors, time.perf_counter() - t0)


class TileRunner:
    """Loads the model once; turns :class:`TileInputs` into committed store chunks."""

    def __init__(self, cfg: InferenceConfig, device: str | None = None) -> None:
        import torch
        from rasterio.features import geometry_mask
        from shapely import wkt

        from sgma_model import load_checkpoint

        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.card = load_checkpoint(cfg.checkpoint, map_location="cpu")
        self.model.eval().to(self.device)
        self._aoi = wkt.loads(cfg.aoi_wkt)
        self._geometry_mask = geometry_mask

    def _predict(self, xb: Mapping[str, Any], mb: Mapping[str, Any]):
        import torch

        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), amp:
            out = self.model(dict(xb), masks=dict(mb))
        probs = torch.softmax(out.logits.float(), dim=1)  # (B, K, h, w)
        return probs, out.robustness.float(), out.valid  # (B, M, h, w), (B, h, w)

    def infer(self, tile: TileInputs) -> TileArrays:
        """Blend the tile's windows and build the core's output arrays (AOI and validity applied)."""
        import torch

        from sgma_batch.blend import blend_windows, to_uint8

        task = tile.task
        h, w = task.core.shape.yx
        mods = self.cfg.layout.modalities
        k = len(self.cfg.layout.classes)
        in_aoi = self._geometry_mask([self._aoi], out_shape=(h, w), transform=task.core.transform, invert=True)
        mask_bits = np.zeros((h, w), np.uint8)
        if not tile.inputs:
            return _nodata_arrays(h, w, len(mods), k, self.cfg.layout.write_probability)
        pad_y = (task.halo.shape.y - h) // 2
        pad_x = (task.halo.shape.x - w) // 2
        crop = (slice(pad_y, pad_y + h), slice(pad_x, pad_x + w))
        xs = {m: torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for m, x in tile.inputs.items()}
        ms = {m: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for m, v in tile.masks.items()}
        origin = (task.region[0].start - pad_y, task.region[1].start - pad_x)  # halo's first pixel in the grid
        res = blend_windows(self._predict, xs, ms, window_px=self.cfg.window_px, overlap_px=self.cfg.overlap_px,
                            crop=crop, max_batch=self.cfg.max_batch, origin=origin)
        for i, m in enumerate(mods):
            if m in tile.masks:
                mask_bits |= (tile.masks[m][crop].astype(np.uint8) << i)
        valid = res.valid.cpu().numpy() & in_aoi & (mask_bits > 0)
        prob = res.probability  # (K, h, w)
        cls = prob.argmax(0).cpu().numpy().astype(np.uint8)
        conf = to_uint8(prob.max(0).values)
        rob = to_uint8(res.robustness)  # (M, h, w)
        cls[~valid] = CLASS_NODATA
        conf[~valid] = 0
        mask_bits[~valid] = 0
        rob[:, ~valid] = 0
        p16 = None
        if self.cfg.layout.write_probability:
            p16 = prob.cpu().numpy().astype(np.float16)
            p16[:, ~valid] = np.nan
        return TileArrays(cls, conf, mask_bits, rob, p16)

    def run(self, tile: TileInputs) -> dict[str, Any]:
        """Infer, write the tile's chunk and commit its manifest record; returns the record."""
        task = tile.task
        t0 = time.perf_counter()
        record: dict[str, Any] = {
            "tile_id": task.tile_id,
            "index": list(task.index),
            "region": [[task.region[0].start, task.region[0].stop], [task.region[1].start, task.region[1].stop]],
            "content_hash": task.content_hash,
            "scenes": task.scene_ids(),
            "scenes_used": {m: list(v) for m, v in tile.scenes_used.items()},
            "modalities": sorted(tile.inputs),
            "error": dict(tile.errors) or None,
        }
        try:
            arrays = self.infer(tile)
            t1 = time.perf_counter()
            write_tile(self.cfg.store, self.cfg.layout, task.region, arrays)
            t2 = time.perf_counter()
            if tile.errors:  # some input failed to read: recorded, and retried by the next run
                status = "degraded"
            elif not tile.inputs or not (arrays.class_ != CLASS_NODATA).any():
                status = "nodata"
            else:
                status = "computed"
            record["timing"] = {"read_s": round(tile.read_s, 4), "infer_s": round(t1 - t0, 4),
                                "write_s": round(t2 - t1, 4)}
            record["worker"] = f"{socket.gethostname()}:{os.getpid()}"  # provenance: which process wrote it
        except Exception as exc:
            log.exception("tile %s failed", task.tile_id)
            status = "failed"
            record["error"] = {**(record["error"] or {}), "tile": f"{type(exc).__name__}: {exc}"}
        record["status"] = status
        commit_tile(self.cfg.store, record)  # after the data: the commit point
        return record


def _nodata_arrays(h: int, w: int, m: int, k: int, probability: bool) -> TileArrays:
    return TileArrays(
        np.full((h, w), CLASS_NODATA, np.uint8), np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8),
        np.zeros((m, h, w), np.uint8), np.full((k, h, w), np.nan, np.float16) if probability else None,
    )


def order_by_signature(tasks: Iterable[TileTask], seed: int | None = None) -> list[TileTask]:
    """Tiles grouped by which modalities they have, then in Z order of their grid index.

    Z order keeps consecutive tiles next to each other on the ground, in both directions, so a reader's
    GDAL block cache serves a source block to every tile that overlaps it (1024 km2, 256 px tiles on
    512 px COG blocks: 0.064 CPU s per tile read, against 0.073 in row order).
    With ``seed``, a seeded shuffle instead: results must not depend on the order (determinism tests).
    """
    ordered = sorted(tasks, key=lambda t: (t.signature, morton_key(*t.index)))
    if seed is not None:
        import random

        random.Random(seed).shuffle(ordered)
    return ordered


def execute_sequential(
    tasks: Sequence[TileTask],
    cfg: InferenceConfig,
    *,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    order_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Run every tile in this process (tiny jobs, tests); same per-tile code as the Ray path."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        runner = TileRunner(cfg)
        records = []
        for task in order_by_signature(tasks, order_seed):
            rec = runner.run(read_tile(task, runner.card, cfg))
            records.append(rec)
            if on_record is not None:
                on_record(rec)
        return records
    finally:
        torch.set_num_threads(prev)


# -- Ray -------------------------------------------------------------------------------------------------
class _ReadActor:
    """A reader: a long-lived process, so its open datasets and GDAL block cache serve tile after tile
    (a task per read would land on whichever worker is idle, each with cold caches and its own imports)."""

    def __init__(self, cfg: InferenceConfig, norm: Normalisation) -> None:
        self.cfg, self.norm = cfg, norm

    def read(self, task: TileTask) -> TileInputs:
        return read_tile(task, self.norm, self.cfg)


class _TileActor:
    """An inference actor: the model is loaded once, in ``__init__``; each call runs one tile."""

    def __init__(self, cfg: InferenceConfig) -> None:
        import torch

        torch.set_num_threads(cfg.threads)
        self.runner = TileRunner(cfg)

    def ready(self) -> bool:
        return True

    def run(self, tile: TileInputs) -> dict[str, Any]:
        return self.runner.run(tile)


class _Pool:
    """Actors and the calls queued on each: at most ``depth`` each, by default to the least-loaded."""

    def __init__(self, actors: list[Any], method: str, depth: int) -> None:
        self.actors, self.method, self.depth = actors, method, depth
        self.queued = [0] * len(actors)
        self.calls: dict[Any, tuple[int, Any]] = {}  # call ref -> (actor index, argument held until done)

    def has_room(self) -> bool:
        return min(self.queued) < self.depth

    def least_loaded(self) -> int:
        return self.queued.index(min(self.queued))

    def submit(self, arg: Any, actor: int | None = None) -> None:
        i = self.least_loaded() if actor is None else actor
        self.calls[getattr(self.actors[i], self.method).remote(arg)] = (i, arg)
        self.queued[i] += 1

    def finish(self, ref: Any) -> None:
        i, _ = self.calls.pop(ref)  # dropping the argument (a read's ref) frees the tile's inputs
        self.queued[i] -= 1


#: Fraction of the logical CPUs that CPU inference actors take; the rest is admission for the read tasks.
ACTOR_CPU_SHARE = 0.75

#: Restarts of a reader or inference actor whose process died; its queued tiles are run again each time.
ACTOR_RESTARTS = 3

#: Seconds the inference actors may take to start (placement and model load) before the run fails.
ACTOR_START_TIMEOUT_S = 300


@dataclass(frozen=True)
class PoolPlan:
    """Resources of the two actor pools, decided once from the cluster's resources.

    ``read_tasks`` is the number of reader actors, each with ``read_cpus``; reads are what the inference
    actors wait on, so they never share an actor with inference (which would read, then infer, serially).
    """

    actors: int
    actor_cpus: float
    actor_gpus: float
    read_cpus: float
    read_tasks: int


def plan_pool(
    cluster_cpus: float,
    cluster_gpus: float,
    n_tasks: int,
    *,
    threads: int = 1,
    max_actors: int | None = None,
    gpus_per_actor: float | None = None,
) -> PoolPlan:
    """Actor pool and read-task resources for a cluster (pure; unit-tested).

    ``gpus_per_actor`` None = one GPU per actor when the cluster has GPUs, CPU actors otherwise. Asking
    for GPUs on a cluster without any fails now instead of waiting forever for the pool to start.

    Raises:
        UsageError: GPUs requested but the cluster has none.
    """
    from sgma_batch.errors import UsageError

    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus_per_actor > 0 and cluster_gpus < gpus_per_actor:
        raise UsageError(
            f"{gpus_per_actor:g} GPU per actor asked for, but the Ray cluster has {cluster_gpus:g} GPUs; "
            "leave --gpus-per-actor unset (CPU actors) or connect to a cluster with GPUs"
        )
    cpus = max(float(cluster_cpus), 1.0)
    if gpus_per_actor > 0:
        # GPU actors: one CPU each to feed its GPU (less when CPUs are short), the rest for reads.
        spare = cpus - min(1.0, cpus / 2)  # keep CPUs for the reads, or the pool can starve them (ray #44687)
        slots = int(cluster_gpus // gpus_per_actor)
        actors = min(max_actors or slots, slots, max(int(spare), 1))
        actor_cpus = min(1.0, spare / actors)
    else:
        # CPU actors: one per ``threads`` CPUs, so inference can use every core. The reads take the rest of
        # the CPU time: a quarter of the logical CPUs is left to them, and the OS shares the cores between
        # the actors' and the reads' processes (Ray's CPUs are admission tokens, not pinned cores).
        actors = max_actors or max(int(cpus // threads), 1)
        actor_cpus = min(float(threads), ACTOR_CPU_SHARE * cpus / actors)
    actors = max(min(actors, n_tasks), 1)
    free = cpus - actors * actor_cpus
    # Readers: one per actor or two per CPU the actors leave, whichever is more (GPU actors infer fast and
    # need many reads; a CPU read of a 256 px tile is ~1/8 of its inference, and on 2 CPUs two reads in
    # flight beat four: 49 tiles in 27.7 s vs 30.7 s), sharing the CPUs the actors leave.
    read_tasks = max(1, min(max(actors, int(2 * free)), int(2 * cpus), n_tasks))
    read_cpus = min(0.5, actor_cpus / 2, free / read_tasks)
    return PoolPlan(actors, actor_cpus, gpus_per_actor, read_cpus, read_tasks)


def execute_ray(
    tasks: Sequence[TileTask],
    cfg: InferenceConfig,
    *,
    max_actors: int | None = None,
    gpus_per_actor: float | None = None,
    batch_size: int = 2,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    order_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Run the plan on the connected Ray cluster (``ray.init`` is the caller's business).

    ``pool.read_tasks`` reader actors read tiles in plan order, two queued on each; a finished read goes
    to the inference actor with the fewest tiles queued, each holding at most ``batch_size`` (one running,
    the rest waiting, so an actor never idles between tiles), and at most that many tiles are read ahead.
    The read's arrays travel through the object store to the actor without a copy; only the tile's small
    record comes back. A reader or inference actor whose process dies is restarted by Ray (a model
    reloaded) and the calls queued on it run again (``ACTOR_RESTARTS``); rewriting a tile writes the same
    bytes. The actors are killed when the run ends or fails. ``order_seed`` shuffles the task order for
    determinism tests.
    """
    import ray

    if not tasks:
        return []
    resources = ray.cluster_resources()
    pool = plan_pool(resources.get("CPU", 1), resources.get("GPU", 0), len(tasks), threads=cfg.threads,
                     max_actors=max_actors, gpus_per_actor=gpus_per_actor)
    log.info("ray pool: %s", pool)
    from sgma_model import read_card

    norm = Normalisation.from_card(read_card(cfg.checkpoint))
    restart = {"max_restarts": ACTOR_RESTARTS, "max_task_retries": ACTOR_RESTARTS}
    reader_cls = ray.remote(_ReadActor).options(num_cpus=pool.read_cpus, **restart)
    tile_cls = ray.remote(_TileActor).options(num_cpus=pool.actor_cpus, num_gpus=pool.actor_gpus, **restart)
    # constructor arguments by value: a restarted actor needs them again (ray #53727)
    readers = _Pool([reader_cls.remote(cfg, norm) for _ in range(pool.read_tasks)], "read", depth=2)
    infer = _Pool([tile_cls.remote(cfg) for _ in range(pool.actors)], "run", depth=max(1, batch_size))
    try:
        if pool.actor_gpus > 0 and pool.actors > 1:
            # Several GPU actors: start the whole pool (models on their GPUs) before tiles flow, so a pool the
            # cluster cannot place fails with a timeout instead of waiting for ever. CPU actors (sized from
            # this cluster's own CPUs) and a single actor: no wait, the reads run while the models load.
            _wait_ready(infer.actors)
        records = _stream(tasks, readers, infer, order_seed, on_record)
    finally:
        for a in (*readers.actors, *infer.actors):  # free their CPUs and GPUs on a shared cluster at once
            ray.kill(a)
    log.info("ray executor: %d tiles, %d readers, %d inference actors", len(tasks), len(readers.actors),
             len(infer.actors))
    return records


def _stream(tasks: Sequence[TileTask], readers: _Pool, infer: _Pool, order_seed: int | None,
            on_record: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """Feed the tiles through the readers into the inference actors; the records as they complete.

    Each reader walks its own contiguous run of the tile order (see :func:`_reader_queues`), so the
    blocks its GDAL cache holds are the ones its next tile needs.
    """
    import ray

    queues = _reader_queues(order_by_signature(tasks, order_seed), len(readers.actors))
    ready: list[Any] = []  # finished reads' refs, oldest first
    buffer = len(readers.actors) + len(infer.actors) * infer.depth  # tiles read ahead, at most
    records: list[dict[str, Any]] = []
    while any(queues) or ready or readers.calls or infer.calls:
        while readers.has_room() and len(readers.calls) + len(ready) < buffer:
            i = readers.least_loaded()
            task = _next_read(queues, i)
            if task is None:
                break
            readers.submit(task, i)
        while ready and infer.has_room():
            infer.submit(ready.pop(0))
        done, _ = ray.wait([*readers.calls, *infer.calls], num_returns=1)
        for ref in done:
            if ref in readers.calls:
                readers.finish(ref)
                ready.append(ref)
                continue
            infer.finish(ref)
            rec = ray.get(ref)
            records.append(rec)
            if on_record is not None:
                on_record(rec)
    return records


def _reader_queues(ordered: Sequence[TileTask], n: int) -> list[deque[TileTask]]:
    """``ordered`` cut into ``n`` contiguous runs of (nearly) equal length, one per reader.

    Handing tiles out in turn instead would give each reader every n-th tile: with two readers on 2 cores
    that read 0.10 CPU s per tile against 0.064 for a run of neighbours (blocks decoded twice).
    """
    k, extra = divmod(len(ordered), n)
    bounds = [i * k + min(i, extra) for i in range(n + 1)]
    return [deque(ordered[bounds[i] : bounds[i + 1]]) for i in range(n)]


def _next_read(queues: list[deque[TileTask]], reader: int) -> TileTask | None:
    """The next tile for ``reader``: the head of its own run, else one taken from the end of the longest."""
    if queues[reader]:
        return queues[reader].popleft()
    longest = max(queues, key=len)
    return longest.pop() if longest else None


def _wait_ready(actors: Sequence[Any]) -> None:
    import ray

    from sgma_batch.errors import UsageError

    refs = [a.ready.remote() for a in actors]
    done, waiting = ray.wait(refs, num_returns=len(refs), timeout=ACTOR_START_TIMEOUT_S)
    if waiting:
        raise UsageError(f"{len(waiting)} of {len(refs)} inference actors did not start within "
                         f"{ACTOR_START_TIMEOUT_S} s; the cluster cannot place them (check its GPUs)")
    ray.get(done)
