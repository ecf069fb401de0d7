"""The SGMA training loss: 2 x CE(fused) + 1 x CE(MAS single-modality prediction)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from sgma_model.model import SegmentationOutput

IGNORE_INDEX = 255


def masked_cross_entropy(
    logits: Tensor, target: Tensor, valid: Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Mean CE over labelled pixels where ``valid`` (B, H, W) is True; 0 (not NaN) when there are none.

    Pixels without any input modality carry no evidence, so they are left out of the loss.
    """
    target = target.long()
    if valid is not None:
        target = target.masked_fill(~valid, ignore_index)
    per_px = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    count = (target != ignore_index).sum()
    return per_px.sum() / count.clamp_min(1)


def sgma_loss(
    out: SegmentationOutput,
    target: Tensor,
    *,
    fused_weight: float = 2.0,
    mas_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """``fused_weight`` x CE(out.logits) + ``mas_weight`` x CE(out.mas_logits).

    The MAS term is skipped when the output has no MAS prediction (models without MAS, or ``mas=False``).
    ``target``: (B, H, W) class ids, ``ignore_index`` for unlabelled pixels.
    """
    loss = fused_weight * masked_cross_entropy(out.logits, target, out.valid, ignore_index)
    if out.mas_logits is not None and mas_weight:
        loss = loss + mas_weight * masked_cross_entropy(out.mas_logits, target, out.mas_valid, ignore_index)
    return loss
