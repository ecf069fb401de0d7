"""RobustSeg stage 2: the public code's KD / HPDM (default) against this project's first variants.

Arms, per seed, all sgma_tiny on the same chip store and recipe (AdamW lr 2e-3 wd 0.01, warm-up 2 epochs,
poly 0.9, batch 8, --subset-prob, hole_prob 0.3, flips/rot90):

* ``teacher``: full modalities (subset_prob 0, hole_prob 0), the frozen teacher of the students;
* ``no distillation``: the student recipe with the SGMA loss only;
* ``faithful``: + 50 KD (mean over classes) + 100 HPDM (robustseg: same-modality pairs) + 12 RRM;
* ``first variant``: + 50 KD (sum over classes) + 100 HPDM (hybrid: random teacher modality half the time);
* optional factor arms (``--factors``): KD sum with robustseg HPDM, KD mean with hybrid HPDM.

Training runs in-process with the same loop parts as ``sgma-batch train`` (``train_epoch``, the objectives,
``modality_dropout``, the same seeding as one Ray worker) but without Ray, to fit the CPU budget. Test split,
EMM, both conventions. Writes JSON and prints a markdown table.

    python benchmarks/study_losses.py --chips demo-chips.zarr --seeds 0 1 2 --epochs 20 --out benchmarks/results/study_losses.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {
    "faithful (KD mean, HPDM robustseg)": ("mean", "robustseg"),
    "first variant (KD sum, HPDM hybrid)": ("sum", "hybrid"),
}
FACTORS = {
    "KD sum, HPDM robustseg": ("sum", "robustseg"),
    "KD mean, HPDM hybrid": ("mean", "hybrid"),
}


def fit(chips: Path, *, seed: int, epochs: int, subset_prob: float, hole_prob: float, teacher=None,
        kd_reduction: str = "mean", hpdm_variant: str = "robustseg", model_name: str = "sgma_tiny"):
    """Train one model in-process (as one Ray Train worker would) and return it in eval mode."""
    import contextlib

    import torch

    from sgma_batch.chips import ChipStore
    from sgma_batch.train import DistillObjective, SGMAObjective, load_split, lr_factor, train_epoch
    from sgma_model import create_model
    from sgma_model.dropout import modality_dropout
    from sgma_model.robustseg import RobustSegLoss

    store = ChipStore(chips)
    mods = list(store.modalities)
    data = load_split(chips, "train", {m: store.stats[m] for m in mods})
    torch.manual_seed(seed)
    model = create_model(model_name, modalities={m: len(store.modalities[m]) for m in mods},
                         num_classes=len(store.classes))
    objective = SGMAObjective()
    if teacher is not None:
        teacher.eval().requires_grad_(False)
        objective = DistillObjective(teacher, RobustSegLoss(model.num_classes, ce_weight=0.0, kd_reduction=kd_reduction,
                                                            hpdm_variant=hpdm_variant), SGMAObjective())
    batch = 8
    steps = max(1, len(data) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps * epochs, 2 * steps, 0.9))
    gen = torch.Generator().manual_seed(seed * 1000)

    def dropout(inputs, masks, g):
        return modality_dropout(inputs, masks, g, subset_prob=subset_prob, hole_prob=hole_prob)

    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(len(data))
        train_epoch(model, objective, opt, sched, data, order, batch_size=batch, generator=gen,
                    rng=np.random.default_rng((seed, epoch, 0)), dropout=dropout, device=torch.device("cpu"),
                    autocast=contextlib.nullcontext)
    return model.eval()


def score(model, chips: Path, split: str = "test") -> dict:
    from sgma_batch.chips import ChipStore, iter_batches, normalise
    from sgma_batch.evaluate import evaluate_model, subset_name

    store = ChipStore(chips)
    mods = list(model.modalities)
    data = store.load(split)
    rep = evaluate_model(model, iter_batches(data, normalise(data, store.stats, mods), mods, 8), protocols=("emm",))
    out = {}
    for conv in ("dropped", "zero-filled"):
        r = rep.find("emm", conv)
        out[conv] = {**{k: r.summary[k] for k in ("average", "last1", "top1")},
                     "miou": {subset_name(s): v for s, v in r.scores.items()}}
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--subset-prob", type=float, default=0.7)
    ap.add_argument("--factors", action="store_true", help="also the two one-factor arms")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study_losses.json")
    ap.add_argument("--merge", type=Path, nargs="*", default=None)
    args = ap.parse_args()
    if args.merge:
        results: dict = {}
        for f in args.merge:
            for row, v in json.loads(f.read_text())["results"].items():
                results.setdefault(row, []).extend(v)
        print_table(results)
        return
    torch.set_num_threads(1)
    arms = {**ARMS, **(FACTORS if args.factors else {})}
    results: dict[str, list[dict]] = {}
    t0 = time.time()
    for seed in args.seeds:
        t = time.time()
        teacher = fit(args.chips, seed=seed, epochs=args.epochs, subset_prob=0.0, hole_prob=0.0)
        results.setdefault("teacher (full modalities)", []).append({"seed": seed, **score(teacher, args.chips),
                                                                    "train_s": time.time() - t})
        t = time.time()
        plain = fit(args.chips, seed=seed, epochs=args.epochs, subset_prob=args.subset_prob, hole_prob=0.3)
        results.setdefault("no distillation", []).append({"seed": seed, **score(plain, args.chips),
                                                          "train_s": time.time() - t})
        for row, (kd, hpdm) in arms.items():
            t = time.time()
            student = fit(args.chips, seed=seed, epochs=args.epochs, subset_prob=args.subset_prob, hole_prob=0.3,
                          teacher=teacher, kd_reduction=kd, hpdm_variant=hpdm)
            results.setdefault(row, []).append({"seed": seed, **score(student, args.chips), "train_s": time.time() - t})
            print(f"seed {seed} {row}: {results[row][-1]['dropped']['average']:.2f} / "
                  f"{results[row][-1]['dropped']['last1']:.2f} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"chips": str(args.chips), "epochs": args.epochs, "seeds": args.seeds,
                                            "subset_prob": args.subset_prob, "results": results,
                                            "wall_s": time.time() - t0}, indent=2))
    print_table(results)


def print_table(results: dict[str, list[dict]]) -> None:
    def ms(v: list[float]) -> str:
        return f"{np.mean(v):.2f} ± {np.std(v):.2f}"

    print("| arm | Average (dropped) | Last-1 (dropped) | Average (zero-filled) | Last-1 (zero-filled) | seeds |")
    print("|---|---|---|---|---|---|")
    for row, runs in results.items():
        cells = [ms([r[c][k] for r in runs]) for c in ("dropped", "zero-filled") for k in ("average", "last1")]
        print(f"| {row} | " + " | ".join(cells) + f" | {len(runs)} |")


if __name__ == "__main__":
    main()
