"""Sen1Floods11 spatial hold-out: train on three quadrants of the one real chip, test on the fourth.

Water IoU (test quadrant) for S1 only, S2 only and both: (a) one SGMA model trained with modality
dropout and evaluated per subset (EMM, dropped convention), (b) dedicated single-modality models.
It is ONE 512x512 chip: numbers are indicative, not a benchmark. Prints a table, writes JSON.

    python benchmarks/study_sen1floods11.py --seeds 0 1 2 --epochs 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
S1F11 = ROOT / ".." / "shared" / "data" / "sen1floods11"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--test-quadrant", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    import ray
    import torch

    from sgma_batch.chips import sen1floods11_chip_store
    from sgma_batch.evaluate import evaluate_checkpoint
    from sgma_batch.train import TrainSpec, train

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="s1f11-study-"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    store = sen1floods11_chip_store(S1F11, work / "chips.zarr", test_quadrant=args.test_quadrant, overwrite=True)
    rows: dict[str, list[float]] = {}
    t0 = time.time()
    configs = {"joint": None, "s1-only": ["s1"], "s2-only": ["s2"]}
    for seed in args.seeds:
        for cname, mods in configs.items():
            spec = TrainSpec(name=f"{cname}-s{seed}", chips=store, storage=work / "runs", model="sgma_tiny",
                             modalities=mods, epochs=args.epochs, batch_size=8, lr=2e-3, warmup_epochs=2,
                             workers=1, seed=seed)
            res = train(spec)
            rep = evaluate_checkpoint(res.checkpoint, store, protocols=("emm",), conventions=("dropped",))
            emm = rep.find("emm", "dropped")
            for subset, per_class in emm.per_class_iou.items():
                key = f"{cname} model, input {'+'.join(subset)}"
                rows.setdefault(key, []).append(per_class[1])  # class 1 = water
            print(f"seed {seed} {cname}: " + ", ".join(f"{'+'.join(s)} water IoU {v[1]:.1f}"
                  for s, v in emm.per_class_iou.items()), file=sys.stderr, flush=True)
    ray.shutdown()
    print("| model / input | water IoU % (mean ± std over seeds) | n |")
    print("|---|---|---|")
    for key, vals in rows.items():
        print(f"| {key} | {np.mean(vals):.1f} ± {np.std(vals):.1f} | {len(vals)} |")
    out = {"test_quadrant": args.test_quadrant, "epochs": args.epochs, "seeds": args.seeds,
           "water_iou": rows, "wall_s": time.time() - t0, "note": "one 512x512 chip; test = one quadrant"}
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "study_sen1floods11.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()
