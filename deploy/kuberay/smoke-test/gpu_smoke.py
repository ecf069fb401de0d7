"""GPU smoke test of the sgma-batch GPU image: run it first on a new cluster (deploy/README.md, step 2).

Checks, in order, and stops at the first failure with one line on stderr and exit 1:
torch imports and is the CUDA build the image was made for; a GPU is visible; the shipped model loads on it;
one bf16 batch of every modality goes through it and gives finite class scores of the right shape.
Prints one JSON line on stdout when all pass. ``--device cpu`` runs the same on a CPU (for the tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--px", type=int, default=256)
    args = p.parse_args(argv)

    def fail(message: str) -> int:
        print(f"gpu smoke test failed: {message}", file=sys.stderr)
        return 1

    import torch

    if args.device == "cuda":
        if torch.version.cuda is None:
            return fail(f"torch {torch.__version__} is a CPU build; this is not the GPU image")
        if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
            return fail("no GPU visible to torch (nvidia.com/gpu not granted, or the driver is older than "
                        f"CUDA {torch.version.cuda} needs)")
        if not torch.cuda.is_bf16_supported():
            return fail(f"{torch.cuda.get_device_name(0)} does not support bf16")
    from sgma_batch.models import default_checkpoint
    from sgma_model.checkpoint import load_checkpoint

    device = torch.device(args.device)
    model, card = load_checkpoint(default_checkpoint(), map_location=device)
    g = torch.Generator(device=device).manual_seed(0)
    xs = {m: torch.randn(args.batch, n, args.px, args.px, device=device, generator=g)
          for m, n in model.band_counts.items()}
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(args.device, dtype=torch.bfloat16):
        out = model(xs)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    logits = out if torch.is_tensor(out) else out["logits"] if isinstance(out, dict) else out.logits
    want = (args.batch, len(card.classes), args.px, args.px)
    if tuple(logits.shape) != want:
        return fail(f"model output {tuple(logits.shape)}, expected {want}")
    if not torch.isfinite(logits.float()).all():
        return fail("model output has NaN or inf in bf16")
    print(json.dumps({
        "ok": True, "torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "model": card.architecture, "modalities": sorted(xs), "batch": list(want), "dtype": str(logits.dtype),
        "seconds": round(seconds, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
