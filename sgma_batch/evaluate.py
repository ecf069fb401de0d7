"""Missing-modality evaluation protocols of MODEL.md: EMM, RMM and NM, with their summary numbers.

* **EMM** (entire-missing modality): every non-empty subset S of the model's N modalities; mIoU per
  subset from one confusion matrix accumulated over the whole split (never averaged per image).
* **RMM** (random-missing modality): the same subsets; each element of a *missing* modality's tensor is
  zeroed with probability r in {0.25, 0.5, 0.75} (the modality itself stays in the input).
* **NM** (noisy modality): all modalities present and corrupted by salt-and-pepper noise of density
  {0.05, 0.1, 0.2} followed by additive Gaussian noise sigma {0.1, 0.2, 0.5} on normalised inputs
  (Low / Mid / High). Salt is the per-sample, per-band maximum, pepper the minimum.
* **Summaries**: Average over subsets, Top-1 (best subset), Last-1 (worst subset) and the expected mIoU
  ``E(p) = sum_S w_S mIoU_S / sum_S w_S`` with ``w_S = p^k (1-p)^(N-k)``, k = number of missing modalities.

Two conventions for "missing", each result carries its label:

* ``dropped``: the absent modality's key is left out of the model input (and per-pixel holes are
  availability-mask False): what SGMA and RobustSeg's student see.
* ``zero-filled``: the benchmark's convention: the absent modality is an all-zero tensor after
  normalisation (and per-pixel holes are zeros), with its mask all True, so the model cannot tell.

The data's own holes (clouds, swath gaps in the chip store) are always passed as availability masks;
the convention applies to what the protocol removes. Pixels with no modality at all still get the
argmax of the model's logits and are scored (never silently excluded).

**Data that lacks some of the model's modalities** (e.g. SAR-only chips for an S1+S2 model): such a
modality is *unavailable*; it is passed as absent (dropped: left out; zero-filled: zeros, mask True, as
the convention says), and only the subsets of the available modalities can be scored. Every protocol runs
on them; the report lists the scored and the unscored subsets, and its summary numbers (Average, Top-1,
Last-1, E(p)) are over the scored subsets only, which the report says.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
CONVENTIONS: tuple[str, ...] = ("dropped", "zero-filled")
E_PROBABILITIES: tuple[float, ...] = (0.2, 0.1, 0.05)
RMM_RATES: tuple[float, ...] = (0.25, 0.5, 0.75)
NM_LEVELS: Mapping[str, tuple[float, float]] = {  # name -> (salt-and-pepper density, Gaussian sigma)
    "low": (0.05, 0.1),
    "mid": (0.1, 0.2),
    "high": (0.2, 0.5),
}
PROTOCOLS: tuple[str, ...] = ("emm", "rmm", "nm")

Subset = tuple[str, ...]


# -- arithmetic ------------------------------------------------------------------------------------
def modality_subsets(modalities: Sequence[str]) -> list[Subset]:
    """All 2^N - 1 non-empty subsets, in model order, largest first (full set first)."""
    mods = tuple(modalities)
    out: list[Subset] = []
    for k in range(len(mods), 0, -1):
        out.extend(itertools.combinations(mods, k))
    return out


def subset_name(subset: Sequence[str]) -> str:
    """Stable display / JSON key of a subset, e.g. ``s2+s1``."""
    return "+".join(subset)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(K, K) int64 counts, rows = truth, columns = prediction; ``ignore_index`` labels are skipped."""
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"labels outside 0..{num_classes - 1} (and not {ignore_index}): check the class list")
    idx = t * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def iou_per_class(cm: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN where the class is neither in truth nor prediction."""
    c = np.asarray(cm, dtype=np.float64)
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(cm: np.ndarray | torch.Tensor) -> float:
    """Mean IoU over classes that occur in truth or prediction (NaN classes skipped), in percent."""
    iou = iou_per_class(cm)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou) * 100.0)


def subset_weight(subset: Sequence[str], n_modalities: int, p: float) -> float:
    """``p^k (1-p)^(N-k)`` with k = number of missing modalities: the chance of exactly this subset."""
    k = n_modalities - len(subset)
    return p**k * (1.0 - p) ** (n_modalities - k)


def expected_miou(scores: Mapping[Subset, float], n_modalities: int, p: float) -> float:
    """E(p) = sum_S w_S mIoU_S / sum_S w_S over the (non-empty) subsets scored."""
    num = den = 0.0
    for subset, score in scores.items():
        w = subset_weight(subset, n_modalities, p)
        num += w * score
        den += w
    return num / den


def summarise(scores: Mapping[Subset, float], n_modalities: int) -> dict[str, float]:
    """Average, Top-1, Last-1 and E(p) for p in :data:`E_PROBABILITIES` (subsets with mIoU NaN excluded)."""
    finite = {s: v for s, v in scores.items() if not math.isnan(v)}
    values = list(finite.values())
    out = {
        "average": float(np.mean(values)),
        "top1": float(np.max(values)),
        "last1": float(np.min(values)),
    }
    for p in E_PROBABILITIES:
        out[f"E({p:g})"] = expected_miou(finite, n_modalities, p)
    return out


# -- corruption ------------------------------------------------------------------------------------
def zero_elements(x: torch.Tensor, rate: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """RMM, zero-filled: zero each element of x (B,C,H,W) with probability ``rate``; returns (x', zeroed)."""
    drop = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < rate  # (B,C,H,W)
    return x.masked_fill(drop, 0.0), drop


def zero_pixels(
    x: torch.Tensor, mask: torch.Tensor, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMM, dropped: remove each pixel (all bands) with probability ``rate``: zeros and mask False."""
    b, _, h, w = x.shape
    drop = torch.rand((b, h, w), generator=generator, device="cpu").to(x.device) < rate  # (B,H,W)
    return x.masked_fill(drop[:, None], 0.0), mask & ~drop


def salt_and_pepper(x: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Replace a ``density`` fraction of elements: half by the per-sample/band max, half by the min."""
    u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)  # (B,C,H,W)
    hi = x.amax(dim=(2, 3), keepdim=True).expand_as(x)
    lo = x.amin(dim=(2, 3), keepdim=True).expand_as(x)
    out = torch.where(u < density / 2, hi, x)
    return torch.where((u >= density / 2) & (u < density), lo, out)


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, sigma^2) noise to every element (inputs are normalised, so sigma is in std units)."""
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
    return x + sigma * noise


def noisy(x: torch.Tensor, level: str, generator: torch.Generator) -> torch.Tensor:
    """NM corruption at ``level`` in :data:`NM_LEVELS`: salt-and-pepper, then Gaussian noise."""
    density, sigma = NM_LEVELS[level]
    return gaussian_noise(salt_and_pepper(x, density, generator), sigma, generator)


# -- model inputs per protocol ---------------------------------------------------------------------
Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]  # inputs, masks, labels


def present_only(
    inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], subset: Sequence[str], convention: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """EMM inputs: modalities outside ``subset`` dropped (key removed) or zero-filled (mask all True)."""
    if convention == "dropped":
        return {m: inputs[m] for m in subset}, {m: masks[m] for m in subset}
    if convention != "zero-filled":
        raise ValueError(f"unknown convention {convention!r}; use one of {CONVENTIONS}")
    x_out: dict[str, torch.Tensor] = {}
    m_out: dict[str, torch.Tensor] = {}
    for m, x in inputs.items():
        if m in subset:
            x_out[m] = x.masked_fill(~masks[m][:, None], 0.0)
        else:
            x_out[m] = torch.zeros_like(x)
        m_out[m] = torch.ones_like(masks[m])
    return x_out, m_out


def random_missing(
    inputs: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    subset: Sequence[str],
    rate: float,
    convention: str,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """RMM inputs: modalities outside ``subset`` keep their tensor with elements zeroed at ``rate``."""
    x_out: dict[str, torch.Tensor] = {}
    m_out: dict[str, torch.Tensor] = {}
    for m, x in inputs.items():
        mask = masks[m]
        if m in subset:
            x_out[m], m_out[m] = x, mask
        elif convention == "dropped":
            x_out[m], m_out[m] = zero_pixels(x, mask, rate, generator)
        elif convention == "zero-filled":
            x_out[m], _ = zero_elements(x, rate, generator)
            m_out[m] = mask
        else:
            raise ValueError(f"unknown convention {convention!r}; use one of {CONVENTIONS}")
        if convention == "zero-filled":  # data holes are zeros the model cannot see as holes
            x_out[m] = x_out[m].masked_fill(~mask[:, None], 0.0)
            m_out[m] = torch.ones_like(mask)
    return x_out, m_out


# -- running a model over a split ------------------------------------------------------------------
@dataclass
class ProtocolResult:
    """mIoU per subset (percent) of one protocol / convention / level, with its summary numbers."""

    protocol: str
    convention: str
    level: str | None
    scores: dict[Subset, float]
    summary: dict[str, float]
    per_class_iou: dict[Subset, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "protocol": self.protocol,
            "convention": self.convention,
            "level": self.level,
            "miou": {subset_name(s): v for s, v in self.scores.items()},
            "per_class_iou": {subset_name(s): v for s, v in self.per_class_iou.items()},
            "summary": self.summary,
        }


@dataclass
class EvaluationReport:
    """Everything ``evaluate`` measured, in the order it is printed."""

    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    n_pixels: int
    results: list[ProtocolResult]
    meta: dict = field(default_factory=dict)
    available: tuple[str, ...] | None = None  # modalities the data holds (None: all of the model's)

    @property
    def scored_subsets(self) -> list[Subset]:
        avail = set(self.available if self.available is not None else self.modalities)
        return [s for s in modality_subsets(self.modalities) if set(s) <= avail]

    @property
    def unscored_subsets(self) -> list[Subset]:
        scored = set(self.scored_subsets)
        return [s for s in modality_subsets(self.modalities) if s not in scored]

    def find(self, protocol: str, convention: str, level: str | None = None) -> ProtocolResult:
        for r in self.results:
            if (r.protocol, r.convention, r.level) == (protocol, convention, level):
                return r
        raise KeyError((protocol, convention, level))

    def to_json(self) -> dict:
        return {
            "modalities": list(self.modalities),
            "classes": list(self.class_names),
            "n_pixels": self.n_pixels,
            "conventions": {
                "dropped": "missing modality left out of the input / availability mask False",
                "zero-filled": "missing modality set to zeros after normalisation, mask True",
            },
            "available": list(self.available if self.available is not None else self.modalities),
            "scored_subsets": [subset_name(s) for s in self.scored_subsets],
            "unscored_subsets": [subset_name(s) for s in self.unscored_subsets],
            "summary_over": "scored subsets only" if self.unscored_subsets else "all subsets",
            "results": [r.to_json() for r in self.results],
            **self.meta,
        }

    def to_markdown(self) -> str:
        subsets = modality_subsets(self.modalities)
        keys = ["average", "top1", "last1", *(f"E({p:g})" for p in E_PROBABILITIES)]
        head = ["protocol", "convention", *(subset_name(s) for s in subsets),
                "Average", "Top-1", "Last-1", *(k for k in keys[3:])]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.results:
            proto = r.protocol.upper() + (f" {r.level}" if r.level else "")
            cells = [proto, r.convention]
            cells += [_fmt(r.scores.get(s)) for s in subsets]
            cells += [_fmt(r.summary.get(k)) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"mIoU in %, {self.n_pixels} labelled pixels; '-' = not part of that protocol.")
        if self.unscored_subsets:
            lacking = [m for m in self.modalities if m not in (self.available or ())]
            lines.append(
                f"The data lacks {', '.join(lacking)}: scored subsets {', '.join(subset_name(s) for s in self.scored_subsets)}; "
                f"not scorable: {', '.join(subset_name(s) for s in self.unscored_subsets)}. Average, Top-1, "
                "Last-1 and E(p) are over the scored subsets only."
            )
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _cases(
    modalities: Sequence[str], protocols: Sequence[str], conventions: Sequence[str],
    available: Sequence[str] | None = None,
) -> Iterator[tuple[str, str, str | None, Subset]]:
    """(protocol, convention, level, subset) for every measurement, in report order (subsets of ``available``)."""
    avail = set(modalities if available is None else available)
    subsets = [s for s in modality_subsets(modalities) if set(s) <= avail]
    full = tuple(m for m in modalities if m in avail)
    for proto in protocols:
        if proto == "emm":
            for conv in conventions:
                for s in subsets:
                    yield "emm", conv, None, s
        elif proto == "rmm":
            for conv in conventions:
                for r in RMM_RATES:
                    for s in subsets:
                        yield "rmm", conv, f"r={r:g}", s
        elif proto == "nm":
            for level in NM_LEVELS:  # nothing is missing, so the conventions coincide
                yield "nm", "n/a", level, full
        else:
            raise ValueError(f"unknown protocol {proto!r}; use one of {PROTOCOLS} or 'all'")


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    protocols: Sequence[str] = PROTOCOLS,
    conventions: Sequence[str] = CONVENTIONS,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    available: Sequence[str] | None = None,
) -> EvaluationReport:
    """Run the protocols over every batch and accumulate one confusion matrix per case.

    Args:
        model: an SGMA-like model: ``model(inputs, masks).logits`` (B,K,H,W); ``model.modalities``.
        batches: (inputs normalised per modality (B,C,H,W), availability masks (B,H,W) bool, labels (B,H,W)).
        protocols: any of ``emm``, ``rmm``, ``nm``.
        conventions: ``dropped`` and/or ``zero-filled`` (NM has none).
        seed: seeds the torch Generator of RMM / NM corruption, so a rerun gives the same numbers.
        available: the model's modalities that the data holds (default: all of them). The others are
            passed as absent in every case (zeros, mask False; zero-filled: zeros, mask True) and only
            subsets of ``available`` are scored.
    """
    model.eval()
    modalities = tuple(model.modalities)
    avail = tuple(m for m in modalities if available is None or m in available)
    if not avail:
        raise ValueError(f"the data holds none of the model's modalities {list(modalities)}")
    k = int(model.num_classes)
    bands = dict(getattr(model, "band_counts", {}) or {})
    gen = torch.Generator().manual_seed(seed)
    cases = list(_cases(modalities, protocols, conventions, avail))
    cms = {c: torch.zeros(k, k, dtype=torch.int64) for c in cases}
    n_pixels = 0
    for inputs, masks, labels in batches:
        inputs = {m: x.to(device) for m, x in inputs.items() if m in avail}
        masks = {m: v.to(device) for m, v in masks.items() if m in avail}
        ref = next(iter(inputs.values()))
        for m in modalities:  # unavailable: absent (zeros, mask False), in model order
            if m not in inputs:
                if m not in bands:
                    raise ValueError(f"the batches lack {m} and the model does not declare its band count")
                b, _, h, w = ref.shape
                inputs[m] = ref.new_zeros((b, bands[m], h, w))
                masks[m] = torch.zeros((b, h, w), dtype=torch.bool, device=ref.device)
        inputs = {m: inputs[m] for m in modalities}
        masks = {m: masks[m] for m in modalities}
        n_pixels += int((labels != IGNORE_INDEX).sum())
        for case in cases:
            proto, conv, level, subset = case
            if proto == "emm":
                x, mk = present_only(inputs, masks, subset, conv)
            elif proto == "rmm":
                x, mk = random_missing(inputs, masks, subset, float(level.split("=")[1]), conv, gen)
            else:
                x = {m: noisy(v, level, gen) for m, v in inputs.items()}
                mk = dict(masks)
            logits = model(x, mk).logits  # (B,K,H,W)
            cms[case] += confusion_matrix(logits.argmax(1), labels.to(logits.device), k)
    results: list[ProtocolResult] = []
    groups: dict[tuple[str, str, str | None], dict[Subset, torch.Tensor]] = {}
    for (proto, conv, level, subset), cm in cms.items():
        groups.setdefault((proto, conv, level), {})[subset] = cm
    for (proto, conv, level), per_subset in groups.items():
        scores = {s: mean_iou(cm) for s, cm in per_subset.items()}
        per_class = {s: [float(v * 100) for v in iou_per_class(cm)] for s, cm in per_subset.items()}
        results.append(ProtocolResult(proto, conv, level, scores, summarise(scores, len(modalities)), per_class))
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(k))
    log.info("evaluated %d cases over %d labelled pixels", len(cases), n_pixels)
    return EvaluationReport(modalities, names, n_pixels, results, available=avail)


def evaluate_checkpoint(
    model_path: str | Path,
    chips_path: str | Path,
    *,
    split: str = "test",
    protocols: Sequence[str] = PROTOCOLS,
    conventions: Sequence[str] = CONVENTIONS,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
) -> EvaluationReport:
    """Evaluate a checkpoint on a chip store split, normalising with the checkpoint card's statistics."""
    from sgma_batch.chips import ChipStore, card_stats, iter_batches, normalise
    from sgma_batch.errors import ChipStoreError
    from sgma_model import load_checkpoint

    model, card = load_checkpoint(model_path, map_location=device)
    store = ChipStore(chips_path)
    mods = [m for m in model.modalities if m in store.modalities]
    if not mods:
        raise ChipStoreError(
            f"the chips hold {sorted(store.modalities)}, the model needs {list(model.modalities)}; "
            "export chips for this model's modalities"
        )
    data = store.load(split)
    if len(data["label"]) == 0:
        raise ChipStoreError(f"the chip store has no {split!r} chips; choose another --split")
    # a modality the split holds nowhere (no chip, or no valid pixel) is unavailable, as one not in the store
    avail = [m for m in mods if bool(data[f"{m}_mask"].any())]
    if not avail:
        raise ChipStoreError(f"the {split!r} chips hold no valid pixel of the model's modalities {list(model.modalities)}")
    if len(avail) < len(model.modalities):
        log.warning("the %s chips lack %s: scoring the subsets of %s only", split,
                    [m for m in model.modalities if m not in avail], avail)
    stats = card_stats(card, {m: store.modalities[m] for m in avail})
    norm = normalise(data, stats, avail)
    report = evaluate_model(
        model, iter_batches(data, norm, avail, batch_size), protocols=protocols, conventions=conventions,
        class_names=[c.name for c in card.classes], seed=seed, device=device, available=avail,
    )
    report.meta = {"model": str(model_path), "model_hash": card.model_hash, "chips": str(chips_path),
                   "split": split, "seed": seed}
    return report
