"""End-to-end benchmarks of `sgma-batch run` on a synthetic archive with the shipped demo model.

1. sgma-batch (Ray, and ``--sequential``) versus the naive sequential baseline
   (benchmarks/naive_baseline.py) on the same AOI, archive and model: throughput ratio and both peak
   memories (RSS summed over the process tree: driver, raylet, GCS, Ray workers).
2. End-to-end versus model-only on the same tiles: the pipeline's per-tile inference (sliding windows,
   blending) on inputs already in memory, timed alone in one process with 1 torch thread (what one actor
   uses) and with 2, and in one 1-thread process per CPU started together (the model on every core);
   ratio = end-to-end throughput / model-only throughput.
3. Scaling: 1x, 4x, 16x the AOI area (one archive, generated once, outside every timed part): time per
   km2 (CLI wall time, and the steady state between the first and the last tile commit) and peak RSS.
4. Ray: the default (one CPU inference actor per CPU) versus ``--max-actors 1``.
5. Ray start-up alone (``ray.init`` + one task + shutdown), and per run the time to the first tile commit,
   so a small job's wall time is not read as throughput.

Every measurement runs in a fresh process, with the 1-minute load average recorded before and after it
(``--max-load`` waits, polling every 30 s, until the machine is quiet: up to 15 min before the
first measurement, up to 2 min before each later one; ``wait`` in each row says how it went). Ray runs use a private temp dir
(RAY_TMPDIR), removed at the end. Prints tables and writes benchmarks/results/pipeline_throughput.json.
Nothing here asserts on time.

    python benchmarks/pipeline_throughput.py --size-km 9 --base-km 2 --max-load 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sgma_batch.store import TileRecord

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_throughput.json"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway local cluster on a private machine


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def wait_quiet(max_load: float | None, limit_s: float = 900) -> dict:
    """Wait (polling every 30 s, at most ``limit_s``) until the 1-minute load is below ``max_load``."""
    t0 = time.time()
    while max_load is not None and loadavg()[0] >= max_load and time.time() - t0 < limit_s:
        print(f"  waiting for a quiet machine: load {loadavg()}", flush=True)
        time.sleep(30)
    return {"waited_s": round(time.time() - t0, 1), "quiet": max_load is None or loadavg()[0] < max_load}


_HZ = os.sysconf("SC_CLK_TCK")


def _tree(*pids: int) -> dict[int, tuple[int, float, str]]:
    """``pids`` and all their descendants, from /proc: pid -> (RSS KiB, CPU seconds, first word of cmdline)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out: dict[int, tuple[int, float, str]] = {}
    todo = list(pids)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        todo.extend(children.get(p, []))
        try:
            rss = next((int(ln.split()[1]) for ln in Path(f"/proc/{p}/status").read_text().splitlines()
                        if ln.startswith("VmRSS:")), 0)
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            title = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        out[p] = (rss, (int(f[11]) + int(f[12])) / _HZ, title)
    return out


def _tree_rss_kib(*pids: int) -> int:
    """Resident memory of ``pids`` and all their descendants (KiB), each process counted once."""
    return sum(rss for rss, _, _ in _tree(*pids).values())


def cpu_by_role(driver: int, seen: dict[int, tuple[float, str]]) -> dict[str, float]:
    """CPU seconds of a run's processes, by role: the CLI process, inference actors, readers, the rest of Ray."""
    roles: dict[str, float] = {}
    for pid, (cpu, title) in seen.items():
        role = ("driver" if pid == driver else "inference" if title.startswith("ray::_TileActor")
                else "readers" if title.startswith("ray::_ReadActor") else "ray" if "ray" in title else "other")
        roles[role] = round(roles.get(role, 0.0) + cpu, 1)
    return roles


