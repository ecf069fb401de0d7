"""sgma-batch side by side with two peers: same synthetic archive, same model and adapter, same output grid.

Peers, each run in a fresh process and measured alike (``pipeline_throughput.measure``: wall seconds, peak RSS
of the whole process tree, CPU seconds by process):

* ``sgma``: ``python -m cli.app run`` with its defaults (whatever executor it picks; ``--sgma-args`` adds flags);
* ``naive``: benchmarks/naive_baseline.py (per tile: rasterio reads, one forward of the halo tile, a
  whole-mosaic accumulator, one GeoTIFF);
* ``dask``: benchmarks/peer_dask.py (``odc.stac.load`` lazily in tile-sized chunks, harmonise + composite
  per chunk, ``dask.array.map_overlap`` forwarding each block plus halo once, ``to_zarr``, threaded scheduler).

The naive and dask peers forward their tiles through one adapter (benchmarks/peer_adapter.py) with the same
``--tile-px`` / ``--halo-px``; sgma-batch keeps its own defaults. One archive is generated once (untimed),
big enough for the largest AOI; the AOIs are squares centred in it. Per size and repetition the three run
interleaved (sgma, naive, dask). Reported: throughput (AOI km2 per hour of wall time), the ratios
sgma/naive and sgma/dask, peak memory, model work per output pixel (pixels forwarded / output grid
pixels), and the agreement of the class maps on pixels both peers mapped. Prints a table and writes
benchmarks/results/peers.json. Nothing here asserts on time.

    python benchmarks/peers.py --sizes 64 256            # ~30 min on 2 cores
    python benchmarks/peers.py --sizes 4096 --archive /tmp/peers-archive   # a ~66 km archive: minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pipeline_throughput as pt

RESULTS = pt.ROOT / "benchmarks" / "results" / "peers.json"
PEERS = ("sgma", "naive", "dask")
NODATA = 255


def _archive(path: Path | None, side_km: float, tmp: Path) -> tuple[object, float]:
    """An archive of at least ``side_km`` (reused from ``path`` when it already holds one): info, seconds."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from sgma_batch.synthetic import generate_archive
    from sgma_batch.synthetic.archive import archive_info

    root = path or tmp / "archive"
    meta = root / "synthetic.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        h, w = m["geobox"]["shape"]
        gbox = GeoBox((h, w), Affine(*m["geobox"]["transform"][:6]), f"EPSG:{m['epsg']}")
        if min(h, w) * gbox.resolution.x >= side_km * 1000:
            days = [datetime.fromisoformat(d) for d in m["dates"]]
            return archive_info(root, seed=m["seed"], geobox=gbox, days=days), 0.0
        raise SystemExit(f"{root} holds a {w / 100:.1f} km archive; need {side_km:.1f} km: give an empty --archive")
    t0 = time.perf_counter()
    info = generate_archive(root, seed=0, size_km=(side_km, side_km), dates=2)
    return info, time.perf_counter() - t0


