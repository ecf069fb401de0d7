"""Model throughput: parameters, forward Mpx/s and peak memory per variant and modality subset.

CPU: fp32 forward in eval mode, one thread by default (stable when other processes share the CPU); each
row runs in a fresh subprocess so that peak memory = growth of max RSS over the forward passes.
CUDA (when available): bf16 autocast + channels_last, optionally torch.compile; peak memory from
torch.cuda.max_memory_allocated. Prints a table and writes benchmarks/results/model_throughput.json.

    python benchmarks/model_throughput.py --variants sgma_tiny mean_fusion_tiny sgma_small --size 128 --batch 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sgma_model import create_model
from sgma_model.inference import predict

MODALITIES = {"s2": 10, "s1": 2, "dem": 1}
RESULTS = Path(__file__).resolve().parent / "results" / "model_throughput.json"


ALL_SUBSETS = [
    "+".join(c) for r in range(len(MODALITIES), 0, -1) for c in itertools.combinations(MODALITIES, r)
]


def bench(
    name: str, subset: tuple[str, ...], size: int, batch: int, iters: int, device: str, compile_: bool
) -> dict:
    torch.manual_seed(0)
    model = create_model(name, modalities=MODALITIES, num_classes=7).eval()
    n_params = sum(p.numel() for p in model.parameters())
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    inputs = {m: torch.randn(batch, MODALITIES[m], size, size) for m in subset}
    cuda = device == "cuda"
    amp = torch.bfloat16 if cuda else None
    if cuda:
        model = model.to(device).to(memory_format=torch.channels_last)
        inputs = {k: v.to(device).contiguous(memory_format=torch.channels_last) for k, v in inputs.items()}
        if compile_:
            model = torch.compile(model)
    run = (
        (lambda: predict(model, inputs, device=device, amp_dtype=amp, channels_last=cuda))
        if not compile_
        else (lambda: _compiled(model, inputs, amp))
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):  # median of single runs: robust to other processes sharing the CPU
        t0 = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    )
    return {
        "model": name,
        "subset": "+".join(subset),
        "device": device,
        "dtype": "bf16" if cuda else "fp32",
        "compiled": compile_,
        "params_m": round(n_params / 1e6, 3),
        "encoder_params_m": round(n_encoder / 1e6, 3),
        "batch": batch,
        "size_px": size,
        "ms_per_batch": round(dt * 1e3, 2),
        "mpx_per_s": round(batch * size * size / dt / 1e6, 4),
        "peak_mem_mb": round(peak_mb, 1),
    }


@torch.inference_mode()
def _compiled(model, inputs, amp):
    with torch.autocast("cuda", dtype=amp):
        return model(inputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["sgma_tiny", "mean_fusion_tiny", "sgma_small"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--subsets", nargs="+", default=ALL_SUBSETS, metavar="A+B", help="modality subsets (default: all 7)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA only)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "SUBSET", "COMPILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    for subset in args.subsets:
        if not subset or not set(subset.split("+")) <= set(MODALITIES):
            ap.error(f"subset {subset!r}: join modalities from {', '.join(MODALITIES)} with '+'")
    torch.set_num_threads(args.threads)
    if args.one:  # child process: one row as JSON on stdout
        name, subset, comp = args.one
        row = bench(
            name, tuple(subset.split("+")), args.size, args.batch, args.iters, args.device, comp == "1"
        )
        print(json.dumps(row))
        return
    load_start = os.getloadavg()[0]
    rows = []
    for name in args.variants:
        for subset in args.subsets:
            for comp in ("0", "1") if args.compile and args.device == "cuda" else ("0",):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    name,
                    subset,
                    comp,
                    "--size",
                    str(args.size),
                    "--batch",
                    str(args.batch),
                    "--iters",
                    str(args.iters),
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cols = [
        "model",
        "subset",
        "device",
        "dtype",
        "compiled",
        "params_m",
        "encoder_params_m",
        "ms_per_batch",
        "mpx_per_s",
        "peak_mem_mb",
    ]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # start, end: other jobs' share
        "note": "CPU peak_mem_mb = growth of max RSS over the run (coarse); CUDA = max_memory_allocated",
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
