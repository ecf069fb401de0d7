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
SUBSETS = [
    tuple(c) for r in range(1, len(MODALITIES) + 1) for c in itertools.combinations(MODALITIES, r)
]


def make_inputs(subset, b=2, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, MODALITIES[m], h, w, generator=g) for m in subset}


def card_modalities():
    return [
        {
            "name": m,
            "collection_hint": {"s2": "sentinel-2-c1-l2a", "s1": "sentinel-1-rtc", "dem": "cop-dem-glo-30"}[m],
            "bands": [{"name": b, "common_name": b, "mean": 0.1 * i, "std": 1.0 + i} for i, b in enumerate(BANDS[m])],
        }
        for m in MODALITIES
    ]
