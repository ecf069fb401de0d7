"""The Ray executor: long-lived reader and inference actor pools fed by the driver, following the cluster.

Readers (:class:`_ReadActor`) are long-lived, so each keeps its open datasets and GDAL block cache from
tile to tile; inference actors (:class:`_TileActor`) load the model once. A finished read's arrays go
through the object store to the least-loaded inference actor without a copy, and the driver bounds the
tiles read ahead, so memory stays O(tile). :func:`plan_pool` sizes the pools at the start: CPU actors one
per CPU (so inference uses every core; the OS shares the cores with the readers), GPU actors one per GPU;
readers one per inference actor or two per CPU the actors leave, each asking for less CPU than an actor,
with CPUs kept out of the actor pool for them (ray #44687). This replaced a Ray Data pipeline (``map``
reads into ``map_batches`` on an actor pool), which cost 20 % more CPU on 2 cores: Arrow blocks of pickled
tiles, helper actors, and read tasks landing on fresh workers with cold caches (docs/performance.md, run 6).

The pools follow the cluster (:class:`_Pool`). Every actor asks Ray for its CPUs and GPUs even when no node
has them yet: an actor Ray cannot place yet is the demand an autoscaler sees, and it takes tiles only once
its ``ready`` call has returned (placed, model loaded), so no tile waits on a node that may never come.
Every ``REPLAN_S`` the driver looks at the cluster's free resources and adds inference actors as nodes
join, up to ``max_actors`` (:func:`plan_growth`), and readers to keep them fed (:func:`readers_to_feed`).
When a process or a whole node dies, Ray restarts its actors where it can (``ACTOR_RESTARTS``), and the
driver hands the tiles of the calls lost with it to live actors, and reads again the tiles whose arrays
were lost with the node's object store.

A tile is written once the windows over its core have all been forwarded: its own and its neighbours',
whose overlap strips (parts) are blended into its border (:class:`~sgma_batch.execute.Assembler`). The
forwards' parts come back to the driver, which assembles and writes each tile (:class:`TileWriter`, no
model): the chunk's only writer, so no lock, and a forward lost with its node is simply forwarded again.
Tiles are read in row-major order (a short run of neighbours per reader, for its GDAL block cache), so the
parts held wait on about one row of tiles.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sgma_batch.execute import (
    Assembler,
    InferenceConfig,
    Normalisation,
    TileInputs,
    TileRunner,
    TileWriter,
    batch_key,
    read_tile,
    tile_order,
)
from sgma_batch.grid import TileTask
from sgma_batch.store import TileRecord

log = logging.getLogger(__name__)

__all__ = ["PoolPlan", "execute_ray", "plan_growth", "plan_pool", "readers_to_feed"]


def _where() -> tuple[str, int]:
    """(node id, pid) of the calling actor: where it was placed, for the driver's log."""
    import os

    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid()


class _ReadActor:
    """A reader: a long-lived process, so its open datasets and GDAL block cache serve tile after tile
    (a task per read would land on whichever worker is idle, each with cold caches and its own imports)."""

    def __init__(self, cfg: InferenceConfig, norm: Normalisation) -> None:
        self.cfg, self.norm = cfg, norm

    def ready(self) -> tuple[str, int]:
        return _where()

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

    def ready(self) -> tuple[str, int]:
        return _where()

    def auto_batch(self, tasks: Sequence[TileTask]) -> int:
        return self.runner.auto_batch(tasks)

    def run(self, *tiles: TileInputs) -> list[tuple[Any, dict[tuple[int, int], Any]]]:
        """Forward a batch: each tile's :class:`~sgma_batch.execute.Forwarded` and its windows' parts, by the
        tile they land in (the driver writes them)."""
        return self.runner.forward_or_fail(tiles)


#: Fraction of the logical CPUs that CPU inference actors take; the rest is admission for the read tasks.
ACTOR_CPU_SHARE = 0.75

