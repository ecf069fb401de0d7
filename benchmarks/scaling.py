"""Scaling of `sgma-batch run` with area: 1x, 4x, 16x the AOI (default 64, 256, 1024 km2).

One synthetic archive (generated once, untimed) large enough for the 16x AOI; square AOIs centred in
it; the shipped demo model. Four executors, each at the three sizes, every run a fresh CLI process:

- ``local``: the default ``sgma-batch run`` on one machine (this process: reader and forward threads);
- ``ray-cold``: ``--executor ray`` (starts a local Ray, as on a laptop);
- ``ray-warm``: ``--address`` to a Ray head started once beforehand (``ray start --head``), as on a
  cluster, where Ray is already up when a job arrives;
- ``sequential``: ``--sequential`` (no Ray).

Per run: wall time, time to the first tile commit, the steady state (tiles committed after the first,
over the time from the first to the last commit), and peak resident memory summed over the CLI's process
tree plus, for ``ray-warm``, every process of the warm cluster (raylet, GCS, workers). Per executor: the
least-squares line ``wall = fixed + marginal x km2`` over the three sizes, and the spreads (largest /
smallest - 1) of wall s/km2, steady s/km2 and peak RSS: the targets are 15 % for time per km2 and for peak
RSS. Prints tables, writes benchmarks/results/scaling.json. Nothing here asserts on time.

    python benchmarks/scaling.py --base-km 8 --max-load 2.5
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_throughput as pt

ROOT = pt.ROOT
RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
MULTS = (1, 4, 16)


def _cluster_pids(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the warm cluster's private temp dir)."""
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmd.read_bytes().decode(errors="replace"):
                pids.append(int(cmd.parent.name))
        except OSError:
            continue
    return pids


def measure_with_cluster(cmd: list[str], marker: str) -> dict:
    """:func:`pipeline_throughput.measure`, with the warm cluster's processes added to the memory peak."""
    peak = [0]
    done = threading.Event()
    roots = _cluster_pids(marker)  # raylet, GCS, agents: workers start later as their descendants

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], pt._tree_rss_kib(*roots))  # one /proc scan; nested processes counted once
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        r = pt.measure(cmd)
    finally:
        done.set()
        sampler.join()
    r["driver_peak_rss_mib"] = r["peak_rss_mib"]
    r["cluster_peak_rss_mib"] = round(peak[0] / 1024, 1)
    r["peak_rss_mib"] = round(r["driver_peak_rss_mib"] + r["cluster_peak_rss_mib"], 1)  # peaks add: an upper bound
    return r


