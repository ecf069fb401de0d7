"""Helpers for tests and benchmarks of sgma_model: tiny seeded inputs, cards, subsets (no test framework)."""

from __future__ import annotations

import itertools

import torch

MODALITIES = {"s2": 10, "s1": 2, "dem": 1}
CLASSES = [
    ("water", "#1f78b4"),
    ("trees", "#33a02c"),
    ("grass", "#b2df8a"),
    ("crops", "#ffd92f"),
    ("built_up", "#e31a1c"),
    ("bare", "#bfa27a"),
    ("wetland", "#6a3d9a"),
]
BANDS = {
    "s2": ("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22"),
    "s1": ("vv", "vh"),
    "dem": ("elevation",),
}
SUBSETS = [tuple(c) for r in range(1, len(MODALITIES) + 1) for c in itertools.combinations(MODALITIES, r)]


def make_inputs(subset, b=2, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, MODALITIES[m], h, w, generator=g) for m in subset}


def card_modalities():
    return [
        {
            "name": m,
            "collection_hint": {"s2": "sentinel-2-c1-l2a", "s1": "sentinel-1-rtc", "dem": "cop-dem-glo-30"}[
                m
            ],
            "bands": [
                {"name": b, "common_name": b, "mean": 0.1 * i, "std": 1.0 + i} for i, b in enumerate(BANDS[m])
            ],
        }
        for m in MODALITIES
    ]


# -- a small seeded synthetic task where each modality identifies different classes ----------------------
TASK_MODALITIES = {"opt": 3, "sar": 2, "dem": 1}
TASK_CLASSES = 4
# class signatures per modality (rows = classes). Each modality shows "its" class strongly (opt: 0, sar: 1,
# dem: 2) and the other classes only weakly, under heavy noise: every subset carries some signal about every
# class (spatial context averages the noise), but each class is identified reliably by one modality only.
_SIGNATURES = {
    "opt": torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6], [0.0, 0.0, 0.0]]),
    "sar": torch.tensor([[0.6, 0.0], [0.0, 3.0], [0.0, 0.6], [0.0, 0.0]]),
    "dem": torch.tensor([[-0.6], [0.6], [3.0], [0.0]]),
}


def synthetic_task(n: int, size: int, generator: torch.Generator, noise: float = 1.5):
    """Blobby label maps (n, size, size) and per-modality inputs = class signature + Gaussian noise."""
    import torch.nn.functional as F

    logits = torch.randn(n, TASK_CLASSES, size // 8 + 1, size // 8 + 1, generator=generator)
    logits = F.interpolate(logits, size=(size, size), mode="bicubic", align_corners=False)
    labels = logits.argmax(dim=1)  # (n, H, W)
    inputs = {}
    for m, sig in _SIGNATURES.items():
        x = sig[labels].permute(0, 3, 1, 2)  # (n, C, H, W)
        inputs[m] = x + noise * torch.randn(x.shape, generator=generator)
    return inputs, labels


def confusion(pred, target, num_classes: int, ignore_index: int = 255):
    keep = target != ignore_index
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou(conf) -> float:
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def train_and_evaluate(
    name: str,
    seed: int,
    steps: int = 60,
    batch: int = 16,
    size: int = 32,
    lr: float = 3e-3,
    subset_prob: float = 0.3,
):
    """Train ``name`` on the synthetic task with modality dropout; mIoU per modality subset on held-out data."""
    from sgma_model.dropout import modality_dropout
    from sgma_model.losses import sgma_loss
    from sgma_model.registry import create_model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = create_model(name, modalities=TASK_MODALITIES, num_classes=TASK_CLASSES, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        x, y = synthetic_task(batch, size, g)
        masks = modality_dropout(x, None, g, subset_prob=subset_prob, hole_prob=0.3)
        out = model(x, masks, mas=True, generator=g)
        loss = sgma_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    xe, ye = synthetic_task(32, size, torch.Generator().manual_seed(10_000 + seed))
    result = {}
    with torch.no_grad():
        for subset in (
            tuple(c)
            for r in range(1, len(TASK_MODALITIES) + 1)
            for c in itertools.combinations(TASK_MODALITIES, r)
        ):
            out = model({m: xe[m] for m in subset})
            result["+".join(subset)] = miou(confusion(out.logits.argmax(1), ye, TASK_CLASSES))
    return result