#: Restarts of a reader or inference actor whose process (or node) died; Ray restarts it where it can.
ACTOR_RESTARTS = 3

#: Attempts at a tile lost with an actor, a node or the tile's inputs before the run fails: a tile that kills
#: every process it runs in must end the run, not go round the pool for ever.
TILE_ATTEMPTS = ACTOR_RESTARTS + 1

#: Seconds the run waits while no inference actor (or no reader) is ready, at the start (placement and model
#: load; GPU nodes an autoscaler has to add) or after nodes left, before it fails.
ACTOR_START_TIMEOUT_S = 300

#: Seconds between two looks at the cluster (nodes joined: actors to add; actors restarting: probe again).
REPLAN_S = 1.0


@dataclass(frozen=True)
class PoolPlan:
    """Resources of the two actor pools, decided from the cluster's resources at the start.

    ``read_tasks`` is the number of reader actors, each with ``read_cpus``; reads are what the inference
    actors wait on, so they never share an actor with inference (which would read, then infer, serially).
    ``actors`` may exceed what the cluster can place now (GPU actors waiting for GPU nodes): those wait,
    asking for their resources, which is what an autoscaler scales on.
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
    max_gpus: float | None = None,
) -> PoolPlan:
    """Actor pool and read-task resources for a cluster (pure; unit-tested).

    ``max_gpus``: the GPUs the cluster can grow to (its autoscaler's configuration; the GPUs it has when it
    cannot grow), None when unknown. ``gpus_per_actor`` None = one GPU per actor when the cluster has or can
    get GPUs, CPU actors otherwise. GPU actors: ``max_actors`` of them, or one per GPU the cluster has or can
    get; those it cannot place yet wait for GPU nodes (the autoscaler's demand).

    Raises:
        UsageError: GPUs requested but the cluster has none and cannot get any.
    """
    from sgma_batch.errors import UsageError

    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if max(cluster_gpus, max_gpus or 0.0) >= 1 else 0.0
    if 0 < gpus_per_actor and max(cluster_gpus, max_gpus if max_gpus is not None else math.inf) < gpus_per_actor:
        raise UsageError(
            f"{gpus_per_actor:g} GPU per actor asked for, but the Ray cluster has {cluster_gpus:g} GPUs and cannot "
            "get more (no autoscaler adds GPU workers); leave --gpus-per-actor unset (CPU actors) or connect "
            "to a cluster with GPUs"
        )
    cpus = max(float(cluster_cpus), 1.0)
    if gpus_per_actor > 0:
        # GPU actors: one CPU each to feed its GPU (less when CPUs are short), the rest for reads.
        spare = cpus - min(1.0, cpus / 2)  # keep CPUs for the reads, or the pool can starve them (ray #44687)
        slots = int(cluster_gpus // gpus_per_actor)
        placed = min(max_actors or slots, slots, max(int(spare), 1))  # the actors this cluster places now
        actor_cpus = min(1.0, spare / placed) if placed else 1.0  # none yet: GPU nodes bring their own CPUs
        more = int(max_gpus // gpus_per_actor) if max_gpus is not None else 0
        actors = max_actors or max(slots, more, 1)
    else:
        # CPU actors: one per ``threads`` CPUs, so inference can use every core. The reads take the rest of
        # the CPU time: a quarter of the logical CPUs is left to them, and the OS shares the cores between
        # the actors' and the reads' processes (Ray's CPUs are admission tokens, not pinned cores).
        actors = max_actors or max(int(cpus // threads), 1)
        actor_cpus = min(float(threads), ACTOR_CPU_SHARE * cpus / actors)
        placed = actors
    actors = max(min(actors, n_tasks), 1)
    placed = min(placed, actors)
    free = cpus - placed * actor_cpus
    # Readers: one per actor or two per CPU the actors leave, whichever is more (GPU actors infer fast and
    # need many reads; a CPU read of a 256 px tile is ~1/8 of its inference, and on 2 CPUs two reads in
    # flight beat four: 49 tiles in 27.7 s vs 30.7 s), sharing the CPUs the actors leave.
    read_tasks = max(1, min(max(placed, int(2 * free)), int(2 * cpus), n_tasks))
    read_cpus = min(0.5, actor_cpus / 2, free / read_tasks)
    return PoolPlan(actors, actor_cpus, gpus_per_actor, read_cpus, read_tasks)


def readers_to_feed(actors: int, read_s: float, infer_s: float) -> int:
    """Readers that keep ``actors`` inference actors fed, from the mean read and inference time of a tile
    (pure): an actor takes a tile every ``infer_s``, a reader delivers one every ``read_s``. 0 before any
    tile has been timed."""
    if actors <= 0 or read_s <= 0 or infer_s <= 0:
        return 0
    return math.ceil(actors * read_s / infer_s - 1e-9)  # 3 * 0.2 / 0.2 is 3.0000000000000004


def plan_growth(
    plan: PoolPlan,
    *,
    actors: int,
    readers: int,
    cluster_cpus: float,
    free_cpus: float,
    free_gpus: float,
    tiles_left: int,
    threads: int = 1,
    max_actors: int | None = None,
    feed: int = 0,
) -> tuple[int, int]:
    """(inference actors, readers) to add to a running pool, given what the cluster has now (pure; unit-tested).

    ``actors`` and ``readers`` count the pool's live actors (ready or starting); ``free_*`` are the cluster's
    unreserved resources less what the pool's starting actors will take; ``feed`` is
    :func:`readers_to_feed`. New actors have the plan's shape. Inference actors: up to ``max_actors``, else
    one per ``threads`` CPUs of the cluster (CPU actors) or as many as the free GPUs hold (GPU actors), never
    more than tiles are left, and only what fits in the free resources now (an actor that could not be
    placed would hold no tile, but on a cluster that does not grow it would never start). Readers: one per
    inference actor or ``feed``, whichever is more, at most two per CPU, in the CPUs the new actors leave.
    """
    eps = 1e-6  # resources are sums of fractions
    if max_actors is not None:
        cap = max_actors
    elif plan.actor_gpus == 0:
        cap = max(int(cluster_cpus // threads), 1)
    else:
        cap = actors + int((free_gpus + eps) // plan.actor_gpus)
    fit = int((free_cpus + eps) // plan.actor_cpus) if plan.actor_cpus > 0 else cap
    if plan.actor_gpus > 0:
        fit = min(fit, int((free_gpus + eps) // plan.actor_gpus))
    add_actors = max(0, min(min(cap, tiles_left) - actors, fit))
    want = min(max(actors + add_actors, feed), int(2 * max(cluster_cpus, 1.0)), tiles_left)
    room = free_cpus - add_actors * plan.actor_cpus
    fit_readers = int((room + eps) // plan.read_cpus) if plan.read_cpus > 0 else want
    return add_actors, max(0, min(want - readers, fit_readers))


@dataclass
class _Member:
    """One actor of a pool: ready once its ``ready`` call has returned; ``probe`` is that call in flight."""

    handle: Any
    ready: bool = False
    probe: Any = None
    queued: int = 0
    where: tuple[str, int] | None = None  # (node id, pid) when ready


class _Pool:
    """Actors of one kind and the calls queued on each: at most ``depth`` each, only on ready actors.

    An actor is ready once its ``ready`` call has returned: placed on a node and its ``__init__`` done. A
    call that fails because its actor died (the process, or its node) takes every call queued on that actor
    with it: :meth:`lost` hands their payloads back for the driver to resubmit, and the actor is probed
    again: ready once Ray has restarted it somewhere, dropped once Ray says it is dead for good.
    """

    def __init__(self, cls: Any, args: tuple[Any, ...], method: str, depth: int, kind: str) -> None:
        self.cls, self.args, self.method, self.depth, self.kind = cls, args, method, depth, kind
        self.members: dict[int, _Member] = {}
        self.calls: dict[Any, tuple[int, Any]] = {}  # call ref -> (member, payload held until done)
        self.probes: dict[Any, int] = {}  # ready ref -> member
        self.spawned = self.dead = 0

    def spawn(self, n: int) -> list[int]:
        """Create ``n`` actors (they ask Ray for their resources at once) and probe them; their ids."""
        ids = []
        for _ in range(n):
            i = self.spawned
            self.spawned += 1
            self.members[i] = _Member(self.cls.remote(*self.args))
            self._probe(i)
            ids.append(i)
        return ids

    def _probe(self, i: int) -> None:
        m = self.members[i]
        m.probe = m.handle.ready.remote()
        self.probes[m.probe] = i

    def reprobe(self) -> None:
        """Probe again the actors that are neither ready nor being probed (restarting, as far as Ray said)."""
        for i, m in self.members.items():
            if not m.ready and m.probe is None:
                self._probe(i)

    def settle(self, ref: Any) -> str:
        """A finished probe: ``ready``, ``waiting`` (Ray is restarting it: probed at the next look) or ``dead``."""
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        i = self.probes.pop(ref)
        m = self.members[i]
        m.probe = None
        try:
            m.where = ray.get(ref)
        except ActorDiedError as exc:  # restarts used up, or killed: gone for good
            if exc.actor_init_failed:
                raise  # its __init__ raised (the model does not load): every replacement would fail alike
            self.drop(i)
            self.dead += 1
            if self.dead > ACTOR_RESTARTS:  # processes that keep dying, tile or no tile: stop replacing them
                raise RuntimeError(f"{self.dead} {self.kind}s died for good, each after {ACTOR_RESTARTS} "
                                   "restarts; see the Ray logs") from exc
            return "dead"
        except RayActorError:  # ActorUnavailableError: restarting, possibly waiting for a node
            return "waiting"
        m.ready = True
        log.info("%s %d ready on node %s (pid %d)", self.kind, i, m.where[0][:12], m.where[1])
        return "ready"

    def drop(self, i: int) -> None:
        import ray

        m = self.members.pop(i)
        ray.kill(m.handle)  # no restart: its resources are free for a replacement
        log.warning("%s %d is dead; %d left", self.kind, i, len(self.members))

    @property
    def ready(self) -> list[int]:
        return [i for i, m in self.members.items() if m.ready]

    def starting(self) -> list[int]:
        return [i for i, m in self.members.items() if not m.ready]

    def least_loaded(self) -> int | None:
        """The ready actor with the fewest calls queued, if one has room."""
        room = [(m.queued, i) for i, m in self.members.items() if m.ready and m.queued < self.depth]
        return min(room)[1] if room else None

    def submit(self, args: tuple[Any, ...], payload: Any, i: int, num_returns: int = 1) -> Any:
        """Call the method on actor ``i``; its result ref(s). The first ref is the one tracked."""
        m = self.members[i]
        refs = getattr(m.handle, self.method).options(num_returns=num_returns).remote(*args)
        first = refs[0] if num_returns > 1 else refs
        self.calls[first] = (i, payload)
        m.queued += 1
        return refs

    def finish(self, ref: Any) -> Any:
        """A call that returned: its payload (dropping it frees what it held, e.g. the tiles' inputs)."""
        i, payload = self.calls.pop(ref)
        if i in self.members:
            self.members[i].queued -= 1
        return payload

    def lost(self, i: int) -> list[tuple[Any, Any]]:
        """Actor ``i`` died: (ref, payload) of every call queued on it (to resubmit); it is probed again."""
        lost = [ref for ref, (j, _) in self.calls.items() if j == i]
        payloads = [(ref, self.calls.pop(ref)[1]) for ref in lost]
        m = self.members.get(i)
        if m is not None:
            m.ready, m.queued = False, 0
            if m.probe is None:
                self._probe(i)
            log.warning("%s %d lost (its process or node died) with %d calls; resubmitting them", self.kind, i,
                        len(payloads))
        return payloads

    def refs(self) -> list[Any]:
        return [*self.calls, *self.probes]

    def kill(self) -> None:
        import ray

        for m in self.members.values():  # free their CPUs and GPUs on a shared cluster at once
            ray.kill(m.handle)


def _max_gpus(resources: dict[str, float]) -> float | None:
    """The GPUs the connected cluster can grow to, None when unknown.

    A local instance this process started cannot grow; an autoscaler (v2, e.g. KubeRay's) publishes its
    node groups, read as Ray Train does. Other clusters (``ray up`` with the v1 autoscaler) do not say:
    unknown, so actors asking for GPUs wait for nodes (up to ``ACTOR_START_TIMEOUT_S``).
    """
    import ray

    try:
        node = ray._private.worker._global_node
        if node is not None and node.head:
            return float(resources.get("GPU", 0))
        limits = ray._private.state.state.get_max_resources_from_cluster_config()
    except (AttributeError, ImportError, RuntimeError) as exc:  # private API: its absence means unknown
        log.debug("cluster limits unknown: %s", exc)
        return None
    return None if limits is None else float(limits.get("GPU", 0))


def execute_ray(
    tasks: Sequence[TileTask],
    cfg: InferenceConfig,
    *,
    max_actors: int | None = None,
    gpus_per_actor: float | None = None,
    batch_size: int | None = None,
    on_record: Callable[[TileRecord], None] | None = None,
    order_seed: int | None = None,
    context: Sequence[TileTask] = (),
) -> list[TileRecord]:
    """Run the plan on the connected Ray cluster (``ray.init`` is the caller's business).

    Reader actors read tiles in row-major order, two queued on each; finished reads of one
    :func:`batch_key` go, up to ``batch_size`` at a time (default: 1 tile on CPU actors, sized to the GPU's
    memory on GPU actors), to the ready inference actor with the fewest batches queued, each holding at most
    two (one running, one waiting, so an actor never idles between batches), and the tiles read ahead are
    bounded. The reads' arrays travel through the object store to the actor without a copy; the forwards'
    parts come back to the driver, which writes each tile once its neighbours' parts are in. The pools grow
    as nodes join and survive nodes leaving (see the module's docstring). The actors are killed when the run
    ends or fails. ``context``: committed tiles next to ``tasks``, forwarded for their parts only.
    ``order_seed`` shuffles the tile order for determinism tests.

    Raises:
        UsageError: GPUs asked for on a cluster that has none and cannot get any, or no inference actor (or
            no reader) ready for ``ACTOR_START_TIMEOUT_S`` while tiles are left.
        RuntimeError: a tile lost ``TILE_ATTEMPTS`` times, or actors that keep dying.
        ray.exceptions.ActorDiedError: an actor's ``__init__`` raised (e.g. the model does not load).
    """
    import ray

    if not tasks:
        return []
    resources = ray.cluster_resources()
    pool = plan_pool(resources.get("CPU", 1), resources.get("GPU", 0), len(tasks) + len(context), threads=cfg.threads,
                     max_actors=max_actors, gpus_per_actor=gpus_per_actor, max_gpus=_max_gpus(resources))
    log.info("ray pool: %s", pool)
    from sgma_model import read_card

    norm = Normalisation.from_card(read_card(cfg.checkpoint))
    # Ray restarts a dead actor where it can; the driver, not Ray, runs a lost call again (on any ready
    # actor), so no call waits on an actor whose restart waits for a node that may never come.
    restart = {"max_restarts": ACTOR_RESTARTS, "max_task_retries": 0}
    reader_cls = ray.remote(_ReadActor).options(num_cpus=pool.read_cpus, **restart)
    tile_cls = ray.remote(_TileActor).options(num_cpus=pool.actor_cpus, num_gpus=pool.actor_gpus, **restart)
    # constructor arguments by value: a restarted actor needs them again (ray #53727)
    infer = _Pool(tile_cls, (cfg,), "run", depth=2, kind="inference actor")
    readers = _Pool(reader_cls, (cfg, norm), "read", depth=2, kind="reader")
    try:
        infer.spawn(pool.actors)  # the larger shapes first, so the readers fill the gaps they leave
        readers.spawn(pool.read_tasks)
        stream = _Stream(tasks, context, cfg, pool, readers, infer, batch_size, order_seed, on_record, max_actors)
        records = stream.run()
    finally:
        readers.kill()
        infer.kill()
    log.info("ray executor: %d tiles, %d readers, %d inference actors, batch %s", len(tasks),
             readers.spawned, infer.spawned, stream.batch)
    return records


class _Stream:
    """The driver loop: tiles through the readers into the inference actors and their parts into the
    writer, the pools following the cluster.

    Readers take the tiles in row-major order, ``READ_RUN`` neighbours at a time, so the blocks a reader's
    GDAL cache holds are the ones its next tile needs while the parts held stay about one row of tiles.
    """

    def __init__(self, tasks: Sequence[TileTask], context: Sequence[TileTask], cfg: InferenceConfig,
                 plan: PoolPlan, readers: _Pool, infer: _Pool, batch: int | None, order_seed: int | None,
                 on_record: Callable[[TileRecord], None] | None, max_actors: int | None) -> None:
        self.plan, self.readers, self.infer = plan, readers, infer
        self.n_tasks, self.to_forward, self.forwarded = len(tasks), len(tasks) + len(context), 0
        self.batch = batch if batch is not None else (None if plan.actor_gpus > 0 else 1)
        self.on_record, self.max_actors, self.threads = on_record, max_actors, cfg.threads
        self.probe_task = tasks[0]
        self.order = deque(tile_order([*tasks, *context], order_seed))
        self.runs: dict[int, deque[TileTask]] = {}  # reader -> the rest of its run of neighbours
        self.assembler, self.writer = Assembler(tasks, context), TileWriter(cfg)
        self.redo: deque[TileTask] = deque()  # tiles to read again (their inputs were lost), first
        self.tiles: dict[Any, Any] = {}  # a read's key ref -> its tile ref
        self.ready: list[tuple[Any, Any, TileTask]] = []  # finished reads, oldest first: (key, tile ref, task)
        self.records: list[TileRecord] = []
        self.attempts: dict[str, int] = {}
        self.read_s = self.infer_s = 0.0
        self.stalled: dict[str, float] = {}

    def reads_left(self) -> bool:
        return bool(self.order or self.redo or any(self.runs.values()))

    def pending(self) -> bool:
        return bool(self.reads_left() or self.ready or self.readers.calls or self.infer.calls)

    def run(self) -> list[TileRecord]:
        import ray

        next_look = time.monotonic()
        while self.pending():
            if time.monotonic() >= next_look:
                self.look()
                next_look = time.monotonic() + REPLAN_S
            self.feed()
            refs = [*self.readers.refs(), *self.infer.refs()]
            wait = max(next_look - time.monotonic(), 0.0)
            if not refs:
                time.sleep(wait)
                continue
            done, _ = ray.wait(refs, num_returns=1, timeout=wait)
            for ref in done:
                self.settle(ref)
        if len(self.records) != self.n_tasks:  # every tile forwarded, so every tile complete: a bug if not
            raise RuntimeError(f"{self.n_tasks - len(self.records)} tiles still wait for parts after every "
                               "forward; the assembler lost track of them")
        return self.records

    def feed(self) -> None:
        """Queue reads on the ready readers, and batches of finished reads on the ready inference actors."""
        buffer = len(self.readers.ready) + max(len(self.infer.ready), 1) * self.infer.depth * (self.batch or 1)
        while len(self.readers.calls) + len(self.ready) < buffer:
            i = self.readers.least_loaded()
            if i is None:
                break
            task = self.redo.popleft() if self.redo else _next_read(self.order, self.runs, i)
            if task is None:
                break
            key_ref, tile_ref = self.readers.submit((task,), task, i, num_returns=2)
            self.tiles[key_ref] = tile_ref
        while self.ready and self.batch is not None:
            i = self.infer.least_loaded()
            if i is None:
                break
            picked = _take_batch(self.ready, self.batch)
            self.infer.submit(tuple(ref for _, ref, _ in picked), picked, i)

    def settle(self, ref: Any) -> None:
        """Handle one finished ref: a probe, a read or a batch (one abandoned meanwhile: nothing)."""
        import ray
        from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

        if ref in self.readers.probes:
            self.readers.settle(ref)
        elif ref in self.infer.probes:
            if self.infer.settle(ref) == "ready" and self.batch is None:
                self._size_batch()
        elif ref in self.readers.calls:
            i = self.readers.calls[ref][0]
            try:
                key = ray.get(ref)
            except (RayActorError, ObjectLostError) as exc:  # the reader died: its queued reads go to others
                for lost_ref, task in self.readers.lost(i):
                    del self.tiles[lost_ref]
                    self._again(task, exc)
                self.order.extendleft(reversed(self.runs.pop(i, ())))  # and the rest of its run
                return
            task = self.readers.finish(ref)
            self.ready.append((key, self.tiles.pop(ref), task))
            log.debug("read tile %s on reader %d", task.tile_id, i)
        elif ref in self.infer.calls:
            i = self.infer.calls[ref][0]
            try:
                forwards = ray.get(ref)
            except (RayTaskError, ObjectLostError) as exc:
                if isinstance(exc, RayTaskError) and not isinstance(exc, (ObjectLostError, RayActorError)):
                    raise  # the actor's own code failed (a tile's model error is a record, not this)
                # an input was lost (it lived in the object store of a node that left): read its tiles again
                picked = self.infer.finish(ref)
                log.warning("the inputs of %d tiles were lost with the node that read them; reading them again",
                            len(picked))
                for _, _, task in picked:
                    self._again(task, exc)
                return
            except RayActorError as exc:  # the actor died: its batches go to ready actors, inputs as they are
                lost = [item for _, picked in self.infer.lost(i) for item in picked]
                for _, _, task in lost:
                    self._count(task, exc)
                self.ready[:0] = lost
                return
            self.infer.finish(ref)
            where = self.infer.members[i].where if i in self.infer.members else None
            log.debug("inference actor %d (pid %s) forwarded %s", i, where and where[1],
                      " ".join(fwd.task.tile_id for fwd, _ in forwards))
            for fwd, parts in forwards:
                self.forwarded += 1
                self.read_s += fwd.read_s
                self.infer_s += fwd.forward_s
                for own, got in self.assembler.add(fwd.task.index, fwd, parts):
                    rec = self.writer.write(own, got)
                    self.records.append(rec)
                    if self.on_record is not None:
                        self.on_record(rec)

    def _size_batch(self) -> None:
        """Tiles per batch on GPU actors, measured once on the first ready one."""
        import ray
        from ray.exceptions import RayActorError

        i = self.infer.ready[0]
        try:
            self.batch = ray.get(self.infer.members[i].handle.auto_batch.remote([self.probe_task]))
        except RayActorError:  # died meanwhile: the next ready actor measures
            self.infer.lost(i)

    def _count(self, task: TileTask, exc: BaseException) -> None:
        n = self.attempts[task.tile_id] = self.attempts.get(task.tile_id, 0) + 1
        if n >= TILE_ATTEMPTS:
            raise RuntimeError(f"tile {task.tile_id} was lost {n} times with its actor, node or inputs; "
                               f"last: {type(exc).__name__}") from exc

    def _again(self, task: TileTask, exc: BaseException) -> None:
        """Read ``task`` again (first): its read or its inputs were lost."""
        self._count(task, exc)
        self.redo.append(task)

    def look(self) -> None:
        """Look at the cluster: probe restarting actors again, grow the pools, fail when none can start."""
        import ray

        self.readers.reprobe()
        self.infer.reprobe()
        for pool in (self.infer, self.readers):
            if pool.ready or (pool is self.readers and not self.reads_left()):
                self.stalled.pop(pool.kind, None)
            else:
                since = self.stalled.setdefault(pool.kind, time.monotonic())
                if time.monotonic() - since > ACTOR_START_TIMEOUT_S:
                    raise self._stall_error(pool)
        total, free = ray.cluster_resources(), ray.available_resources()
        starting = (len(self.infer.starting()), len(self.readers.starting()))
        free_cpus = free.get("CPU", 0.0) - starting[0] * self.plan.actor_cpus - starting[1] * self.plan.read_cpus
        free_gpus = free.get("GPU", 0.0) - starting[0] * self.plan.actor_gpus
        feed = readers_to_feed(len(self.infer.ready), self.read_s / max(self.forwarded, 1),
                               self.infer_s / max(self.forwarded, 1))
        add_actors, add_readers = plan_growth(
            self.plan, actors=len(self.infer.members), readers=len(self.readers.members),
            cluster_cpus=total.get("CPU", 0.0), free_cpus=free_cpus, free_gpus=free_gpus,
            tiles_left=self.to_forward - self.forwarded, threads=self.threads, max_actors=self.max_actors,
            feed=feed)
        if add_actors or add_readers:
            log.info("cluster has %g CPUs, %g GPUs (%g, %g free): adding %d inference actors, %d readers",
                     total.get("CPU", 0), total.get("GPU", 0), free.get("CPU", 0), free.get("GPU", 0),
                     add_actors, add_readers)
            self.infer.spawn(add_actors)
            self.readers.spawn(add_readers)

    def _stall_error(self, pool: _Pool) -> Exception:
        import ray

        from sgma_batch.errors import UsageError

        res = ray.cluster_resources()
        gpus = self.plan.actor_gpus if pool is self.infer else 0.0
        cpus = self.plan.actor_cpus if pool is self.infer else self.plan.read_cpus
        hint = ("connect to a cluster with GPUs (or whose autoscaler adds GPU workers), or leave "
                "--gpus-per-actor unset for CPU actors") if gpus else "check the cluster's nodes and CPUs"
        return UsageError(
            f"no {pool.kind} ready for {ACTOR_START_TIMEOUT_S} s: {len(pool.members)} ask for {cpus:g} CPU and "
            f"{gpus:g} GPU each, and the Ray cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} "
            f"GPUs; {hint}"
        )


def _take_batch(ready: list[tuple[Any, Any, TileTask]], batch: int) -> list[tuple[Any, Any, TileTask]]:
    """The oldest ready tile and up to ``batch - 1`` more of its key (removed from ``ready``)."""
    key = ready[0][0]
    picked = [i for i, item in enumerate(ready) if item[0] == key][:batch]
    items = [ready[i] for i in picked]
    for i in reversed(picked):
        del ready[i]
    return items


#: Tiles a reader takes from the row-major order at a time: neighbours on the ground share source blocks
#: (a read of a run of neighbours costs 0.064 CPU s per tile against 0.10 for every n-th tile, on 2 cores).
READ_RUN = 4


def _next_read(order: deque[TileTask], runs: dict[int, deque[TileTask]], reader: int,
               run: int = READ_RUN) -> TileTask | None:
    """The next tile for ``reader``: the rest of its run, else a new run of up to ``run`` tiles from the head
    of ``order``, else the tail of the longest run another reader left."""
    mine = runs.setdefault(reader, deque())
    if not mine:
        for _ in range(min(run, len(order))):
            mine.append(order.popleft())
    if mine:
        return mine.popleft()
    longest = max(runs.values(), key=len)
    return longest.pop() if longest else None
