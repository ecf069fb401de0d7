"""Recipe selection for the synthetic benchmark, on the VALIDATION split only.

Trains each (arm, candidate recipe, seed) on the train split and scores it on the val split with EMM
(dropped convention): the selection score of a recipe is the mean over arms and seeds of
(Average + Last-1) / 2. The test split is never read. The winning recipe is then used, unchanged, for
every arm of ``study_synthetic.py``.

    python benchmarks/study_recipe.py --chips CHIPS.zarr --seeds 0 --epochs 40 --subset-probs 0.7 0.1
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
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[40])
    ap.add_argument("--subset-probs", type=float, nargs="+", default=[0.7, 0.1])
    ap.add_argument("--archs", nargs="+", default=["sgma_tiny", "mean_fusion_tiny"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study_recipe.json")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--merge", type=Path, nargs="*", default=None,
                    help="only combine these JSONs (e.g. one process per arm) and select; writes --out")
    args = ap.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(f.read_text())["rows"]]
        select(rows, str(args.merge), args.out)
        return

    import ray
    import torch

    from sgma_batch.evaluate import evaluate_checkpoint
    from sgma_batch.train import TrainSpec, train

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="recipe-study-"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    rows: list[dict] = []
    t0 = time.time()
    for epochs in args.epochs:
        for sp in args.subset_probs:
            for seed in args.seeds:
                for arch in args.archs:
                    name = f"{arch}-e{epochs}-sp{sp}-s{seed}"
                    t = time.time()
                    res = train(TrainSpec(name=name, chips=args.chips, storage=work / "runs", model=arch,
                                          epochs=epochs, batch_size=8, lr=2e-3, warmup_epochs=2, workers=1,
                                          seed=seed, subset_prob=sp))
                    rep = evaluate_checkpoint(res.checkpoint, args.chips, split="val", protocols=("emm",))
                    row = {"arch": arch, "epochs": epochs, "subset_prob": sp, "seed": seed,
                           "train_s": time.time() - t}
                    for conv in ("dropped", "zero-filled"):
                        s = rep.find("emm", conv).summary
                        row[f"val_{conv}_average"], row[f"val_{conv}_last1"] = s["average"], s["last1"]
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    args.out.write_text(json.dumps({"chips": str(args.chips), "rows": rows}, indent=2))
    ray.shutdown()
    out = select(rows, str(args.chips), args.out)
    out["wall_s"] = time.time() - t0
    args.out.write_text(json.dumps(out, indent=2))


def select(rows: list[dict], source: str, out_path: Path) -> dict:
    """Print the per-arm val table and the common recipe with the best selection score; write JSON."""
    keys = sorted({(r["epochs"], r["subset_prob"]) for r in rows})
    archs = sorted({r["arch"] for r in rows})
    print("| epochs | subset_prob | arch | val Average (dropped) | val Last-1 (dropped) | seeds |")
    print("|---|---|---|---|---|---|")
    scores = {}
    for epochs, sp in keys:
        sel = [r for r in rows if r["epochs"] == epochs and r["subset_prob"] == sp]
        scores[f"e{epochs}-sp{sp}"] = float(np.mean([(r["val_dropped_average"] + r["val_dropped_last1"]) / 2
                                                    for r in sel]))
        for arch in archs:
            a = [r for r in sel if r["arch"] == arch]
            av = [r["val_dropped_average"] for r in a]
            l1 = [r["val_dropped_last1"] for r in a]
            print(f"| {epochs} | {sp} | {arch} | {np.mean(av):.2f} ± {np.std(av):.2f} | "
                  f"{np.mean(l1):.2f} ± {np.std(l1):.2f} | {len(a)} |")
    best = max(scores, key=scores.get)
    print(f"selection score (mean of (Average + Last-1) / 2 over arms and seeds): {scores}; chosen: {best}")
    out = {"source": source, "split": "val", "rows": rows, "scores": scores, "chosen": best}
    out_path.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()
