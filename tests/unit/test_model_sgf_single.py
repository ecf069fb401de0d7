"""SGF with one modality: both softmaxes over modalities have one key (weight exactly 1), so the class
filter, prototypes, spatial perceptron and the robustness perceptron's query/key do nothing; re-drawing
them leaves single-modality logits bitwise unchanged and changes multi-modality ones (docs/model.md)."""

from __future__ import annotations

import copy

import torch

from sgma_model import create_model
from sgma_model.testing import make_inputs

SEMANTIC_PATH = ("class_filter", "proto_norm", "sp_q", "sp_k", "sp_v", "sp_o", "ref_norm", "rp_q", "rp_k")


def _redrawn(model):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    n = 0
    for name, p in other.named_parameters():
        parts = name.split(".")
        if parts[0] == "fusions" and len(parts) == 4 and parts[2] in SEMANTIC_PATH:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))
            n += 1
    assert n == 4 * 2 * len(SEMANTIC_PATH)  # weight + bias of each module at 4 scales
    return other


def test_single_modality_ignores_the_semantic_path_multi_modality_does_not():
    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2, "dem": 1}, num_classes=7).eval()
    other = _redrawn(model).eval()
    with torch.no_grad():
        for m in ("s2", "s1", "dem"):
            x = make_inputs((m,), b=2, h=64, w=64, seed=1)
            assert torch.equal(model(x).logits, other(x).logits), m
        x = make_inputs(("s2", "s1"), b=2, h=64, w=64, seed=1)
        assert (model(x).logits - other(x).logits).abs().max() > 1e-3
