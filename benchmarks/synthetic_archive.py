"""Synthetic archive generation speed and memory: km² per second per date, peak RSS.

    python benchmarks/synthetic_archive.py --sizes 5 10 --dates 1 4

Prints a table and writes benchmarks/results/synthetic_archive.json. Never a pass/fail on time.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from sgma_batch.synthetic import generate_archive

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=float, nargs="+", default=[5.0, 10.0], help="square extents, km")
    ap.add_argument("--dates", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        for n in args.dates:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                generate_archive(Path(tmp) / "a", seed=args.seed, size_km=(size, size), dates=n)
                seconds = time.perf_counter() - t0
                mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20
            area = size * size
            rows.append({
                "size_km": size, "area_km2": area, "dates": n, "seconds": round(seconds, 2),
                "km2_per_s_per_date": round(area * n / seconds, 2), "output_mib": round(mb, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            })
            print(f"{size:6.1f} km  {area:8.1f} km2  {n:2d} dates  {seconds:7.2f} s  "
                  f"{rows[-1]['km2_per_s_per_date']:7.2f} km2/s/date  {mb:7.1f} MiB  "
                  f"peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    out = ROOT / "benchmarks" / "results" / "synthetic_archive.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "note": "one process, shared 2-core machine"}, indent=2) + "\n")


if __name__ == "__main__":
    main()