MAX_LOAD: float | None = None
_FIRST = True


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``: wall seconds, peak RSS of its process tree (sampled every 0.1 s), its JSON stdout,
    and the load average before and after."""
    global _FIRST
    wait = wait_quiet(MAX_LOAD, 900 if _FIRST else 120)  # up to 15 min before the first, 2 min between runs
    _FIRST = False
    load0 = loadavg()
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    peak = [0]
    seen: dict[int, tuple[float, str]] = {}  # pid -> (CPU seconds, title), the last sample of each process
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            tree = _tree(proc.pid)
            peak[0] = max(peak[0], sum(rss for rss, _, _ in tree.values()))
            for pid, (_, cpu, title) in tree.items():  # an actor's title is set once it runs: keep a ray:: one
                keep = seen.get(pid, (0.0, ""))[1]
                seen[pid] = (cpu, keep if keep.startswith("ray::") and not title.startswith("ray::") else title)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    load1 = loadavg()
    print(f"  {' '.join(Path(c).name for c in cmd[1:4])} ... {seconds:.1f} s, tree peak RSS {peak[0] / 1024:.0f} MiB,"
          f" load {load0[0]:.2f} -> {load1[0]:.2f}", flush=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {err[-2000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return {"wall_s": round(seconds, 2), "peak_rss_mib": round(peak[0] / 1024, 1), "started_unix": started,
            "cpu_s": cpu_by_role(proc.pid, seen),
            "load_start": load0, "load_end": load1, "wait": wait,
            "result": json.loads(lines[-1]) if lines else None}


def _px(rec: TileRecord) -> int:
    (y0, y1), (x0, x1) = rec.region
    return (y1 - y0) * (x1 - x0)


def steady_state(store: Path, started_unix: float) -> dict:
    """Start-up (process start to the first tile commit) and the steady state: tiles committed after the
    first, over the time between the first and the last commit (km2 of tile cores, 10 m pixels)."""
    from sgma_batch.store import TileRecord

    recs = sorted(((p.stat().st_mtime, TileRecord.from_json(p.read_bytes())) for p in (store / "manifest").glob("*.json")),
                  key=lambda r: r[0])  # two commits in the same mtime tick must not compare the records
    if not recs:
        return {"first_commit_s": None, "tiles_per_s": None, "km2_per_h": None}
    first = round(recs[0][0] - started_unix, 2)
    span = recs[-1][0] - recs[0][0]
    if len(recs) < 3 or span <= 0:
        return {"first_commit_s": first, "tiles_per_s": None, "km2_per_h": None}
    px = sum(_px(r) for _, r in recs[1:])
    return {"first_commit_s": first, "steady_span_s": round(span, 2),
            "tiles_per_s": round((len(recs) - 1) / span, 3), "km2_per_h": round(px * 1e-4 / span * 3600, 1)}


def aoi_bbox(info, side_km: float) -> tuple[str, float]:
    """A square AOI of ``side_km`` centred in the archive, as a lon/lat bbox string, and its area (km2)."""
    from odc.geo.geom import box

    b = info.geobox.boundingbox
    cx, cy, half = (b.left + b.right) / 2, (b.bottom + b.top) / 2, side_km * 500
    lon0, lat0, lon1, lat1 = box(cx - half, cy - half, cx + half, cy + half, info.geobox.crs).to_crs(4326).boundingbox
    return f"{lon0:.6f},{lat0:.6f},{lon1:.6f},{lat1:.6f}", side_km * side_km


def _model_only_setup(catalog: str, aoi: str, start: str, end: str, tile_px: int, halo_px: int):
    """The run's tile plan and a :class:`TileRunner` for it (model loaded), as ``run`` would build them."""
    from sgma_batch.execute import InferenceConfig, TileRunner
    from sgma_batch.run import RunSpec, _prepare, aoi_in_grid_crs

    spec = RunSpec(aoi=aoi, out="unused.zarr", start=start, end=end, catalog=catalog, tile_px=tile_px,
                   halo_px=halo_px)
    prep = _prepare(spec)
    cfg = InferenceConfig(checkpoint=prep.model_path, store="unused.zarr", layout=prep.layout,
                          aoi_wkt=aoi_in_grid_crs(prep.aoi.geometry, prep.geobox).wkt, window_px=spec.window_px,
                          overlap_px=spec.overlap_px)
    return prep.tasks, TileRunner(cfg), cfg


def _km2(tiles) -> float:
    return sum((t.task.region[0].stop - t.task.region[0].start) * (t.task.region[1].stop - t.task.region[1].start)
               for t in tiles) * 1e-4


def model_only(catalog: str, aoi: str, start: str, end: str, tile_px: int, halo_px: int,
               threads_list: tuple[int, ...] = (1, 2)) -> dict:
    """Read every tile first (untimed), warm up on one tile, then time only the pipeline's per-tile
    inference (``TileRunner.infer``: windows, forward, blending) with each torch thread count."""
    import torch

    from sgma_batch.execute import read_tile

    tasks, runner, cfg = _model_only_setup(catalog, aoi, start, end, tile_px, halo_px)
    t0 = time.perf_counter()
    tiles = [read_tile(t, runner.card, cfg) for t in tasks]
    read_s = time.perf_counter() - t0
    km2 = _km2(tiles)
    runner.infer(tiles[0])  # warm-up (lazy init), untimed
    res: dict = {"tiles": len(tiles), "km2": round(km2, 3), "read_all_s": round(read_s, 3)}
    for threads in threads_list:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        for tile in tiles:
            runner.infer(tile)
        s = time.perf_counter() - t0
        res[f"threads{threads}_s"] = round(s, 3)
        res[f"threads{threads}_km2_per_h"] = round(km2 / s * 3600, 1)
    return res


