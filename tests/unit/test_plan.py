"""plan_run: everything ``run`` does up to the first side effect, on a real static archive of COGs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import run_archive

from sgma_batch.errors import NothingFoundError, StoreIncompatibleError
from sgma_batch.run import plan_run
from sgma_batch.store import StoreLayout, open_or_create_store

_spec = run_archive.run_spec


def test_plan_counts_tiles_modalities_and_bytes_without_side_effects(archive, checkpoint, tmp_path):
    out = tmp_path / "never.zarr"
    plan = plan_run(_spec(archive, checkpoint, out), measure=False)
    assert not out.exists() and not plan.store_exists
    assert (plan.tiles, plan.compute, plan.reuse) == (6, 6, 0)
    assert plan.scenes == {"s1": 2, "dem": 1}
    assert plan.tiles_with == {"s2": 0, "s1": 6, "dem": 6}
    assert plan.signatures == {"dem+s1": 6}
    assert plan.grid["epsg"] == 32633 and plan.grid["tile_px"] == 128
    assert plan.estimate_s is None and plan.model_px_per_s is None

    # Every asset lies on the target grid (same CRS, 10 m): bytes = halo pixels x bands x 4 (float32).
    from sgma_batch.aoi import load_aoi
    from sgma_batch.grid import plan_tiles, target_geobox

    aoi = load_aoi(tuple(run_archive.aoi_lonlat()))
    tasks = plan_tiles(target_geobox(aoi.geometry, res_m=10.0), aoi.geometry, tile_px=128, halo_px=16)
    halo_px = sum(t.halo.shape.y * t.halo.shape.x for t in tasks)
    assert plan.bytes_to_read == halo_px * (2 * 4 + 1 * 4)  # best S1 scene (vv, vh) + the DEM
    assert plan.bytes_upper == halo_px * (2 * 2 * 4 + 1 * 4)  # both S1 scenes + the DEM


def test_plan_measures_model_throughput(archive, checkpoint, tmp_path):
    plan = plan_run(_spec(archive, checkpoint, tmp_path / "m.zarr", window_px=32, overlap_px=8), measure=True)
    assert plan.model_px_per_s is not None and plan.model_px_per_s > 0
    # every halo tile (160 px, or less at the grid edge) is covered by windows of 32 px every 24 px
    assert plan.estimate_s is not None and plan.estimate_s > 0
    assert plan.to_dict()["compute"] == 6


def test_plan_reads_an_existing_store_and_refuses_an_incompatible_one(archive, checkpoint, tmp_path):
    spec = _spec(archive, checkpoint, tmp_path / "s.zarr")
    from sgma_batch.aoi import load_aoi
    from sgma_batch.grid import target_geobox
    from sgma_model.testing import CLASSES

    aoi = load_aoi(tuple(run_archive.aoi_lonlat()))
    classes = tuple(tuple(c) for c in CLASSES)
    same = StoreLayout(target_geobox(aoi.geometry, res_m=10.0), 128, classes, ("s2", "s1", "dem"))
    open_or_create_store(spec.out, same, {})
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "s.zarr").rglob("*"))
    plan = plan_run(spec, measure=False)
    assert plan.store_exists and plan.compute == 6  # an empty manifest: nothing to reuse yet
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "s.zarr").rglob("*")) == before

    with pytest.raises(StoreIncompatibleError, match="different layout"):
        plan_run(_spec(archive, checkpoint, spec.out, tile_px=256), measure=False)


def test_plan_nothing_found(archive, checkpoint, tmp_path):
    with pytest.raises(NothingFoundError):
        plan_run(_spec(archive, checkpoint, tmp_path / "n.zarr", start="2035-01-01", end="2035-01-31"), measure=False)
    assert not (tmp_path / "n.zarr").exists()


# -- Ray pool resources (pure) ---------------------------------------------------------------------------
@pytest.mark.parametrize(("cpus", "gpus", "threads", "max_actors"),
                         [(2, 0, 1, None), (2, 0, 1, 2), (2, 0, 1, 4), (16, 0, 2, None), (16, 4, 1, None),
                          (16, 4, 1, 2), (1, 0, 1, None), (8, 0, 1, 3)])
def test_pool_keeps_readers_placeable_bounded_and_unstarved(cpus, gpus, threads, max_actors):
    from sgma_batch.execute_ray import plan_pool

    p = plan_pool(cpus, gpus, 100, threads=threads, max_actors=max_actors)
    assert 0 < p.read_cpus < p.actor_cpus
    # every reader and every inference actor fits on the cluster at once (a reader left unplaced would
    # wait for ever), and the actors never take every CPU (ray #44687)
    assert p.actors * p.actor_cpus + p.read_tasks * p.read_cpus <= max(cpus, 1) + 1e-9
    assert min(p.actors, cpus) <= p.read_tasks <= 2 * cpus  # a reader for every actor, bounded
    assert p.actor_gpus == (1.0 if gpus else 0.0)
    assert p.actors <= (gpus or max_actors or cpus) and (max_actors is None or p.actors <= max_actors)
    if not gpus and max_actors is None:  # CPU inference on every core, a quarter of the CPUs left to reads
        assert p.actors == max(cpus // threads, 1) and p.actors * p.actor_cpus == pytest.approx(0.75 * cpus)
    if gpus:  # the CPUs the GPU actors leave all go to reads (two per CPU), not just two per actor
        assert p.read_tasks * p.read_cpus == pytest.approx(cpus - p.actors * p.actor_cpus)


def test_pool_is_capped_by_tasks_and_refuses_gpus_it_cannot_get():
    from sgma_batch.errors import UsageError
    from sgma_batch.execute_ray import plan_pool

    assert plan_pool(16, 0, 1).actors == 1 and plan_pool(16, 0, 1).read_tasks == 1
    assert plan_pool(16, 0, 3).actors == 3
    # GPUs asked for on a cluster that has none and cannot get any (its autoscaler adds none, or a local
    # instance): refused at once; with GPUs it can get, or none known, the actors wait for GPU nodes
    for max_gpus in (0, 0.5):
        with pytest.raises(UsageError, match="has 0 GPUs and cannot get more"):
            plan_pool(2, 0, 10, gpus_per_actor=1, max_gpus=max_gpus)
    assert plan_pool(2, 0, 10, gpus_per_actor=1, max_gpus=1).actors == 1
    assert plan_pool(8, 2, 10, gpus_per_actor=0.5).actors == 4


@pytest.mark.parametrize(("max_gpus", "max_actors", "actors"), [(None, None, 1), (None, 3, 3), (8, None, 8),
                                                                 (8, 3, 3), (64, None, 20)])
def test_gpu_actors_the_cluster_cannot_place_yet_are_the_autoscalers_demand(max_gpus, max_actors, actors):
    """A head node with 4 CPUs and no GPU yet (KubeRay, ``ray up`` with min_workers 0): GPU actors, one per GPU
    the autoscaler can add (or --max-actors; one when it is unknown), each asking for 1 CPU of its GPU node; the
    readers take the head's CPUs."""
    from sgma_batch.execute_ray import plan_pool

    p = plan_pool(4, 0, 20, gpus_per_actor=1 if max_gpus is None else None, max_gpus=max_gpus,
                  max_actors=max_actors)
    assert (p.actors, p.actor_gpus, p.actor_cpus) == (actors, 1.0, 1.0)
    assert p.read_tasks * p.read_cpus == pytest.approx(4) and p.read_cpus < p.actor_cpus
    # none to come: CPU actors, as before
    assert plan_pool(4, 0, 20, max_gpus=0).actor_gpus == 0.0


