"""The one model adapter every peer of the comparison uses (benchmarks/peers.py).

The naive baseline and the dask peer turn harmonised arrays into model inputs with :func:`model_input`
and forward them with :func:`forward_probs`, so differences between the peers' maps come from what they
read and how they tile, never from how they call the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["forward_probs", "model_input"]


def model_input(card: Any, modality: str, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Harmonised ``data`` (C, H, W), physical units -> the model card's normalised input, 0 where invalid
    (as sgma-batch's ``execute.read_tile`` does)."""
    x = card.normalise(modality, data)  # (C, H, W) float32
    x[:, ~valid] = 0.0
    return x


def forward_probs(model: Any, inputs: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Class probabilities (K, H, W) float32 of one box: one forward of the whole box, no gradient.

    Args:
        model: a checkpoint's network in eval mode (``sgma_model.load_checkpoint``).
        inputs: {modality: (C, H, W) float32 normalised}, the modalities present in the box only.
        masks: {modality: (H, W) bool}, True = valid pixel.
    """
    import torch

    xb = {m: torch.from_numpy(np.ascontiguousarray(x))[None] for m, x in inputs.items()}  # {m: (1, C, H, W)}
    mb = {m: torch.from_numpy(np.ascontiguousarray(v))[None] for m, v in masks.items()}  # {m: (1, H, W)}
    with torch.inference_mode():
        logits = model(xb, masks=mb).logits  # (1, K, H, W)
        return torch.softmax(logits.float(), dim=1)[0].numpy()