def _model_only_share(args: tuple, index: int, procs: int, barrier) -> tuple[float, float, float]:
    """One of ``procs`` processes: every procs-th tile, read and warmed up untimed, then inferred after the
    barrier with 1 torch thread; returns (start, end, km2) of its timed part (wall clock)."""
    import torch

    from sgma_batch.execute import read_tile

    torch.set_num_threads(1)
    tasks, runner, cfg = _model_only_setup(*args)
    tiles = [read_tile(t, runner.card, cfg) for t in tasks[index::procs]]
    runner.infer(tiles[0])
    barrier.wait()
    t0 = time.time()
    for tile in tiles:
        runner.infer(tile)
    return t0, time.time(), _km2(tiles)


def model_only_procs(catalog: str, aoi: str, start: str, end: str, tile_px: int, halo_px: int,
                     procs: int = 2) -> dict:
    """Model-only on every core: ``procs`` processes of 1 torch thread share the tiles and start together
    (a barrier after their untimed reads); throughput = all tiles' km2 over first start to last end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(procs) as pool:
        barrier = manager.Barrier(procs)
        args = (catalog, aoi, start, end, tile_px, halo_px)
        parts = pool.starmap(_model_only_share, [(args, i, procs, barrier) for i in range(procs)])
    s = max(e for _, e, _ in parts) - min(t for t, _, _ in parts)
    km2 = sum(k for _, _, k in parts)
    return {"procs": procs, "km2": round(km2, 3), f"procs{procs}_s": round(s, 3),
            f"procs{procs}_km2_per_h": round(km2 / s * 3600, 1)}


def ray_startup() -> dict:
    """Ray's fixed cost alone: import, ``ray.init`` (local cluster), one trivial task, shutdown."""
    t0 = time.perf_counter()
    import ray

    t1 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    t2 = time.perf_counter()
    ray.get(ray.remote(lambda: 1).remote())
    t3 = time.perf_counter()
    ray.shutdown()
    t4 = time.perf_counter()
    return {"import_s": round(t1 - t0, 2), "init_s": round(t2 - t1, 2), "first_task_s": round(t3 - t2, 2),
            "shutdown_s": round(t4 - t3, 2), "total_s": round(t4 - t0, 2)}


def spread(values: list[float]) -> float | None:
    """max/min - 1 (0.15 = the largest is 15 % above the smallest)."""
    vals = [v for v in values if v]
    return round(max(vals) / min(vals) - 1, 3) if len(vals) == len(values) and vals else None