def test_gpu_pool_larger_than_the_cluster_keeps_what_it_places_within_its_cpus():
    from sgma_batch.execute_ray import plan_pool

    p = plan_pool(16, 2, 100, max_actors=6)  # 2 start now, 4 wait for GPU nodes
    assert p.actors == 6 and p.actor_gpus == 1.0
    assert 2 * p.actor_cpus + p.read_tasks * p.read_cpus <= 16 + 1e-9
    assert p.read_tasks * p.read_cpus == pytest.approx(16 - 2 * p.actor_cpus)


def test_readers_to_feed_follow_the_inference_rate():
    from sgma_batch.execute_ray import readers_to_feed

    assert readers_to_feed(2, read_s=0.1, infer_s=0.8) == 1  # CPU actors: a read is ~1/8 of an inference
    assert readers_to_feed(4, read_s=0.5, infer_s=0.1) == 20  # GPU actors eat tiles 5x faster than one reader
    assert readers_to_feed(3, read_s=0.2, infer_s=0.2) == 3
    assert readers_to_feed(0, 0.1, 0.1) == readers_to_feed(2, 0.0, 0.0) == 0  # nothing timed yet


def test_pool_grows_onto_a_joining_node_with_the_plans_shapes():
    from sgma_batch.execute_ray import plan_growth, plan_pool

    p = plan_pool(2, 0, 77)  # 2 CPUs: 2 actors of 0.75 CPU, 2 readers of 0.25
    assert (p.actors, p.actor_cpus, p.read_tasks, p.read_cpus) == (2, 0.75, 2, 0.25)
    grow = {"actors": 2, "readers": 2, "free_gpus": 0.0, "tiles_left": 50}
    assert plan_growth(p, cluster_cpus=2, free_cpus=0.0, **grow) == (0, 0)  # nothing new
    assert plan_growth(p, cluster_cpus=3, free_cpus=1.0, **grow) == (1, 1)  # a 1-CPU node joined
    assert plan_growth(p, cluster_cpus=6, free_cpus=4.0, **grow) == (4, 4)  # a 4-CPU node: one actor per CPU
    # ... but never past --max-actors or the tiles left, and only what fits: a starting actor's CPUs are
    # already taken out of free_cpus by the caller
    assert plan_growth(p, cluster_cpus=6, free_cpus=4.0, max_actors=3, **grow) == (1, 1)
    assert plan_growth(p, cluster_cpus=6, free_cpus=4.0, **{**grow, "tiles_left": 3}) == (1, 1)
    assert plan_growth(p, cluster_cpus=6, free_cpus=0.5, feed=4, **grow) == (0, 2)  # room for readers only
    assert plan_growth(p, cluster_cpus=6, free_cpus=0.5, **grow) == (0, 0)  # a reader per actor already
    assert plan_growth(p, cluster_cpus=6, free_cpus=-0.75, **grow) == (0, 0)
    # threads=2: one actor per 2 CPUs of the cluster
    p2 = plan_pool(4, 0, 77, threads=2)
    assert plan_growth(p2, actors=2, readers=2, cluster_cpus=8, free_cpus=4.0, free_gpus=0.0, tiles_left=50,
                       threads=2) == (2, 2)


