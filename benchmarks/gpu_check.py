"""GPU check: a few bf16 NCCL training steps, then the inference pipeline on a synthetic archive.

Run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU (it prints one JSON line and a table):

1. Training: ``steps`` optimiser steps of the shipped architecture on random 256 px windows, bf16 autocast,
   DDP over NCCL with one process (through Ray Train when Ray is importable, else torch.distributed
   directly: the lent GPU machines cannot carry Ray's wheel, which is larger than what travels there).
2. Inference: a synthetic archive (``--size-km`` square, 2 dates), ``run_mosaic`` with the in-process
   executor on the GPU (batches sized to its memory, pinned host buffers, reader threads): km2/h end to
   end; model-only km2/h on the same tiles read beforehand, in the same batches; GPU utilisation sampled
   from ``nvidia-smi`` every 0.5 s during the end-to-end run; peak GPU memory.

    python benchmarks/gpu_check.py --size-km 40 --out results/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_steps(steps: int, batch: int = 8, window: int = 256) -> dict:
    """bf16 DDP (NCCL, world size 1) steps of sgma_tiny on random inputs; seconds per step after warm-up."""
    import torch
    import torch.distributed as dist

    from sgma_model import create_model
    from sgma_model.losses import sgma_loss

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        dev = torch.device("cuda")
        model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2, "dem": 1}, num_classes=7).to(dev)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        g = torch.Generator(device=dev).manual_seed(0)
        xs = {m: torch.randn(batch, n, window, window, device=dev, generator=g) for m, n in model.band_counts.items()}
        y = torch.randint(0, 7, (batch, window, window), device=dev, generator=g)
        times = []
        for _ in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = ddp(xs, mas=True, generator=g)
                loss = sgma_loss(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return {"backend": dist.get_backend(), "steps": steps, "batch": batch, "window": window,
                "s_per_step": round(sorted(times[1:])[len(times[1:]) // 2], 4), "loss": round(float(loss), 4)}
    finally:
        dist.destroy_process_group()


class _GpuSampler:
    """``nvidia-smi`` utilisation every 0.5 s while running."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.split()
            if out:
                self.samples.append(float(out[0]))
            self._stop.wait(0.5)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def inference(size_km: float, tmp: Path) -> dict:
    """End-to-end and model-only km2/h of the default run on a synthetic archive, on the GPU."""
    import torch

    from sgma_batch.execute import InferenceConfig, TileRunner, batch_key, read_tile
    from sgma_batch.run import RunSpec, _prepare, aoi_in_grid_crs, run_mosaic
    from sgma_batch.synthetic import generate_archive

    t0 = time.perf_counter()
    info = generate_archive(tmp / "archive", seed=0, size_km=(size_km + 1, size_km + 1), dates=2)
    gen_s = time.perf_counter() - t0
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pipeline_throughput import aoi_bbox

    aoi, km2 = aoi_bbox(info, size_km)
    start, end = str(min(info.dates))[:10], str(max(info.dates))[:10]
    spec = RunSpec(aoi=aoi, out=str(tmp / "gpu.zarr"), start=start, end=end, catalog=str(info.catalog_path),
                   executor="local")
    torch.cuda.reset_peak_memory_stats()
    with _GpuSampler() as sampler:
        t0 = time.perf_counter()
        summary = run_mosaic(spec)
        e2e_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()

    prep = _prepare(spec)
    cfg = InferenceConfig(checkpoint=prep.model_path, store="", layout=prep.layout,
                          aoi_wkt=aoi_in_grid_crs(prep.aoi.geometry, prep.geobox).wkt)
    runner = TileRunner(cfg, "cuda")
    batch = runner.auto_batch(prep.tasks)
    tiles = [read_tile(t, runner.card, cfg) for t in prep.tasks]
    groups: dict = {}
    for t in tiles:
        if t.inputs:
            groups.setdefault(batch_key(t), []).append(t)
    batches = [g[i : i + batch] for g in groups.values() for i in range(0, len(g), batch)]
    runner.forward(batches[0])  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        runner.forward(b)
    torch.cuda.synchronize()
    model_s = time.perf_counter() - t0
    util = sampler.samples
    return {
        "size_km": size_km, "km2": km2, "tiles": summary.tiles, "archive_s": round(gen_s, 1),
        "batch": batch, "e2e_s": round(e2e_s, 2), "e2e_km2_per_h": round(km2 / e2e_s * 3600),
        "model_only_s": round(model_s, 2), "model_only_km2_per_h": round(km2 / model_s * 3600),
        "e2e_over_model_only": round(model_s / e2e_s, 3),
        "gpu_util_mean": round(sum(util) / len(util), 1) if util else None,
        "gpu_busy_share": round(sum(u >= 50 for u in util) / len(util), 3) if util else None,
        "peak_gpu_mib": round(peak / 2**20), "model_work_per_px": summary.model_work_per_px,
        "device": torch.cuda.get_device_name(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-km", type=float, default=40.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    res: dict = {"train": train_steps(a.steps)}
    print(json.dumps(res), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        res["inference"] = inference(a.size_km, Path(tmp))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
    inf = res["inference"]
    print(json.dumps(res))
    print(f"| device | km² | e2e km²/h | model-only km²/h | e2e/model | GPU busy | peak GiB | train s/step |\n"
          f"|---|---|---|---|---|---|---|---|\n| {inf['device']} | {inf['km2']:.0f} | {inf['e2e_km2_per_h']:,} | "
          f"{inf['model_only_km2_per_h']:,} | {inf['e2e_over_model_only']:.2f} | {inf['gpu_busy_share']} | "
          f"{inf['peak_gpu_mib'] / 1024:.1f} | {res['train']['s_per_step']} |")


if __name__ == "__main__":
    main()
