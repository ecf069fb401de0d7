"""Training batches that mix chips with different modality sets (some chips lack S2, some S1): dropout
never turns on an absent modality, MAS draws only modalities a sample holds, and an epoch trains."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from sgma_batch.train import SGMAObjective, SplitData, make_batch, train_epoch
from sgma_model import create_model
from sgma_model.dropout import modality_dropout


def _mixed(n=16, px=32, seed=0) -> SplitData:
    rng = np.random.default_rng(seed)
    has_s2 = np.arange(n) % 2 == 0  # even chips: S2 (optical scene clear)
    has_s1 = np.arange(n) % 4 != 0  # every fourth chip: no SAR
    inputs = {"s2": rng.normal(size=(n, 10, px, px)).astype(np.float32),
              "s1": rng.normal(size=(n, 2, px, px)).astype(np.float32)}
    masks = {"s2": np.repeat(has_s2[:, None, None], px, 1).repeat(px, 2),
             "s1": np.repeat(has_s1[:, None, None], px, 1).repeat(px, 2)}
    for m in inputs:
        inputs[m] = np.where(masks[m][:, None], inputs[m], 0.0).astype(np.float32)
    labels = (rng.random((n, px, px)) < 0.3).astype(np.int64)
    return SplitData(inputs, masks, labels)


def test_dropout_and_mas_respect_what_is_absent():
    data = _mixed()
    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2}, num_classes=2)
    g = torch.Generator().manual_seed(0)
    drawn = {0: 0, 1: 0}
    for _ in range(20):
        inputs, full, labels = make_batch(data, np.arange(16), torch.device("cpu"), np.random.default_rng(1))
        masks = modality_dropout(inputs, full, g, subset_prob=0.7, hole_prob=0.3)
        for m in masks:
            assert not (masks[m] & ~full[m]).any()  # never present where the chip lacks it
        held = torch.stack([masks[m].flatten(1).any(1) for m in model.modalities], 1)  # (B, M)
        assert held.any(1).all()  # every chip keeps something it has
        out = model(inputs, masks, mas=True, generator=g)
        pick = out.mas_modality
        assert held[torch.arange(16), pick].all()  # MAS only draws a modality the sample holds
        for i in pick.tolist():
            drawn[i] += 1
    assert drawn[0] > 0 and drawn[1] > 0


def test_an_epoch_on_mixed_chips_trains():
    data = _mixed()
    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2}, num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    g = torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_epoch(model, SGMAObjective(), opt, sched, data, np.arange(16), batch_size=8, generator=g,
                       rng=np.random.default_rng(0), device=torch.device("cpu"), autocast=contextlib.nullcontext,
                       dropout=lambda x, m, gen: modality_dropout(x, m, gen, subset_prob=0.7, hole_prob=0.3))
    assert np.isfinite(loss) and loss > 0
    # both stems learned (each modality appears in some chips)
    changed = {n for (n, p), b in zip(model.named_parameters(), before) if not torch.equal(p, b)}
    assert any("s2" in n for n in changed) and any("s1" in n for n in changed)
