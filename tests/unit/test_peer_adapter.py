"""The peers' model adapter (benchmarks/peer_adapter.py): the shipped demo model, a small seeded box."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from sgma_batch.models import default_checkpoint
from sgma_model import load_checkpoint

torch.set_num_threads(1)

# benchmarks/ is scripts, not a package: load the adapter from its file
_spec = importlib.util.spec_from_file_location(
    "peer_adapter", Path(__file__).resolve().parents[2] / "benchmarks" / "peer_adapter.py"
)
_adapter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_adapter)
forward_probs, model_input = _adapter.forward_probs, _adapter.model_input


def test_forward_probs_is_a_distribution_per_pixel():
    net, card = load_checkpoint(default_checkpoint(), map_location="cpu")
    net.eval()
    rng = np.random.default_rng(0)
    h, w = 48, 40
    valid = np.ones((h, w), bool)
    valid[:5] = False  # a strip with no data: normalised input is 0 there
    inputs, masks = {}, {}
    for m in card.modality_names:
        c = len(card.modality(m).bands)
        x = model_input(card, m, rng.uniform(0.0, 1.0, (c, h, w)).astype(np.float32), valid)
        assert x.dtype == np.float32 and x.shape == (c, h, w) and not x[:, ~valid].any()
        inputs[m], masks[m] = x, valid
    probs = forward_probs(net, inputs, masks)
    assert probs.shape == (len(card.classes), h, w) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # one modality alone is a valid input too (what a tile without radar gets)
    alone = forward_probs(net, {"s2": inputs["s2"]}, {"s2": masks["s2"]})
    np.testing.assert_allclose(alone.sum(0), 1.0, atol=1e-5)
