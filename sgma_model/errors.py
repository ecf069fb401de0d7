"""Errors of the model package. Exit codes match ``sgma_batch.errors`` (30-39) so the CLI maps both alike.

``sgma_model`` imports nothing from ``sgma_batch``; the codes are restated here on purpose.
"""

from __future__ import annotations


class ModelError(Exception):
    exit_code: int = 30


class UnknownModelError(ModelError, LookupError):
    exit_code = 30


class CheckpointError(ModelError, ValueError):
    """A checkpoint that cannot be read: missing files, bad JSON, not safetensors."""

    exit_code = 30


class CardMismatchError(CheckpointError):
    """The model card does not describe the weights (missing/extra/mis-shaped tensors)."""

    exit_code = 31


class BandMismatchError(ModelError, ValueError):
    """An input whose bands (count or names) do not match the model card."""

    exit_code = 32


class InputShapeError(ModelError, ValueError):
    """Model inputs that cannot be fused: no modality given, or modalities/masks of different shapes."""

    exit_code = 34