def test_gpu_pool_grows_with_the_gpus_that_join_and_readers_with_the_rate():
    from sgma_batch.execute_ray import plan_growth, plan_pool

    p = plan_pool(4, 0, 100, gpus_per_actor=1)  # one actor waiting for a GPU node
    base = {"readers": p.read_tasks, "tiles_left": 90}
    # the waiting actor was placed on the first GPU node (8 CPUs, 1 GPU): its GPU is taken, nothing to add
    assert plan_growth(p, actors=1, cluster_cpus=12, free_cpus=7.0, free_gpus=0.0, **base) == (0, 0)
    # a second GPU node: one more actor; readers as the measured rate asks (1 read every 0.2 s, a tile
    # inferred every 0.05 s: 4 readers per actor), within the CPUs left
    assert plan_growth(p, actors=1, cluster_cpus=20, free_cpus=15.0, free_gpus=1.0, feed=8, **base) == (1, 0)
    assert plan_growth(p, actors=1, cluster_cpus=20, free_cpus=15.0, free_gpus=1.0, feed=16, **base) == (1, 8)
    assert plan_growth(p, actors=2, cluster_cpus=20, free_cpus=1.0, free_gpus=0.0, feed=16, **base) == (0, 2)
    # GPUs but no CPU to feed them: no actor (it could not be placed)
    assert plan_growth(p, actors=1, cluster_cpus=12, free_cpus=0.5, free_gpus=3.0, **base)[0] == 0
    assert plan_growth(p, actors=1, cluster_cpus=12, free_cpus=7.0, free_gpus=3.0, max_actors=2, **base)[0] == 1


