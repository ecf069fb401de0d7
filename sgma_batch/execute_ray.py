"""The Ray executor: long-lived reader and inference actor pools fed by the driver.

Readers (:class:`_ReadActor`) are long-lived, so each keeps its open datasets and GDAL block cache from
tile to tile; inference actors (:class:`_TileActor`) load the model once. A finished read's arrays go
through the object store to the least-loaded inference actor without a copy, and the driver bounds the
tiles read ahead, so memory stays O(tile). :func:`plan_pool` sizes the pools: CPU actors one per CPU (so
inference uses every core; the OS shares the cores with the readers), GPU actors one per GPU; readers one
per inference actor or two per CPU the actors leave, each asking for less CPU than an actor, with CPUs
kept out of the actor pool for them (ray #44687). A dead process is restarted by Ray and the calls queued
on it rerun. This replaced a Ray Data pipeline (``map`` reads into ``map_batches`` on an actor pool),
which cost 20 % more CPU on 2 cores: Arrow blocks of pickled tiles, helper actors, and read tasks landing
on fresh workers with cold caches (docs/performance.md, run 6).

Writing stays in the inference actor, on purpose: a tile's write is one chunk per variable (uint8), the
actor is the chunk's only writer, and no result array travels through the object store or the driver,
only a small record.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sgma_batch.execute import (
    InferenceConfig,
    Normalisation,
    TileInputs,
    TileRunner,
    batch_key,
    order_by_signature,
    read_tile,
)
from sgma_batch.grid import TileTask

log = logging.getLogger(__name__)

__all__ = ["PoolPlan", "execute_ray", "plan_pool"]


class _ReadActor:
    """A reader: a long-lived process, so its open datasets and GDAL block cache serve tile after tile
    (a task per read would land on whichever worker is idle, each with cold caches and its own imports)."""

    def __init__(self, cfg: InferenceConfig, norm: Normalisation) -> None:
        self.cfg, self.norm = cfg, norm

    def read(self, task: TileTask) -> tuple[tuple[tuple[str, ...], tuple[int, int]], TileInputs]:
        """(its :func:`batch_key`, the tile): two returns, so the driver batches by the small key alone."""
        tile = read_tile(task, self.norm, self.cfg)
        return batch_key(tile), tile


class _TileActor:
    """An inference actor: the model is loaded once, in ``__init__``; each call runs a batch of tiles."""

    def __init__(self, cfg: InferenceConfig) -> None:
        import torch

        torch.set_num_threads(cfg.threads)
        self.runner = TileRunner(cfg)

    def ready(self) -> bool:
        return True

    def auto_batch(self, tasks: Sequence[TileTask]) -> int:
        return self.runner.auto_batch(tasks)

    def run(self, *tiles: TileInputs) -> list[dict[str, Any]]:
        return self.runner.run_batch(tiles)


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

    def submit(self, args: tuple[Any, ...], actor: int | None = None, num_returns: int = 1) -> Any:
        """Call the method on an actor with ``args``; its result ref(s). The first ref is the one tracked."""
        i = self.least_loaded() if actor is None else actor
        refs = getattr(self.actors[i], self.method).options(num_returns=num_returns).remote(*args)
        first = refs[0] if num_returns > 1 else refs
        self.calls[first] = (i, args)
        self.queued[i] += 1
        return refs

    def finish(self, ref: Any) -> None:
        i, _ = self.calls.pop(ref)  # dropping the arguments (reads' refs) frees the tiles' inputs
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
    batch_size: int | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    order_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Run the plan on the connected Ray cluster (``ray.init`` is the caller's business).

    ``pool.read_tasks`` reader actors read tiles in plan order, two queued on each; finished reads of one
    :func:`batch_key` go, up to ``batch_size`` at a time (default: 1 tile on CPU actors, sized to the GPU's
    memory on GPU actors), to the inference actor with the fewest batches queued, each holding at most
    two (one running, one waiting, so an actor never idles between batches), and the tiles read ahead are
    bounded. The reads' arrays travel through the object store to the actor without a copy; only the
    tiles' small records come back. A reader or inference actor whose process dies is restarted by Ray
    (a model reloaded) and the calls queued on it run again (``ACTOR_RESTARTS``); rewriting a tile writes
    the same bytes. The actors are killed when the run ends or fails. ``order_seed`` shuffles the task
    order for determinism tests.
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
    infer = _Pool([tile_cls.remote(cfg) for _ in range(pool.actors)], "run", depth=2)
    try:
        if pool.actor_gpus > 0 and pool.actors > 1:
            # Several GPU actors: start the whole pool (models on their GPUs) before tiles flow, so a pool the
            # cluster cannot place fails with a timeout instead of waiting for ever. CPU actors (sized from
            # this cluster's own CPUs) and a single actor: no wait, the reads run while the models load.
            _wait_ready(infer.actors)
        if batch_size is None:
            batch_size = ray.get(infer.actors[0].auto_batch.remote(tasks[:1])) if pool.actor_gpus > 0 else 1
        records = _stream(tasks, readers, infer, batch_size, order_seed, on_record)
    finally:
        for a in (*readers.actors, *infer.actors):  # free their CPUs and GPUs on a shared cluster at once
            ray.kill(a)
    log.info("ray executor: %d tiles, %d readers, %d inference actors, batch %d", len(tasks), len(readers.actors),
             len(infer.actors), batch_size)
    return records


def _stream(tasks: Sequence[TileTask], readers: _Pool, infer: _Pool, batch: int, order_seed: int | None,
            on_record: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """Feed the tiles through the readers into the inference actors; the records as they complete.

    Each reader walks its own contiguous run of the tile order (see :func:`_reader_queues`), so the
    blocks its GDAL cache holds are the ones its next tile needs.
    """
    import ray

    queues = _reader_queues(order_by_signature(tasks, order_seed), len(readers.actors))
    tiles: dict[Any, Any] = {}  # a read's key ref -> its tile ref
    ready: list[tuple[Any, Any]] = []  # finished reads, oldest first: (batch key, tile ref)
    buffer = len(readers.actors) + len(infer.actors) * infer.depth * batch  # tiles read ahead, at most
    records: list[dict[str, Any]] = []
    while any(queues) or ready or readers.calls or infer.calls:
        while readers.has_room() and len(readers.calls) + len(ready) < buffer:
            i = readers.least_loaded()
            task = _next_read(queues, i)
            if task is None:
                break
            key_ref, tile_ref = readers.submit((task,), i, num_returns=2)
            tiles[key_ref] = tile_ref
        while ready and infer.has_room():
            infer.submit(tuple(_take_batch(ready, batch)))
        done, _ = ray.wait([*readers.calls, *infer.calls], num_returns=1)
        for ref in done:
            if ref in readers.calls:
                readers.finish(ref)
                ready.append((ray.get(ref), tiles.pop(ref)))
                continue
            infer.finish(ref)
            for rec in ray.get(ref):
                records.append(rec)
                if on_record is not None:
                    on_record(rec)
    return records


def _take_batch(ready: list[tuple[Any, Any]], batch: int) -> list[Any]:
    """The oldest ready tile and up to ``batch - 1`` more of its key (removed from ``ready``)."""
    key = ready[0][0]
    picked = [i for i, (k, _) in enumerate(ready) if k == key][:batch]
    refs = [ready[i][1] for i in picked]
    for i in reversed(picked):
        del ready[i]
    return refs


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
