"""End-to-end benchmarks of `sgma-batch run` on a synthetic archive with the shipped demo model.

1. sgma-batch (Ray, sequential) versus the naive sequential baseline (benchmarks/naive_baseline.py) on the
   same AOI, archive and model: throughput ratio and both peak memories (RSS summed over the process
   tree: driver, raylet, Ray workers).
2. End-to-end versus model-only on the same tiles: the same per-tile inference (sliding windows, blending)
   on inputs already in memory, timed alone; ratio = model-only time / end-to-end time.
3. Scaling: 1x, 4x, 16x the AOI area: time per km2 and peak RSS (wall time of the CLI, and the steady
   state between the first and last tile commit, which excludes Ray start-up and the model load).
4. Ray: 1 versus 2 CPU inference actors.

Every measurement runs in a fresh process. Prints a table and writes benchmarks/results/pipeline_throughput.json.

    python benchmarks/pipeline_throughput.py --size-km 7 --base-km 1.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_throughput.json"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway local cluster on a private machine


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (KiB), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds, peak RSS of its process tree (sampled every 0.1 s), and its JSON stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    print(f"  {' '.join(Path(c).name for c in cmd[1:4])} ... {seconds:.1f} s, tree peak RSS {peak[0] / 1024:.0f} MiB",
          flush=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {err[-2000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return {"wall_s": round(seconds, 2), "peak_rss_mib": round(peak[0] / 1024, 1),
            "result": json.loads(lines[-1]) if lines else None}


def steady_state(store: Path) -> dict:
    """Tiles committed after the first commit, over the time between the first and last commit."""
    recs = sorted((p.stat().st_mtime, json.loads(p.read_text())) for p in (store / "manifest").glob("*.json"))
    if len(recs) < 3:
        return {"tiles_per_s": None, "km2_per_h": None}
    span = recs[-1][0] - recs[0][0]
    px = sum((r["region"][0][1] - r["region"][0][0]) * (r["region"][1][1] - r["region"][1][0]) for _, r in recs[1:])
    return {"tiles_per_s": round((len(recs) - 1) / span, 3), "km2_per_h": round(px * 1e-4 / span * 3600, 1)}


def aoi_bbox(info, side_km: float) -> tuple[str, float]:
    """A square AOI of ``side_km`` centred in the archive, as a lon/lat bbox string, and its area (km2)."""
    from odc.geo.geom import box

    b = info.geobox.boundingbox
    cx, cy, half = (b.left + b.right) / 2, (b.bottom + b.top) / 2, side_km * 500
    lon0, lat0, lon1, lat1 = box(cx - half, cy - half, cx + half, cy + half, info.geobox.crs).to_crs(4326).boundingbox
    return f"{lon0:.6f},{lat0:.6f},{lon1:.6f},{lat1:.6f}", side_km * side_km


def model_only(catalog: str, aoi: str, start: str, end: str, tile_px: int, halo_px: int) -> dict:
    """Read every tile first (untimed), then time only the per-tile inference of the pipeline."""
    import torch

    from sgma_batch.execute import InferenceConfig, TileRunner, read_tile
    from sgma_batch.run import RunSpec, _prepare, aoi_in_grid_crs

    spec = RunSpec(aoi=aoi, out="unused.zarr", start=start, end=end, catalog=catalog, tile_px=tile_px,
                   halo_px=halo_px)
    prep = _prepare(spec)
    cfg = InferenceConfig(checkpoint=prep.model_path, store="unused.zarr", layout=prep.layout,
                          aoi_wkt=aoi_in_grid_crs(prep.aoi.geometry, prep.geobox).wkt, window_px=spec.window_px,
                          overlap_px=spec.overlap_px, threads=2)
    torch.set_num_threads(2)
    runner = TileRunner(cfg)
    tiles = [read_tile(t, runner.card, cfg) for t in prep.tasks]
    t0 = time.perf_counter()
    for tile in tiles:
        runner.infer(tile)
    return {"tiles": len(tiles), "seconds": round(time.perf_counter() - t0, 3)}


def ray_actors(catalog: str, aoi: str, start: str, end: str, out: str, tile_px: int, halo_px: int,
               actors: int) -> dict:
    from sgma_batch.run import RunSpec, run_mosaic

    s = run_mosaic(RunSpec(aoi=aoi, out=out, start=start, end=end, catalog=catalog, tile_px=tile_px,
                           halo_px=halo_px, max_actors=actors))
    return s.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-km", type=float, default=7.0, help="synthetic archive extent (square)")
    ap.add_argument("--dates", type=int, default=2)
    ap.add_argument("--base-km", type=float, default=1.5, help="side of the 1x AOI; 4x and 16x double it")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--halo-px", type=int, default=32)
    ap.add_argument("--_inner", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._inner:  # a measurement run in its own process
        kind, *rest = a._inner
        if kind == "model-only":
            print(json.dumps(model_only(*rest[:4], int(rest[4]), int(rest[5]))))
        else:
            print(json.dumps(ray_actors(*rest[:5], int(rest[5]), int(rest[6]), int(rest[7]))))
        return

    from sgma_batch.synthetic import generate_archive

    tmp = Path(tempfile.mkdtemp(prefix="sgma-bench-"))
    t0 = time.perf_counter()
    info = generate_archive(tmp / "archive", seed=0, size_km=(a.size_km, a.size_km), dates=a.dates)
    print(f"archive {a.size_km} km x {a.dates} dates generated in {time.perf_counter() - t0:.1f} s", flush=True)
    cat = str(info.catalog_path)
    start, end = str(min(info.dates))[:10], str(max(info.dates))[:10]
    tiling = ["--tile-px", str(a.tile_px), "--halo-px", str(a.halo_px)]
    py = sys.executable
    rows: dict[str, dict] = {}

    def cli_run(name: str, aoi: str, *extra: str) -> dict:
        out = tmp / f"{name}.zarr"
        r = measure([py, "-m", "cli.app", "run", "--aoi", aoi, "--catalog", cat, "--start", start, "--end", end,
                     *tiling, "--out", str(out), "--json", *extra])
        r["steady"] = steady_state(out)
        return r

    big_aoi, big_area = aoi_bbox(info, a.base_km * 4)
    rows["naive"] = measure([py, "benchmarks/naive_baseline.py", "--catalog", cat, "--aoi", big_aoi, "--start",
                             start, "--end", end, "--out", str(tmp / "naive.tif"), "--tile-px", str(a.tile_px),
                             "--halo-px", str(a.halo_px), "--json"])
    rows["sgma_ray_16x"] = cli_run("ray16", big_aoi)
    rows["sgma_sequential_16x"] = cli_run("seq16", big_aoi, "--sequential")
    rows["model_only_16x"] = measure([py, "benchmarks/pipeline_throughput.py", "--_inner", "model-only", cat,
                                      big_aoi, start, end, str(a.tile_px), str(a.halo_px)])
    for n in (1, 2):
        rows[f"ray_{n}_actor_16x"] = measure([py, "benchmarks/pipeline_throughput.py", "--_inner", "actors", cat,
                                              big_aoi, start, end, str(tmp / f"act{n}.zarr"), str(a.tile_px),
                                              str(a.halo_px), str(n)])
        rows[f"ray_{n}_actor_16x"]["steady"] = steady_state(tmp / f"act{n}.zarr")
    scaling = []
    for mult, side in ((1, a.base_km), (4, a.base_km * 2), (16, a.base_km * 4)):
        aoi, area = aoi_bbox(info, side)
        r = rows["sgma_ray_16x"] if mult == 16 else cli_run(f"ray{mult}", aoi)
        scaling.append({"area_x": mult, "area_km2": area, "tiles": r["result"]["tiles"], "wall_s": r["wall_s"],
                        "s_per_km2": round(r["wall_s"] / area, 3), "steady_km2_per_h": r["steady"]["km2_per_h"],
                        "peak_rss_mib": r["peak_rss_mib"]})

    naive, ray_, seq = rows["naive"], rows["sgma_ray_16x"], rows["sgma_sequential_16x"]
    e2e_model = rows["model_only_16x"]["result"]["seconds"]
    seq_compute = seq["result"]["seconds"]
    summary = {
        "aoi_km2": big_area,
        "tiles": ray_["result"]["tiles"],
        "naive_wall_s": naive["wall_s"], "naive_peak_rss_mib": naive["peak_rss_mib"],
        "ray_wall_s": ray_["wall_s"], "ray_peak_rss_mib": ray_["peak_rss_mib"],
        "sequential_wall_s": seq["wall_s"], "sequential_peak_rss_mib": seq["peak_rss_mib"],
        "throughput_ratio_ray_vs_naive": round(naive["wall_s"] / ray_["wall_s"], 3),
        "throughput_ratio_sequential_vs_naive": round(naive["wall_s"] / seq["wall_s"], 3),
        "model_only_s": e2e_model,
        "model_only_over_end_to_end_sequential": round(e2e_model / seq_compute, 3),
        "ray_1_actor_wall_s": rows["ray_1_actor_16x"]["wall_s"], "ray_2_actor_wall_s": rows["ray_2_actor_16x"]["wall_s"],
        "ray_1_actor_steady_km2_per_h": rows["ray_1_actor_16x"]["steady"]["km2_per_h"],
        "ray_2_actor_steady_km2_per_h": rows["ray_2_actor_16x"]["steady"]["km2_per_h"],
    }
    print(f"\n{'run':24s} {'wall s':>8s} {'peak RSS MiB':>13s}  notes")
    for name, r in rows.items():
        note = r.get("steady", {}).get("km2_per_h")
        print(f"{name:24s} {r['wall_s']:8.1f} {r['peak_rss_mib']:13.0f}  "
              + (f"steady {note} km2/h" if note else json.dumps(r["result"])[:70]))
    print(f"\n{'area':>6s} {'km2':>7s} {'tiles':>6s} {'wall s':>7s} {'s/km2':>7s} {'steady km2/h':>13s} {'RSS MiB':>8s}")
    for s in scaling:
        print(f"{s['area_x']:5d}x {s['area_km2']:7.2f} {s['tiles']:6d} {s['wall_s']:7.1f} {s['s_per_km2']:7.3f} "
              f"{s['steady_km2_per_h'] or 0:13.1f} {s['peak_rss_mib']:8.0f}")
    print("\n" + json.dumps(summary, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "note": "2 cores shared with other jobs"},
        "params": vars(a) | {"_inner": None}, "summary": summary, "scaling": scaling, "rows": rows,
    }, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
