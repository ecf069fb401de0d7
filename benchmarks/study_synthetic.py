"""Synthetic benchmark: SGMA vs mean fusion vs concatenation, the 2x2 SGF/MAS ablation, RobustSeg stage 2.

Every model is trained with the same recipe on the same chip store (train split), evaluated on the test
split with EMM in both conventions; Average and Last-1 are mean ± std over seeds. Nothing is tuned on
the test split: the recipe (``--subset-prob``, ``--epochs``) is chosen on the val split beforehand by
``benchmarks/study_recipe.py``. Prints a markdown table and writes JSON (``--out``); ``--merge A.json
B.json`` prints the table of several partial runs (e.g. arms split over two processes).

    python benchmarks/study_synthetic.py --chips CHIPS.zarr --seeds 0 1 2 --epochs 40 --subset-prob 0.1
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

ARCHS = {
    "SGMA (SGF + MAS)": "sgma_tiny",
    "mean fusion (neither)": "mean_fusion_tiny",
    "concat fusion": "concat_fusion_tiny",
    "SGF only": "sgf_only_tiny",
    "MAS only": "mas_only_tiny",
}
# single-sensor models (mean_fusion_tiny on one modality): what each sensor alone can reach, i.e. the
# ceiling of a fusion model's score on that one-modality subset
REFERENCES = {"S2-only model": "s2", "S1-only model": "s1", "DEM-only model": "dem"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--only", nargs="*", default=None, help="subset of row names / 'robustseg'")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--subset-prob", type=float, default=0.7)
    ap.add_argument("--hole-prob", type=float, default=0.3)
    ap.add_argument("--val-every", type=int, default=1, help="per-epoch validation cadence (training logs only)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study_synthetic.json")
    ap.add_argument("--merge", type=Path, nargs="*", default=None, help="only print the table of these JSONs")
    ap.add_argument("--per-subset", type=Path, nargs="*", default=None,
                    help="only score every checkpoint under these --work folders per modality subset (test split)")
    args = ap.parse_args()
    if args.per_subset:
        per_subset_table(args.per_subset, args.chips)
        return
    if args.merge:
        merged: dict[str, dict[str, list[float]]] = {}
        for f in args.merge:
            merged.update(json.loads(f.read_text())["results"])
        print_table(merged)
        return

    import ray
    import torch

    from sgma_batch.evaluate import evaluate_checkpoint
    from sgma_batch.train import TrainSpec, train

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="synth-study-"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    common = dict(chips=args.chips, storage=work / "runs", epochs=args.epochs, batch_size=8, lr=2e-3,
                  warmup_epochs=2, workers=1, val_every=args.val_every)
    recipe = dict(subset_prob=args.subset_prob, hole_prob=args.hole_prob)
    results: dict[str, dict[str, list[float]]] = {}
    t0 = time.time()

    def save() -> None:
        out = {"chips": str(args.chips), "epochs": args.epochs, "val_every": args.val_every, "seeds": args.seeds, "recipe": recipe,
               "results": results, "wall_s": time.time() - t0}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))

    def record(row: str, ckpt: Path) -> None:
        rep = evaluate_checkpoint(ckpt, args.chips, protocols=("emm",))
        for conv in ("dropped", "zero-filled"):
            res = rep.find("emm", conv)
            for k in ("average", "last1", "top1"):
                results.setdefault(row, {}).setdefault(f"{conv}:{k}", []).append(res.summary[k])
            for subset, v in res.scores.items():
                results[row].setdefault(f"{conv}:miou:{'+'.join(subset)}", []).append(v)
        val = evaluate_checkpoint(ckpt, args.chips, split="val", protocols=("emm",), conventions=("dropped",))
        for k in ("average", "last1"):  # recorded for recipe checks; never used on the test numbers
            results[row].setdefault(f"val-dropped:{k}", []).append(val.find("emm", "dropped").summary[k])
        d = rep.find("emm", "dropped").summary
        print(f"{row}: average {d['average']:.2f} last-1 {d['last1']:.2f}", file=sys.stderr, flush=True)

    for seed in args.seeds:
        for row, arch in ARCHS.items():
            if args.only and row not in args.only:
                continue
            res = train(TrainSpec(name=f"{arch}-s{seed}", model=arch, seed=seed, **recipe, **common))
            record(row, res.checkpoint)
            save()
        for row, mod in REFERENCES.items():
            if args.only and row not in args.only:
                continue
            res = train(TrainSpec(name=f"only-{mod}-s{seed}", model="mean_fusion_tiny", modalities=[mod], seed=seed,
                                  **recipe, **common))
            record(row, res.checkpoint)
            save()
        if not args.only or "robustseg" in args.only:
            teacher = train(TrainSpec(name=f"teacher-s{seed}", model="sgma_tiny", seed=seed, subset_prob=0.0,
                                      hole_prob=0.0, **common))
            student = train(TrainSpec(name=f"student-s{seed}", model="sgma_tiny", seed=seed,
                                      teacher=teacher.checkpoint, **recipe, **common))
            record("SGMA + RobustSeg stage 2", student.checkpoint)
            save()
    ray.shutdown()
    print_table(results)


def per_subset_table(works: list[Path], chips: Path) -> None:
    """Test mIoU per modality subset (EMM, dropped) of every run ``<arch>-s<seed>`` under ``works``."""
    from sgma_batch.evaluate import evaluate_checkpoint

    table: dict[str, dict[str, list[float]]] = {}
    for ckpt in sorted(p for w in works for p in (w / "runs").glob("*/model")):
        arch = ckpt.parent.name.rsplit("-s", 1)[0]
        res = evaluate_checkpoint(ckpt, chips, protocols=("emm",), conventions=("dropped",)).find("emm", "dropped")
        for subset, v in res.scores.items():
            table.setdefault(arch, {}).setdefault("+".join(subset), []).append(v)
    subsets = sorted({k for r in table.values() for k in r}, key=lambda k: (-k.count("+"), k))
    print("| run | " + " | ".join(subsets) + " | seeds |\n|---|" + "---|" * (len(subsets) + 1))
    for arch, r in table.items():
        cells = [f"{np.mean(r[k]):.1f} ± {np.std(r[k]):.1f}" if k in r else "" for k in subsets]
        print(f"| {arch} | " + " | ".join(cells) + f" | {len(next(iter(r.values())))} |")


def print_table(results: dict[str, dict[str, list[float]]]) -> None:
    print("| model | Average (dropped) | Last-1 (dropped) | Average (zero-filled) | Last-1 (zero-filled) | seeds |")
    print("|---|---|---|---|---|---|")
    for row, r in results.items():
        cells = [f"{np.mean(r[k]):.2f} ± {np.std(r[k]):.2f}" for k in
                 ("dropped:average", "dropped:last1", "zero-filled:average", "zero-filled:last1")]
        print(f"| {row} | " + " | ".join(cells) + f" | {len(r['dropped:average'])} |")
    base = results.get("mean fusion (neither)")
    if base is None:
        return
    from scipy.stats import ttest_ind

    # "above by more than the seed spread": the mean difference exceeds the larger of the two stds
    print("\n| model vs mean fusion (dropped) | Δ Average | > spread | Welch p | Δ Last-1 | > spread | Welch p |")
    print("|---|---|---|---|---|---|---|")
    for row, r in results.items():
        if r is base or row in REFERENCES or len(r["dropped:average"]) < 2:  # references: one subset only
            continue
        cells = []
        for k in ("dropped:average", "dropped:last1"):
            d = float(np.mean(r[k]) - np.mean(base[k]))
            spread = max(float(np.std(r[k])), float(np.std(base[k])))
            p = float(ttest_ind(r[k], base[k], equal_var=False).pvalue)
            cells += [f"{d:+.2f}", "yes" if d > spread else "no", f"{p:.3f}"]
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()
