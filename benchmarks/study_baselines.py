"""Trivial baselines beside every real-data result: fitted SAR threshold, Otsu, logistic regression.

On a chip store with classes (not_water|dry, water) and the same train / test split the models use:

* ``VV < t (fitted)``: t chosen on the **train** split's labelled pixels to maximise water IoU (grid 0.1 dB);
* ``VV < -15 dB``: the fixed textbook threshold;
* ``Otsu on VV``: Otsu's threshold of the **test** chip's own VV histogram (unsupervised, per source chip);
* ``MNDWI > t (fitted)``: (green - swir16) / (green + swir16), t fitted on train like the SAR threshold;
* ``logistic regression``: on the standardised bands of S1, of S2, and of both (pixels where all those
  bands are valid), fitted on train by L-BFGS (convex: no seed).

Water IoU and mIoU on the test split, over all its labelled pixels (a pixel a baseline cannot score, e.g.
no valid VV, counts as "not water"), and per source chip (``source_index``). Prints markdown, writes JSON.

    python benchmarks/study_baselines.py --chips s1f11.zarr --out benchmarks/results/study_baselines_s1f11.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(water IoU %, mIoU % over the two classes) on labelled pixels (truth in {0, 1})."""
    out = []
    for c in (1, 0):
        tp = np.sum((pred == c) & (truth == c))
        union = np.sum((pred == c) | (truth == c))
        out.append(100.0 * tp / union if union else float("nan"))
    return out[0], float(np.nanmean(out))


def otsu(x: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(x, bins=bins)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1)
    m1 = (np.sum(hist * mids) - np.cumsum(hist * mids)) / np.maximum(w1, 1)
    return float(mids[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def fit_threshold(x: np.ndarray, water: np.ndarray, below: bool) -> float:
    """Threshold maximising water IoU of ``x < t`` (below) or ``x > t``."""
    grid = np.arange(np.percentile(x, 0.5), np.percentile(x, 99.5), 0.1 if below else 0.005)
    best, bt = -1.0, float(grid[0])
    for t in grid:
        pred = x < t if below else x > t
        tp = np.sum(pred & water)
        union = np.sum(pred | water)
        v = tp / union if union else 0.0
        if v > best:
            best, bt = v, float(t)
    return bt


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, weights incl. bias) of a logistic regression fitted by L-BFGS on standardised x."""
    import torch

    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mean) / std).astype(np.float64))
    yt = torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w[:-1] + w[-1], yt) + 1e-4 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach().numpy()


def main() -> None:
    from sgma_batch.chips import ChipStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    store = ChipStore(args.chips)
    names = [c["name"] for c in store.classes]
    if len(names) != 2 or "water" not in names[1]:
        raise SystemExit(f"expected classes (not water, water), got {names}")
    tr, te = store.load("train"), store.load(args.split)
    src = np.asarray(store.group["source_index"][:]) if "source_index" in store.group else np.zeros(len(store.split), int)
    te_src = src[store.indices(args.split)]
    chip_ids = [c["id"] for c in store.attrs.get("source", {}).get("chips", [])] or ["chip"]
    has = {m: m in store.modalities for m in ("s1", "s2")}

    def flat(d, m):  # (N, C, H, W) -> (N*H*W, C)
        return np.moveaxis(d[m], 1, -1).reshape(-1, d[m].shape[1])

    ytr, yte = tr["label"].reshape(-1), te["label"].reshape(-1)
    ltr, lte = ytr != 255, yte != 255
    preds: dict[str, np.ndarray] = {}
    fitted: dict[str, float] = {}
    if has["s1"]:
        vtr, vte = tr["s1_mask"].reshape(-1), te["s1_mask"].reshape(-1)
        vv_tr, vv_te = flat(tr, "s1")[:, 0], flat(te, "s1")[:, 0]
        k = ltr & vtr
        t = fit_threshold(vv_tr[k], ytr[k] == 1, below=True)
        fitted["VV threshold (dB)"] = t
        preds[f"VV < {t:.1f} dB (fitted on train)"] = vte & (vv_te < t)
        preds["VV < -15 dB (fixed)"] = vte & (vv_te < -15.0)
        otsu_pred = np.zeros_like(vte)
        per_n = te["label"][0].size
        fitted["Otsu (per test chip, dB)"] = []
        for s in np.unique(te_src):
            rows = np.repeat(te_src == s, per_n)
            sel = rows & vte
            if sel.any():
                to = otsu(vv_te[sel])
                fitted["Otsu (per test chip, dB)"].append(round(to, 2))
                otsu_pred[sel] = vv_te[sel] < to
        preds["Otsu on VV (per test chip)"] = otsu_pred
    if has["s2"]:
        bands = list(store.modalities["s2"])
        g, s = bands.index("green"), bands.index("swir16")
        vtr2, vte2 = tr["s2_mask"].reshape(-1), te["s2_mask"].reshape(-1)
        x_tr, x_te = flat(tr, "s2"), flat(te, "s2")
        mn_tr = (x_tr[:, g] - x_tr[:, s]) / np.maximum(x_tr[:, g] + x_tr[:, s], 1e-6)
        mn_te = (x_te[:, g] - x_te[:, s]) / np.maximum(x_te[:, g] + x_te[:, s], 1e-6)
        k = ltr & vtr2
        if k.any():
            t = fit_threshold(mn_tr[k], ytr[k] == 1, below=False)
            fitted["MNDWI threshold"] = t
            preds[f"MNDWI > {t:.3f} (fitted on train)"] = vte2 & (mn_te > t)
    for combo in (("s1",), ("s2",), ("s1", "s2")):
        if not all(has[m] for m in combo):
            continue
        xtr = np.concatenate([flat(tr, m) for m in combo], axis=1)
        xte = np.concatenate([flat(te, m) for m in combo], axis=1)
        vtr_c = np.all([tr[f"{m}_mask"].reshape(-1) for m in combo], axis=0)
        vte_c = np.all([te[f"{m}_mask"].reshape(-1) for m in combo], axis=0)
        k = ltr & vtr_c
        if not k.any():
            continue
        mean, std, w = fit_logistic(xtr[k], ytr[k] == 1)
        z = ((xte - mean) / std) @ w[:-1] + w[-1]
        preds[f"logistic regression on {'+'.join(m.upper() for m in combo)} bands"] = vte_c & (z > 0)
    rows = {}
    for name, p in preds.items():
        overall = iou(p[lte].astype(int), yte[lte])
        per_chip = {}
        per_n = te["label"][0].size
        for s in np.unique(te_src):
            sel = np.repeat(te_src == s, per_n) & lte
            per_chip[chip_ids[int(s)] if 0 <= s < len(chip_ids) else str(s)] = iou(p[sel].astype(int), yte[sel])[0]
        rows[name] = {"water_iou": overall[0], "miou": overall[1], "per_chip_water_iou": per_chip}
    print(f"{args.chips} ({args.split} split, {int(lte.sum())} labelled pixels)\n")
    print("| baseline | water IoU % | mIoU % | per test chip (water IoU %) |\n|---|---|---|---|")
    for name, r in rows.items():
        pc = ", ".join(f"{k} {v:.1f}" for k, v in r["per_chip_water_iou"].items())
        print(f"| {name} | {r['water_iou']:.1f} | {r['miou']:.1f} | {pc} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"chips": str(args.chips), "split": args.split, "pixels": int(lte.sum()),
                                        "fitted": fitted, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
