"""The Ray pool follows a real multi-node cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``).

A node joins mid-run and the pool grows onto it; another node is removed mid-run and the tiles queued on
(or read by) its actors are redone elsewhere; GPU actors asked for on a cluster without GPUs wait as the
autoscaler's demand until a GPU node joins, and fail with a clear error when none does. Each store must be
bitwise identical to an in-process sequential run of the same job.

The cluster runs in a subprocess (this file run as a script, with its own ``RAY_TMPDIR``): a second Ray
instance in the pytest process would clash with the session's local Ray (``ray_local``), and a cluster's
``ray_current_cluster`` file in the shared temp dir would capture other processes' ``ray.init()``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a multi-node Ray cluster; ~100 s under load (2 cores)

# Small tiles with a wide halo: ~80 tiles whose inputs (96 px halo boxes, > 100 KB) go through the object
# store of the node that read them, and sliding windows, so each tile takes ~0.3 s and the run lasts long
# enough for a node to join, start actors and take tiles before another node leaves.
JOB = {"tile_px": 32, "halo_px": 32, "window_px": 24, "overlap_px": 18}
GPU_JOB = {"tile_px": 128, "halo_px": 16, "window_px": 64, "overlap_px": 16}  # 6 tiles: for placement only
START_TIMEOUT_S = 4  # the GPU-less phase: how long the actors wait for a GPU node before the run fails


def _spec(catalog: Path, checkpoint: Path, out: Path, job: dict[str, Any], **kw: Any):
    return run_archive.run_spec(catalog, checkpoint, out, **{**job, **kw})


def test_pool_grows_onto_a_joining_node_and_survives_one_leaving(archive, checkpoint, tmp_path):
    from sgma_batch.run import run_mosaic

    # The cluster run goes first, in its own process; the references are computed meanwhile, in this one.
    report = tmp_path / "report.json"
    with tempfile.TemporaryDirectory(prefix="sgma-ray-", dir="/tmp") as ray_tmp:  # short: Unix socket paths
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
        env.pop("RAY_ADDRESS", None)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, __file__, str(archive), str(checkpoint), str(tmp_path), str(report)],
                                env=env, cwd=rh.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ref = run_mosaic(_spec(archive, checkpoint, tmp_path / "ref.zarr", JOB, executor="sequential"))
            ref_gpu = run_mosaic(_spec(archive, checkpoint, tmp_path / "ref_gpu.zarr", GPU_JOB, executor="sequential"))
            out, _ = proc.communicate(timeout=240)
        finally:
            proc.kill()
        seconds = time.monotonic() - t0
    assert proc.returncode == 0, out[-6000:]
    r = json.loads(report.read_text())
    print(f"cluster script: {seconds:.0f} s; events {r['events']}")

    # -- node B joins, node A leaves: every tile once, bitwise equal to the sequential run ---------------
    s = r["summary"]
    assert s["tiles"] == ref.tiles == s["computed"] > 60 and s["failed"] == s["degraded"] == 0, s
    rh.assert_same_store(tmp_path / "ref.zarr", tmp_path / "multi.zarr")
    records = rh.manifest(tmp_path / "multi.zarr")
    assert len(records) == ref.tiles and all(rec.status == "computed" for rec in records.values())
    node_of = {int(pid): node for pid, node in r["pid_node"].items()}  # every Ray worker seen, by node
    main_log, gpu_log = r["log"][: r["gpu_log_from"]], r["log"][r["gpu_log_from"] :]
    on = _forwarded_on(main_log, node_of)  # node -> tiles its inference actors forwarded
    assert on.get("b", 0) >= 1, on  # the pool grew onto the node that joined
    assert on.get("a", 0) >= 1, on  # the node that left was working
    assert "?" not in on and sum(on.values()) == s["tiles"], on  # each tile forwarded once, lost ones again
    ev = r["events"]
    assert ev["b_joined_at"] < ev["a_removed_at"] < ev["run_done_at"]
    assert ev["committed_at_removal"] <= s["tiles"] - 10, ev  # removed mid-run, with tiles left
    log = "\n".join(r["log"])
    assert "adding 1 inference actors" in log, log  # the re-plan saw the new node's CPU
    # node A's inference actor died with calls queued on it: their tiles went to the other actors
    assert any("inference actor" in m and "lost" in m for m in r["log"]), log

    # -- GPU actors on a cluster without GPUs: the autoscaler's demand, then a GPU node joins ------------
    g = r["gpu"]
    assert {"CPU": 1.0, "GPU": 1.0} in g["demand"], g  # the pending actor asks for its GPU
    assert g["summary"]["computed"] == ref_gpu.tiles == 6, g
    rh.assert_same_store(tmp_path / "ref_gpu.zarr", tmp_path / "gpu.zarr")
    assert _forwarded_on(gpu_log, node_of) == {"gpu": 6}, gpu_log

    # node B left with tiles its readers had read for the pending GPU actor: read again, none lost
    assert any(m.startswith("the inputs of") and "were lost" in m for m in gpu_log), gpu_log

    # -- ... and when no GPU node comes, a clear error after the start timeout --------------------------
    assert g["no_gpu_error"].startswith("UsageError: no inference actor ready for 4 s"), g
    assert "GPU" in g["no_gpu_error"] and "--gpus-per-actor" in g["no_gpu_error"], g
    assert START_TIMEOUT_S <= g["no_gpu_seconds"] < START_TIMEOUT_S + 30, g


def _forwarded_on(log: list[str], node_of: dict[int, str]) -> dict[str, int]:
    """Tiles forwarded on each node, from the driver's log ("inference actor 2 (pid 123) forwarded r0_c1 ...")."""
    on: dict[str, int] = {}
    for m in log:
        hit = re.fullmatch(r"inference actor \d+ \(pid (\d+)\) forwarded (.*)", m)
        if hit:
            node = node_of.get(int(hit[1]), "?")
            on[node] = on.get(node, 0) + len(hit[2].split())
    return on


