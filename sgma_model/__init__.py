"""SGMA: incomplete multimodal semantic segmentation (encoder, SGF, MAS, decoder, baselines, checkpoints).

Imports no Ray, no IO beyond the checkpoint files, no geo libraries.
"""

from __future__ import annotations

from sgma_model.checkpoint import (
    BandInfo,
    ClassInfo,
    ModalityInfo,
    ModelCard,
    check_inputs,
    load_checkpoint,
    read_card,
    save_checkpoint,
)

# The model classes import torch (~2 s); the checkpoint functions above do not until a model is built. They load
# on first use, so reading a card or planning a run does not wait for torch.
_LAZY = {
    "MultiModalSegmenter": "sgma_model.model",
    "SegmentationOutput": "sgma_model.model",
    "create_model": "sgma_model.registry",
    "list_models": "sgma_model.registry",
    "register_model": "sgma_model.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sgma_model' has no attribute {name!r}")


__all__ = [
    "BandInfo",
    "ClassInfo",
    "ModalityInfo",
    "ModelCard",
    "MultiModalSegmenter",
    "SegmentationOutput",
    "check_inputs",
    "create_model",
    "list_models",
    "load_checkpoint",
    "read_card",
    "register_model",
    "save_checkpoint",
]