def main() -> None:
    global MAX_LOAD
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-km", type=float, default=9.0, help="synthetic archive extent (square); > 4x base-km")
    ap.add_argument("--dates", type=int, default=2)
    ap.add_argument("--base-km", type=float, default=2.0, help="side of the 1x AOI; 4x and 16x double it twice")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--halo-px", type=int, default=32)
    ap.add_argument("--max-load", type=float, default=None,
                    help="before each measurement wait (<= 15 min) until the 1-minute load is below this")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--_inner", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._inner:  # a measurement run in its own process
        kind, *rest = a._inner
        if kind == "model-only":
            threads = tuple(int(t) for t in rest[6].split(",")) if len(rest) > 6 else (1, 2)
            print(json.dumps(model_only(*rest[:4], int(rest[4]), int(rest[5]), threads)))
        elif kind == "model-only-procs":
            print(json.dumps(model_only_procs(*rest[:4], int(rest[4]), int(rest[5]), int(rest[6]))))
        elif kind == "ray-startup":
            print(json.dumps(ray_startup()))
        return
    MAX_LOAD = a.max_load
    ray_tmp = Path(tempfile.mkdtemp(prefix="sgbr-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    ENV["RAY_TMPDIR"] = str(ray_tmp)  # every Ray this benchmark starts lives (and is removed) here
    if a.size_km < 4 * a.base_km + 0.5:
        ap.error("--size-km must exceed 4 x --base-km (the 16x AOI must fit in the archive)")

    from sgma_batch.synthetic import generate_archive

    tmp = Path(tempfile.mkdtemp(prefix="sgma-bench-"))
    try:
        t0 = time.perf_counter()
        info = generate_archive(tmp / "archive", seed=0, size_km=(a.size_km, a.size_km), dates=a.dates)
        gen_s = time.perf_counter() - t0
        print(f"archive {a.size_km} km x {a.dates} dates generated in {gen_s:.1f} s (untimed)", flush=True)
        _run_all(a, info, tmp, gen_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _run_all(a, info, tmp: Path, gen_s: float) -> None:
    cat = str(info.catalog_path)
    start, end = str(min(info.dates))[:10], str(max(info.dates))[:10]
    tiling = ["--tile-px", str(a.tile_px), "--halo-px", str(a.halo_px)]
    py = sys.executable
    rows: dict[str, dict] = {}
    load_begin = loadavg()

    def cli_run(name: str, aoi: str, *extra: str) -> dict:
        out = tmp / f"{name}.zarr"
        r = measure([py, "-m", "cli.app", "run", "--aoi", aoi, "--catalog", cat, "--start", start, "--end", end,
                     *tiling, "--out", str(out), "--json", *extra])
        r["steady"] = steady_state(out, r["started_unix"])
        shutil.rmtree(out, ignore_errors=True)
        return r

    sides = {1: a.base_km, 4: a.base_km * 2, 16: a.base_km * 4}
    big_aoi, big_area = aoi_bbox(info, sides[16])
    rows["ray_startup"] = measure([py, "benchmarks/pipeline_throughput.py", "--_inner", "ray-startup"])
    rows["naive_16x"] = measure([py, "benchmarks/naive_baseline.py", "--catalog", cat, "--aoi", big_aoi, "--start",
                                 start, "--end", end, "--out", str(tmp / "naive.tif"), "--tile-px", str(a.tile_px),
                                 "--halo-px", str(a.halo_px), "--json"])
    rows["ray_16x"] = cli_run("ray16", big_aoi)  # the default: one CPU actor per CPU
    rows["sequential_16x"] = cli_run("seq16", big_aoi, "--sequential")
    rows["model_only_16x"] = measure([py, "benchmarks/pipeline_throughput.py", "--_inner", "model-only", cat,
                                      big_aoi, start, end, str(a.tile_px), str(a.halo_px)])
    procs = os.cpu_count() or 1
    rows["model_only_procs_16x"] = measure([py, "benchmarks/pipeline_throughput.py", "--_inner", "model-only-procs",
                                            cat, big_aoi, start, end, str(a.tile_px), str(a.halo_px), str(procs)])
    rows["ray_1actor_16x"] = cli_run("ray16a1", big_aoi, "--max-actors", "1")
    for mult in (1, 4):
        aoi, _ = aoi_bbox(info, sides[mult])
        rows[f"ray_{mult}x"] = cli_run(f"ray{mult}", aoi)
        rows[f"sequential_{mult}x"] = cli_run(f"seq{mult}", aoi, "--sequential")
    load_finish = loadavg()

    scaling = []
    for ex in ("ray", "sequential"):
        for mult, side in sides.items():
            r = rows[f"{ex}_{mult}x"]
            area = side * side
            st = r["steady"]
            scaling.append({
                "executor": ex, "area_x": mult, "area_km2": area, "tiles": r["result"]["tiles"],
                "wall_s": r["wall_s"], "s_per_km2": round(r["wall_s"] / area, 3),
                "first_commit_s": st["first_commit_s"],
                "steady_s_per_km2": round(3600 / st["km2_per_h"], 3) if st["km2_per_h"] else None,
                "peak_rss_mib": r["peak_rss_mib"], "load_start": r["load_start"][0], "load_end": r["load_end"][0]})

    def sc(ex: str, key: str) -> float | None:
        return spread([s[key] for s in scaling if s["executor"] == ex])

    naive, ray, seq, mo = rows["naive_16x"], rows["ray_16x"], rows["sequential_16x"], rows["model_only_16x"]
    ray1 = rows["ray_1actor_16x"]
    mo_r = mo["result"]
    # end-to-end throughput over model-only throughput, on the same tiles (km2 of tile cores): the model in
    # one process of 1 thread, of 2 threads, and in one 1-thread process per CPU (the model on every core)
    mo1, mo2 = mo_r["threads1_km2_per_h"], mo_r["threads2_km2_per_h"]
    mop = rows["model_only_procs_16x"]["result"][f"procs{procs}_km2_per_h"]
    tile_km2 = mo_r["km2"]

    def e2e(r: dict) -> float:
        return tile_km2 / r["wall_s"] * 3600

    def ratios(ref: float) -> dict[str, float]:
        return {"ray_wall": round(e2e(ray) / ref, 3), "ray_1actor_wall": round(e2e(ray1) / ref, 3),
                "sequential_wall": round(e2e(seq) / ref, 3),
                "ray_steady": round((ray["steady"]["km2_per_h"] or 0) / ref, 3),
                "ray_1actor_steady": round((ray1["steady"]["km2_per_h"] or 0) / ref, 3),
                "sequential_steady": round((seq["steady"]["km2_per_h"] or 0) / ref, 3)}

    summary = {
        "aoi_km2": big_area, "tiles": ray["result"]["tiles"], "tile_cores_km2": tile_km2,
        "archive": {"size_km": a.size_km, "dates": a.dates, "generate_s": round(gen_s, 1)},
        "naive_wall_s": naive["wall_s"], "naive_peak_rss_mib": naive["peak_rss_mib"],
        "naive_forward_s": naive["result"]["forward_s"], "naive_read_s": naive["result"]["read_s"],
        "ray_wall_s": ray["wall_s"], "ray_peak_rss_mib": ray["peak_rss_mib"],
        "sequential_wall_s": seq["wall_s"], "sequential_peak_rss_mib": seq["peak_rss_mib"],
        "throughput_ratio_ray_vs_naive": round(naive["wall_s"] / ray["wall_s"], 3),
        "throughput_ratio_sequential_vs_naive": round(naive["wall_s"] / seq["wall_s"], 3),
        "ray_startup_total_s": rows["ray_startup"]["result"]["total_s"],
        "model_only_1thread_s": mo_r["threads1_s"], "model_only_2threads_s": mo_r["threads2_s"],
        "model_only_1thread_km2_per_h": mo1, "model_only_2threads_km2_per_h": mo2,
        f"model_only_{procs}procs_km2_per_h": mop,
        "e2e_over_model_only_1thread": ratios(mo1), "e2e_over_model_only_2threads": ratios(mo2),
        f"e2e_over_model_only_{procs}procs": ratios(mop),
        "ray_1_actor_wall_s": ray1["wall_s"], "ray_steady_km2_per_h": ray["steady"]["km2_per_h"],
        "ray_1_actor_steady_km2_per_h": ray1["steady"]["km2_per_h"],
        "ray_1_actor_peak_rss_mib": ray1["peak_rss_mib"],
        "scaling_spread": {ex: {"s_per_km2_wall": sc(ex, "s_per_km2"), "s_per_km2_steady": sc(ex, "steady_s_per_km2"),
                                "peak_rss": sc(ex, "peak_rss_mib")} for ex in ("ray", "sequential")},
        "load_begin": load_begin, "load_finish": load_finish,
    }
    print(f"\n{'run':18s} {'wall s':>7s} {'RSS MiB':>8s} {'load':>11s} {'1st commit':>10s} {'steady km2/h':>12s}")
    for name, r in rows.items():
        st = r.get("steady", {})
        print(f"{name:18s} {r['wall_s']:7.1f} {r['peak_rss_mib']:8.0f} {r['load_start'][0]:5.2f}-{r['load_end'][0]:<5.2f}"
              f" {st.get('first_commit_s') or 0:10.1f} {st.get('km2_per_h') or 0:12.0f}"
              + ("" if st else "  " + json.dumps(r["result"])[:90]))
    print(f"\n{'executor':11s} {'area':>5s} {'km2':>5s} {'tiles':>5s} {'wall s':>7s} {'s/km2':>6s} {'1st s':>6s}"
          f" {'steady s/km2':>12s} {'RSS MiB':>8s}")
    for s in scaling:
        print(f"{s['executor']:11s} {s['area_x']:4d}x {s['area_km2']:5.0f} {s['tiles']:5d} {s['wall_s']:7.1f} "
              f"{s['s_per_km2']:6.2f} {s['first_commit_s'] or 0:6.1f} {s['steady_s_per_km2'] or 0:12.3f} "
              f"{s['peak_rss_mib']:8.0f}")
    print("\n" + json.dumps(summary, indent=1))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "gpu": None, "python": platform.python_version(),
                    "platform": platform.platform(), "note": "2 cores, no GPU; load averages per row"},
        "params": {k: v for k, v in vars(a).items() if k != "_inner"}, "summary": summary, "scaling": scaling,
        "rows": rows,
    }, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
