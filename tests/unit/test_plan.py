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


def test_pool_is_capped_by_tasks_and_refuses_missing_gpus():
    from sgma_batch.errors import UsageError
    from sgma_batch.execute_ray import plan_pool

    assert plan_pool(16, 0, 1).actors == 1 and plan_pool(16, 0, 1).read_tasks == 1
    assert plan_pool(16, 0, 3).actors == 3
    with pytest.raises(UsageError, match="has 0 GPUs"):
        plan_pool(2, 0, 10, gpus_per_actor=1)
    assert plan_pool(8, 2, 10, gpus_per_actor=0.5).actors == 4


def _task(row: int, col: int, signature: tuple[str, ...]):
    from types import SimpleNamespace

    return SimpleNamespace(index=(row, col), signature=signature, tile_id=f"r{row:04d}_c{col:04d}")


def test_tiles_run_by_signature_then_in_z_order_cut_into_one_run_per_reader():
    from sgma_batch.execute import order_by_signature
    from sgma_batch.execute_ray import _next_read, _reader_queues

    tasks = [_task(r, c, ("s2",) if c < 4 else ("s1", "s2")) for r in range(6) for c in range(8)]
    ordered = order_by_signature(tasks)
    assert [t.signature for t in ordered] == sorted(t.signature for t in tasks)  # grouped by signature
    assert [t.index for t in ordered[:5]] == [(0, 4), (0, 5), (1, 4), (1, 5), (0, 6)]  # Z order within a group
    queues = _reader_queues(ordered, 3)
    assert [len(q) for q in queues] == [16, 16, 16]
    assert [t for q in queues for t in q] == ordered  # contiguous runs, in order
    assert [len(q) for q in _reader_queues(ordered[:7], 3)] == [3, 2, 2]
    # a reader takes the head of its own run; when that is empty, the tail of the longest other run
    got = [_next_read(queues, 0) for _ in range(16)]
    assert got == ordered[:16]
    queues[2].pop()
    assert _next_read(queues, 0) is ordered[31]  # run 1 is now the longest
    while any(queues):
        _next_read(queues, 2)
    assert _next_read(queues, 1) is None
