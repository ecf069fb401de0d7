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
from sgma_model.model import MultiModalSegmenter, SegmentationOutput
from sgma_model.registry import create_model, list_models, register_model

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
