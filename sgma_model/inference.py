"""Inference helper: device placement, autocast and channels_last around a model forward."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import Tensor

from sgma_model.model import MultiModalSegmenter, SegmentationOutput


def predict(
    model: MultiModalSegmenter,
    inputs: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
    *,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> SegmentationOutput:
    """Run the model in eval mode; returns float32 logits and robustness on ``device``.

    Args:
        inputs: modality -> (B, C, H, W) normalised (``card.normalise``); absent modalities missing.
        masks: optional modality -> (B, H, W) bool, True = valid.
        device: where to run (default: the model's device). The model is moved there.
        amp_dtype: torch.bfloat16 / torch.float16 autocast (meant for CUDA; CPU autocast runs it too, which the
            tests use to check it); None = fp32, the CPU default. Softmaxes over modalities stay float32.
        channels_last: NHWC memory format for the inputs and the model (faster convs on GPU); the model
            keeps that format afterwards.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    # placement outside inference_mode: parameters converted inside it would become inference tensors
    # that can never be trained again
    model.to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    xs = {k: v.to(dev, non_blocking=True).float().contiguous(memory_format=fmt) for k, v in inputs.items()}
    ms = None if masks is None else {k: v.to(dev, non_blocking=True).bool() for k, v in masks.items()}
    ctx = (
        torch.autocast(device_type=dev.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), ctx:
        out = model(xs, ms)
    out.logits = out.logits.float()
    out.robustness = out.robustness.float()
    out.robustness_scales = [r.float() for r in out.robustness_scales]
    return out
