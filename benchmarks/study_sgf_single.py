"""What SGF does when one modality is present: measured on a checkpoint (default: the shipped demo model).

With one valid modality at a pixel, both softmaxes over modalities (spatial perceptron, robustness
perceptron) have a single key and weight exactly 1, so the fused feature is out_norm(rp_o(rp_v(z))) with
z = the modality's projection: the class filter, the prototypes, the spatial perceptron (sp_q, sp_k, sp_v,
sp_o, ref_norm) and the robustness perceptron's query/key (rp_q, rp_k) have no effect. This script
re-draws exactly those weights (every scale) and reports the largest change of the logits per modality
subset on the demo chips' test split, plus the share of changed argmax pixels.

    python benchmarks/study_sgf_single.py --chips demo-chips.zarr
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEMANTIC_PATH = ("class_filter", "proto_norm", "sp_q", "sp_k", "sp_v", "sp_o", "ref_norm", "rp_q", "rp_k")


def randomise_semantic_path(model: torch.nn.Module, seed: int = 0) -> int:
    """Re-draw (N(0, 1)) every parameter of the SGF modules named in SEMANTIC_PATH; returns how many tensors."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    for name, p in model.named_parameters():
        parts = name.split(".")  # fusions.<scale>.<module>.<weight|bias>
        if parts[0] == "fusions" and len(parts) == 4 and parts[2] in SEMANTIC_PATH:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))
            n += 1
    return n


def main() -> None:
    from sgma_batch.chips import ChipStore, card_stats, normalise
    from sgma_batch.evaluate import modality_subsets, subset_name
    from sgma_model import load_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.model is None:
        from sgma_batch.models import default_checkpoint

        args.model = default_checkpoint()
    torch.set_num_threads(1)
    model, card = load_checkpoint(args.model)
    store = ChipStore(args.chips)
    data = store.load("test")
    mods = list(model.modalities)
    norm = normalise(data, card_stats(card, {m: store.modalities[m] for m in mods}), mods)
    other = copy.deepcopy(model)
    n = randomise_semantic_path(other)
    rows = {}
    with torch.no_grad():
        for subset in modality_subsets(mods):
            x = {m: torch.from_numpy(norm[m]) for m in subset}
            mk = {m: torch.from_numpy(data[f"{m}_mask"]) for m in subset}
            a, b = model(x, mk).logits, other(x, mk).logits
            rows[subset_name(subset)] = {"max_abs_logit_change": float((a - b).abs().max()),
                                         "argmax_changed": float((a.argmax(1) != b.argmax(1)).float().mean()),
                                         "logit_std": float(a.std())}
    print(f"{args.model}: {n} parameter tensors of the SGF semantic path re-drawn; test split of {args.chips}\n")
    print("| input subset | max abs logit change | pixels whose class changes | logit std |\n|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['max_abs_logit_change']:.3g} | {100 * r['argmax_changed']:.1f} % | {r['logit_std']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"model": str(args.model), "tensors": n, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