def test_growth_never_asks_for_more_than_is_free_or_allowed():
    import random

    from sgma_batch.execute_ray import plan_growth, plan_pool

    rng = random.Random(7)
    for _ in range(2000):
        cpus, gpus = rng.choice([1, 2, 4, 16]), rng.choice([0, 0, 1, 4])
        threads, max_actors = rng.choice([1, 2]), rng.choice([None, 1, 3, 8])
        p = plan_pool(cpus, gpus, 100, threads=threads, max_actors=max_actors)
        cluster = cpus + rng.choice([0, 1, 4, 8])
        free_cpus, free_gpus = rng.uniform(-1, cluster - cpus + 1), float(rng.choice([0, 1, 2]))
        actors, readers = rng.randint(0, 10), rng.randint(0, 20)
        tiles_left, feed = rng.randint(1, 60), rng.randint(0, 30)
        a, r = plan_growth(p, actors=actors, readers=readers, cluster_cpus=cluster, free_cpus=free_cpus,
                           free_gpus=free_gpus, tiles_left=tiles_left, threads=threads, max_actors=max_actors,
                           feed=feed)
        assert a >= 0 and r >= 0
        assert a * p.actor_cpus + r * p.read_cpus <= max(free_cpus, 0) + 1e-6
        assert a * p.actor_gpus <= free_gpus + 1e-6
        if a:
            assert actors + a <= min(max_actors or 10**6, tiles_left)
        if r:
            assert readers + r <= min(max(actors + a, feed), 2 * cluster, tiles_left)


def _task(row: int, col: int, signature: tuple[str, ...]):
    from types import SimpleNamespace

    return SimpleNamespace(index=(row, col), signature=signature, tile_id=f"r{row:04d}_c{col:04d}")


def test_readers_take_runs_of_neighbours_in_row_major_order():
    """One frontier (row-major, so the parts waiting for neighbours stay about one row of tiles), cut into
    short runs per reader (neighbours share source blocks in its GDAL cache)."""
    from collections import deque

    from sgma_batch.execute import tile_order
    from sgma_batch.execute_ray import _next_read

    tasks = [_task(r, c, ("s2",) if c < 4 else ("s1", "s2")) for r in range(6) for c in range(8)]
    ordered = tile_order(reversed(tasks))
    assert [t.index for t in ordered] == [(r, c) for r in range(6) for c in range(8)]
    order, runs = deque(ordered), {}
    got = [_next_read(order, runs, 0, run=4) for _ in range(2)]  # reader 0: the first run
    got += [_next_read(order, runs, 1, run=4) for _ in range(5)]  # reader 1: the next run, then one more
    assert [t.index for t in got] == [(0, 0), (0, 1), (0, 4), (0, 5), (0, 6), (0, 7), (1, 0)]
    assert [t.index for t in runs[0]] == [(0, 2), (0, 3)] and [t.index for t in runs[1]] == [(1, 1), (1, 2), (1, 3)]
    while order or runs[2]:  # reader 2 takes what is left in the order, then the tails of the runs left
        _next_read(order, runs, 2, run=4)
    assert [_next_read(order, runs, 2, run=4).index for _ in range(5)] == [(1, 3), (0, 3), (1, 2), (0, 2), (1, 1)]
    assert _next_read(order, runs, 2, run=4) is None
    # a shuffled order for determinism tests
    assert sorted(t.index for t in tile_order(tasks, seed=3)) == [t.index for t in ordered]
    assert [t.index for t in tile_order(tasks, seed=3)] != [t.index for t in ordered]