def _maps(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    import rasterio
    import zarr

    out = {}
    for peer, p in paths.items():
        if peer == "sgma":
            out[peer] = np.asarray(zarr.open_group(p, mode="r")["class"][:])
        elif peer == "naive":
            with rasterio.open(p) as src:
                out[peer] = src.read(1)
        else:
            out[peer] = np.asarray(zarr.open_array(p, mode="r")[:])
    return out


def agreement(maps: dict[str, np.ndarray]) -> dict:
    """Mapped fraction of each map, and pairwise agreement on the pixels both mapped."""
    shapes = {k: v.shape for k, v in maps.items()}
    if len(set(shapes.values())) != 1:
        return {"error": f"different grids: {shapes}"}
    res: dict = {f"mapped_{k}": round(float((v != NODATA).mean()), 4) for k, v in maps.items()}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = (maps[a] != NODATA) & (maps[b] != NODATA)
            res[f"{a}_vs_{b}"] = round(float((maps[a][both] == maps[b][both]).mean()), 5) if both.any() else None
    return res


def _work_per_px(peer: str, rec: dict) -> float | None:
    r = rec.get("result") or {}
    if peer == "sgma":
        return r.get("model_work_per_px")
    return round(r["forwarded_px"] / r["pixels"], 3) if r.get("pixels") else None


def _git() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=pt.ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": [ln[3:] for ln in git("status", "--porcelain", "--untracked-files=no").splitlines()]}


def run_size(km2: float, rep: int, info, a, work: Path) -> dict:
    """One repetition of one size: the three peers in fresh processes, then their maps compared."""
    side = math.sqrt(km2)
    bbox, area = pt.aoi_bbox(info, side)
    cat = str(info.catalog_path)
    start, end = str(min(info.dates))[:10], str(max(info.dates))[:10]
    here = work / f"{km2:g}_{rep}"
    here.mkdir(parents=True)
    paths = {"sgma": here / "sgma.zarr", "naive": here / "naive.tif", "dask": here / "dask.zarr"}
    py = sys.executable
    common = ["--aoi", bbox, "--catalog", cat, "--start", start, "--end", end]
    tiling = ["--tile-px", str(a.tile_px), "--halo-px", str(a.halo_px), "--threads", str(a.threads)]
    cmds = {
        "sgma": [py, "-m", "cli.app", "run", *common, "--out", str(paths["sgma"]), "--json",
                 *shlex.split(a.sgma_args)],
        "naive": [py, "benchmarks/naive_baseline.py", *common, "--out", str(paths["naive"]), *tiling, "--json"],
        "dask": [py, "benchmarks/peer_dask.py", *common, "--out", str(paths["dask"]), *tiling, "--json"],
    }
    print(f"{km2:g} km2 (side {side:.1f} km), repetition {rep + 1}:", flush=True)
    rows = {}
    for peer in PEERS:
        rec = pt.measure(cmds[peer])
        rec["km2_per_h"] = round(area / rec["wall_s"] * 3600, 1)
        rec["work_per_px"] = _work_per_px(peer, rec)
        rows[peer] = rec
    agree = agreement(_maps(paths))
    if not a.keep:
        shutil.rmtree(here, ignore_errors=True)
    return {"km2": area, "side_km": side, "aoi": bbox, "repetition": rep, "peers": rows, "agreement": agree}


def summarise(runs: list[dict]) -> list[dict]:
    """Per size: the median over repetitions of each peer's wall time and peak RSS, and the ratios."""
    out = []
    for km2 in sorted({r["km2"] for r in runs}):
        rs = [r for r in runs if r["km2"] == km2]
        row: dict = {"km2": km2, "repeats": len(rs)}
        for peer in PEERS:
            wall = statistics.median(r["peers"][peer]["wall_s"] for r in rs)
            row[f"{peer}_wall_s"] = round(wall, 2)
            row[f"{peer}_km2_per_h"] = round(km2 / wall * 3600, 1)
            row[f"{peer}_peak_rss_mib"] = round(statistics.median(r["peers"][peer]["peak_rss_mib"] for r in rs), 1)
            row[f"{peer}_work_per_px"] = rs[0]["peers"][peer]["work_per_px"]
        row["sgma_vs_naive"] = round(row["naive_wall_s"] / row["sgma_wall_s"], 3)
        row["sgma_vs_dask"] = round(row["dask_wall_s"] / row["sgma_wall_s"], 3)
        for key in ("sgma_vs_naive", "sgma_vs_dask", "naive_vs_dask"):
            vals = [r["agreement"].get(key) for r in rs if r["agreement"].get(key) is not None]
            row[f"agree_{key}"] = min(vals) if vals else None
        out.append(row)
    return out


def print_table(rows: list[dict]) -> None:
    head = (f"{'km2':>6} | {'km2/h sgma':>10} {'naive':>8} {'dask':>8} | {'sgma/naive':>10} {'sgma/dask':>9} | "
            f"{'RSS MiB sgma':>12} {'naive':>6} {'dask':>6} | {'work/px sgma':>12} {'naive':>5} {'dask':>5} | "
            f"{'agree s-n':>9} {'s-d':>7} {'n-d':>7}")
    print(head)
    print("-" * len(head))

    def f(x, width: int, prec: int) -> str:
        return f"{x:>{width}.{prec}f}" if isinstance(x, (int, float)) else f"{'-':>{width}}"

    for r in rows:
        print(f"{r['km2']:>6.0f} | {f(r['sgma_km2_per_h'], 10, 0)} {f(r['naive_km2_per_h'], 8, 0)}"
              f" {f(r['dask_km2_per_h'], 8, 0)} | {f(r['sgma_vs_naive'], 10, 2)} {f(r['sgma_vs_dask'], 9, 2)} |"
              f" {f(r['sgma_peak_rss_mib'], 12, 0)} {f(r['naive_peak_rss_mib'], 6, 0)} {f(r['dask_peak_rss_mib'], 6, 0)}"
              f" | {f(r['sgma_work_per_px'], 12, 2)} {f(r['naive_work_per_px'], 5, 2)} {f(r['dask_work_per_px'], 5, 2)}"
              f" | {f(r['agree_sgma_vs_naive'], 9, 4)} {f(r['agree_sgma_vs_dask'], 7, 4)}"
              f" {f(r['agree_naive_vs_dask'], 7, 4)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[64, 256, 1024], help="AOI areas in km2 (squares)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sgma-args", default="", help="extra flags for `sgma-batch run`, e.g. '--max-actors 1'")
    ap.add_argument("--tile-px", type=int, default=512, help="naive and dask peers: tile core / dask chunk")
    ap.add_argument("--halo-px", type=int, default=32, help="naive and dask peers: halo / map_overlap depth")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                    help="naive: torch threads; dask: worker threads (1 torch thread each)")
    ap.add_argument("--archive", type=Path, default=None, help="archive folder, reused if it holds one (kept)")
    ap.add_argument("--margin-km", type=float, default=2.0, help="archive side = largest AOI side + this")
    ap.add_argument("--max-load", type=float, default=None, help="wait for a 1-min load below this first")
    ap.add_argument("--keep", action="store_true", help="keep the three outputs of every run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()

    pt.MAX_LOAD = a.max_load
    ray_tmp = Path(tempfile.mkdtemp(prefix="sgpr-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    pt.ENV["RAY_TMPDIR"] = str(ray_tmp)
    tmp = Path(tempfile.mkdtemp(prefix="sgma-peers-"))
    side_km = math.ceil(math.sqrt(max(a.sizes)) + a.margin_km)
    t_all = time.perf_counter()
    try:
        info, gen_s = _archive(a.archive, side_km, tmp)
        print(f"archive {info.root}: {info.geobox.shape.x / 100:.1f} km, dates {[str(d)[:10] for d in info.dates]},"
              f" generated in {gen_s:.1f} s (untimed)", flush=True)
        runs, size_s = [], {}
        for km2 in a.sizes:
            t0 = time.perf_counter()
            for rep in range(a.repeats):
                runs.append(run_size(km2, rep, info, a, tmp / "runs"))
            size_s[f"{km2:g}"] = round(time.perf_counter() - t0, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = summarise(runs)
    print()
    print_table(rows)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "git": _git(),
        "settings": {"sizes_km2": a.sizes, "repeats": a.repeats, "sgma_args": a.sgma_args,
                     "peer_tile_px": a.tile_px, "peer_halo_px": a.halo_px, "peer_threads": a.threads,
                     "archive_km": round(info.geobox.shape.x / 100, 2), "archive_generation_s": round(gen_s, 1),
                     "dates": [str(d) for d in info.dates]},
        "seconds_per_size": size_s, "total_s": round(time.perf_counter() - t_all, 1),
        "summary": rows, "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