def start_head(ray_tmp: Path) -> str:
    """``ray start --head`` on 127.0.0.1 with a free port; returns the address."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", str(os.cpu_count()), "--include-dashboard", "false", "--disable-usage-stats",
                    "--temp-dir", str(ray_tmp)], check=True, env=pt.ENV, capture_output=True, text=True)
    return f"127.0.0.1:{port}"


def stop_head() -> None:
    """``ray stop --force`` (the warm head and its workers)."""
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], env=pt.ENV, capture_output=True,
                   check=False)


def fit_line(areas: list[float], walls: list[float]) -> dict:
    """Least squares ``wall = fixed + marginal * area``; the largest relative residual."""
    b, a = np.polyfit(np.asarray(areas), np.asarray(walls), 1)
    resid = max(abs(w - (a + b * x)) / w for x, w in zip(areas, walls))
    return {"fixed_s": round(float(a), 2), "marginal_s_per_km2": round(float(b), 4),
            "marginal_km2_per_h": round(3600 / float(b), 0) if b > 0 else None,
            "max_rel_residual": round(float(resid), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-km", type=float, default=8.0, help="side of the 1x AOI; 4x and 16x double it twice")
    ap.add_argument("--dates", type=int, default=2)
    ap.add_argument("--tile-px", type=int, default=512)
    ap.add_argument("--halo-px", type=int, default=16)
    ap.add_argument("--executors", nargs="+", default=["local", "ray-cold"],
                    choices=["local", "ray-cold", "ray-warm", "sequential"])
    ap.add_argument("--model-only", action="store_true",
                    help="also time the pipeline's inference alone (1 torch thread) on the 16x AOI's tiles")
    ap.add_argument("--max-load", type=float, default=None,
                    help="before each measurement wait (<= 15 min, then <= 2 min) until the 1-minute load is below")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    pt.MAX_LOAD = a.max_load
    ray_tmp = Path(tempfile.mkdtemp(prefix="sgbs-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    pt.ENV["RAY_TMPDIR"] = str(ray_tmp)
    tmp = Path(tempfile.mkdtemp(prefix="sgma-scaling-"))
    from sgma_batch.synthetic import generate_archive

    size_km = 4 * a.base_km + 1
    address, model_only = None, None
    try:
        t0 = time.perf_counter()
        info = generate_archive(tmp / "archive", seed=0, size_km=(size_km, size_km), dates=a.dates)
        gen_s = time.perf_counter() - t0
        print(f"archive {size_km:g} km x {a.dates} dates generated in {gen_s:.1f} s (untimed)", flush=True)
        cat = str(info.catalog_path)
        start, end = str(min(info.dates))[:10], str(max(info.dates))[:10]
        rows = []
        for ex in a.executors:
            if ex == "ray-warm":
                address = start_head(ray_tmp / "warm")
                print(f"warm Ray head at {address}", flush=True)
            for mult in MULTS:
                side = a.base_km * mult ** 0.5
                aoi, area = pt.aoi_bbox(info, side)
                out = tmp / f"{ex}-{mult}.zarr"
                extra = {"local": ["--executor", "local"], "ray-cold": ["--executor", "ray"],
                         "ray-warm": ["--address", str(address)], "sequential": ["--sequential"]}[ex]
                cmd = [sys.executable, "-m", "cli.app", "run", "--aoi", aoi, "--catalog", cat, "--start", start,
                       "--end", end, "--tile-px", str(a.tile_px), "--halo-px", str(a.halo_px), "--out", str(out),
                       "--json", *extra]
                r = measure_with_cluster(cmd, str(ray_tmp / "warm")) if ex == "ray-warm" else pt.measure(cmd)
                st = pt.steady_state(out, r["started_unix"])
                shutil.rmtree(out, ignore_errors=True)
                rows.append({
                    "executor": ex, "area_x": mult, "area_km2": round(area, 1), "tiles": r["result"]["tiles"],
                    "wall_s": r["wall_s"], "s_per_km2": round(r["wall_s"] / area, 4),
                    "first_commit_s": st["first_commit_s"],
                    "steady_s_per_km2": round(3600 / st["km2_per_h"], 4) if st["km2_per_h"] else None,
                    "steady_km2_per_h": st["km2_per_h"], "peak_rss_mib": r["peak_rss_mib"], "cpu_s": r.get("cpu_s"),
                    **{k: r[k] for k in ("driver_peak_rss_mib", "cluster_peak_rss_mib") if k in r},
                    "load_start": r["load_start"][0], "load_end": r["load_end"][0], "wait": r["wait"]})
            if ex == "ray-warm":
                stop_head()
                address = None
        if a.model_only:
            aoi, _ = pt.aoi_bbox(info, a.base_km * 4)
            mo = pt.measure([sys.executable, "benchmarks/pipeline_throughput.py", "--_inner", "model-only", cat, aoi,
                             start, end, str(a.tile_px), str(a.halo_px), "1,2"])
            model_only = {**mo["result"], "load_start": mo["load_start"][0], "load_end": mo["load_end"][0]}
            procs = os.cpu_count() or 1
            if procs > 1:  # the model alone on every core: one 1-thread process per CPU
                mp_ = pt.measure([sys.executable, "benchmarks/pipeline_throughput.py", "--_inner", "model-only-procs",
                                  cat, aoi, start, end, str(a.tile_px), str(a.halo_px), str(procs)])
                model_only.update({k: v for k, v in mp_["result"].items() if k.startswith("procs")})
    finally:
        if address:
            stop_head()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    summary = {}
    for ex in a.executors:
        rs = [r for r in rows if r["executor"] == ex]
        summary[ex] = {
            "line": fit_line([r["area_km2"] for r in rs], [r["wall_s"] for r in rs]),
            "spread_s_per_km2_wall": pt.spread([r["s_per_km2"] for r in rs]),
            "spread_s_per_km2_steady": pt.spread([r["steady_s_per_km2"] for r in rs]),
            "spread_peak_rss": pt.spread([r["peak_rss_mib"] for r in rs])}
    print("\n| executor | area | km² | tiles | wall s | s/km² (wall) | 1st commit s | steady s/km² | peak RSS MiB |"
          " CPU s by process | load |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted((r["cpu_s"] or {}).items(), key=lambda kv: -kv[1]))
        print(f"| {r['executor']} | {r['area_x']}x | {r['area_km2']:.0f} | {r['tiles']} | {r['wall_s']:.1f} | "
              f"{r['s_per_km2']:.3f} | {r['first_commit_s'] or 0:.1f} | {r['steady_s_per_km2'] or 0:.4f} | "
              f"{r['peak_rss_mib']:.0f} | {cpu or '-'} | {r['load_start']:.2f}→{r['load_end']:.2f} |")
    print("\n| executor | fixed s | marginal s/km² | max residual | spread wall s/km² | spread steady s/km² |"
          " spread peak RSS |\n|---|---|---|---|---|---|---|")
    for ex, s in summary.items():
        ln = s["line"]
        print(f"| {ex} | {ln['fixed_s']:.1f} | {ln['marginal_s_per_km2']:.4f} | {ln['max_rel_residual']:.1%} | "
              f"{s['spread_s_per_km2_wall']:.0%} | {s['spread_s_per_km2_steady'] or float('nan'):.0%} | "
              f"{s['spread_peak_rss']:.0%} |")
    if model_only:
        # end-to-end throughput (tile-core km2 over CLI wall time) over model-only throughput, same tiles,
        # against the model alone in one 1-thread process and on every core (one process per CPU)
        refs = {"1 process": model_only["threads1_km2_per_h"]}
        print(f"\nmodel-only on the 16x tiles, 1 process of 1 thread: {model_only['threads1_s']:.1f} s, "
              f"{refs['1 process']:,.0f} km²/h")
        if "threads2_km2_per_h" in model_only:  # torch's default on 2 cores: one process, a thread per core
            refs["1 process, 2 threads"] = model_only["threads2_km2_per_h"]
            print(f"model-only, 1 process of 2 threads: {model_only['threads2_s']:.1f} s, "
                  f"{refs['1 process, 2 threads']:,.0f} km²/h")
        procs = model_only.get("procs")
        if procs:
            refs[f"{procs} processes"] = model_only[f"procs{procs}_km2_per_h"]
            print(f"model-only, {procs} processes of 1 thread: {model_only[f'procs{procs}_s']:.1f} s, "
                  f"{refs[f'{procs} processes']:,.0f} km²/h")
        print("| executor (16x) | e2e km²/h (wall) | reference | e2e / model-only (wall) | steady / model-only |\n"
              "|---|---|---|---|---|")
        for r in (r for r in rows if r["area_x"] == 16):
            e2e = model_only["km2"] / r["wall_s"] * 3600
            ratios = summary[r["executor"]]["e2e_over_model_only"] = {}
            for ref, km2_h in refs.items():
                steady = (r["steady_km2_per_h"] or 0) / km2_h
                ratios[ref] = {"wall": round(e2e / km2_h, 3), "steady": round(steady, 3)}
                print(f"| {r['executor']} | {e2e:,.0f} | {ref} | {e2e / km2_h:.2f} | {steady:.2f} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "gpu": None, "python": platform.python_version(),
                    "platform": platform.platform()},
        "params": vars(a), "archive": {"size_km": size_km, "dates": a.dates, "generate_s": round(gen_s, 1)},
        "rows": rows, "model_only_16x": model_only, "summary": summary}, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