# -- the cluster script (run by the test above in a subprocess) ----------------------------------------
class _Tail(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _committed(out: Path) -> int:
    d = out / "manifest"
    return sum(1 for _ in d.glob("*.json")) if d.is_dir() else 0


def _main(catalog: Path, checkpoint: Path, work: Path, report: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from sgma_batch import execute_ray
    from sgma_batch.errors import UsageError
    from sgma_batch.run import run_mosaic

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tail = _Tail()
    logging.getLogger("sgma_batch.execute_ray").addHandler(tail)
    logging.getLogger("sgma_batch.execute_ray").setLevel(logging.DEBUG)

    t0 = time.monotonic()
    events: dict[str, Any] = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = {"head": cluster.head_node, "a": cluster.add_node(num_cpus=1)}
    cluster.wait_for_nodes()
    events["cluster_up_at"] = time.monotonic() - t0
    pid_node: dict[int, str] = {}
    stop = threading.Event()

    def watch() -> None:  # which node's raylet started each Ray worker process
        while not stop.is_set():
            for name, node in list(nodes.items()):
                try:
                    raylet = node.all_processes["raylet"][0].process.pid
                except (KeyError, IndexError):  # being removed
                    continue
                for pid in _children(raylet):
                    pid_node.setdefault(pid, name)
            time.sleep(0.05)

    def wait(cond, what: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(what)
            time.sleep(0.05)

    out = work / "multi.zarr"
    threading.Thread(target=watch, daemon=True).start()
    # The run on a thread of its own: nodes are added from the main thread (Ray sets signal handlers there).
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_mosaic, _spec(catalog, checkpoint, out, JOB, executor="ray", address=cluster.address))
        wait(lambda: _committed(out) >= 1 or run.done(), "a committed tile")
        events["first_commit_at"] = time.monotonic() - t0
        nodes["b"] = cluster.add_node(num_cpus=1)
        events["b_joined_at"] = time.monotonic() - t0

        def b_forwarded() -> bool:
            return "b" in _forwarded_on(list(tail.lines), pid_node) or run.done()

        wait(b_forwarded, "a tile forwarded on node b")
        events["committed_at_removal"] = _committed(out)
        cluster.remove_node(nodes.pop("a"))
        events["a_removed_at"] = time.monotonic() - t0
        s = run.result()
        events["run_done_at"] = time.monotonic() - t0
    result: dict[str, Any] = {"summary": {k: getattr(s, k) for k in ("tiles", "computed", "failed", "degraded")},
                              "events": events}

    # GPU actors, none on the cluster: they wait as demand (seen as the autoscaler sees it) while the readers
    # read every tile ahead into their nodes' object stores; node B leaves with the tiles its readers read,
    # then a GPU node joins: its actor finds those inputs lost, and they are read again.
    from ray.autoscaler.v2.sdk import get_cluster_status

    demand: list[dict[str, float]] = []
    with ThreadPoolExecutor(1) as pool:
        n_logged = result["gpu_log_from"] = len(tail.lines)
        run = pool.submit(run_mosaic, _spec(catalog, checkpoint, work / "gpu.zarr", GPU_JOB, executor="ray",
                                            address=cluster.address, gpus_per_actor=1))

        def gpu_demand() -> bool:
            d = get_cluster_status(cluster.address).resource_demands.ray_task_actor_demand
            demand[:] = [dict(b.bundle) for r in d for b in r.bundles_by_count]
            return any("GPU" in b for b in demand) or run.done()

        wait(gpu_demand, "a GPU demand", 60)
        events["gpu_demand_at"] = time.monotonic() - t0
        wait(lambda: sum(m.startswith("read tile") for m in tail.lines[n_logged:]) >= 6 or run.done(), "6 reads")
        cluster.remove_node(nodes.pop("b"))
        nodes["gpu"] = cluster.add_node(num_cpus=2, num_gpus=1)  # room for the GPU actor and B's readers
        g = run.result()
        events["gpu_done_at"] = time.monotonic() - t0
    gpu: dict[str, Any] = {"demand": demand, "summary": {"computed": g.computed}}

    # ... and when none joins: a clear error once the actors have waited ACTOR_START_TIMEOUT_S.
    cluster.remove_node(nodes.pop("gpu"))
    execute_ray.ACTOR_START_TIMEOUT_S = START_TIMEOUT_S
    t1 = time.monotonic()
    try:
        run_mosaic(_spec(catalog, checkpoint, work / "nogpu.zarr", GPU_JOB, executor="ray", address=cluster.address,
                         gpus_per_actor=1))
        gpu["no_gpu_error"] = None
    except UsageError as exc:
        gpu["no_gpu_error"] = f"{type(exc).__name__}: {exc}"
    gpu["no_gpu_seconds"] = time.monotonic() - t1
    events["no_gpu_done_at"] = time.monotonic() - t0
    stop.set()
    result.update(gpu=gpu, events=events, pid_node={str(k): v for k, v in pid_node.items()}, log=tail.lines)
    report.write_text(json.dumps(result))
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    _main(*(Path(a) for a in sys.argv[1:5]))
