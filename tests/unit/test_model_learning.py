"""SGMA learns a small seeded synthetic task on CPU and beats mean fusion on the worst modality subset.

Task (sgma_model.testing.synthetic_task): 4 classes in blobby 32x32 maps; modality opt shows class 0
strongly, sar class 1, dem class 2, each other class only weakly, under noise sigma 1.5. Training: 60
AdamW steps, batch 16, modality dropout with subset_prob=0.1 (whole-modality subsets are rare, as when
one modality dominates a dataset) and cloud holes; the same for both models.

Measured on this machine (torch 2.13 CPU, 1 thread), seeds 0..7 (seeds 1, 2 in a first round; seed 0
measured in both rounds, identical):
  sgma_tiny        worst subset 0.413 0.406 0.401 0.409 0.419 0.421 0.425 0.409   (min 0.401)
  mean_fusion_tiny worst subset 0.254 0.328 0.315 0.246 0.232 0.267 0.263 0.224
  margin (sgma - mean, worst)   0.159 0.078 0.086 0.163 0.187 0.154 0.162 0.185   (min 0.078)
  sgma full set - best single modality: 0.21 .. 0.23 (seeds 0, 3..7)
  ~24 s for sgma_tiny + ~8 s for mean_fusion_tiny on an idle core.
Uniformly random prediction scores ~0.14 mIoU. With subset_prob=0.3 the margins shrink to 0.005-0.031
(mean fusion then sees single modalities often enough), which is why MAS matters in the imbalanced regime.
"""

from __future__ import annotations

import pytest
import torch

from sgma_model.testing import TASK_CLASSES, confusion, miou, synthetic_task, train_and_evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # trains two models (~30 s on an idle core)

torch.set_num_threads(1)

SEED = 0


def test_sgma_learns_every_subset_and_beats_mean_fusion_on_the_worst():
    sgma = train_and_evaluate("sgma_tiny", SEED, steps=60, batch=16, subset_prob=0.1)
    mean = train_and_evaluate("mean_fusion_tiny", SEED, steps=60, batch=16, subset_prob=0.1)
    _, labels = synthetic_task(32, 32, torch.Generator().manual_seed(10_000 + SEED))
    rand = torch.randint(0, TASK_CLASSES, labels.shape, generator=torch.Generator().manual_seed(0))
    chance = miou(confusion(rand, labels, TASK_CLASSES))
    assert 0.1 < chance < 0.2
    assert len(sgma) == 7
    # every subset clearly above chance (measured minimum 0.401 over eight seeds)
    assert min(sgma.values()) > 0.33 > 2 * chance, sgma
    # all modalities together beat any single one (measured +0.21 .. +0.23)
    assert sgma["opt+sar+dem"] > max(sgma["opt"], sgma["sar"], sgma["dem"]) + 0.1, sgma
    # SGMA's worst subset beats mean fusion's (measured margin 0.078 .. 0.187)
    assert min(sgma.values()) > min(mean.values()) + 0.04, (sgma, mean)
