"""The multimodal segmenter: shared encoder -> fusion at every scale -> all-MLP decoder (+ MAS branch).

One class covers SGMA and its baselines/ablations; the registry picks the fusion module and whether the
MAS branch exists. See ``docs/model.md`` for every design choice.

Masks: a feature pixel at stride s is valid for a modality if any of the s x s input pixels it covers is
valid (max-pooling of the input mask). Masked input pixels are zero-filled before encoding, so their
values never reach the output. A sample without any valid pixel of a modality is not encoded for that
modality (sub-batch), and a modality absent for the whole batch is not encoded at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgma_model.decoder import AllMLPDecoder
from sgma_model.encoder import EncoderConfig, FeatureInfo, SharedEncoder
from sgma_model.errors import BandMismatchError, InputShapeError
from sgma_model.fusion import FUSIONS


@dataclass
class SegmentationOutput:
    """What every registered model returns.

    Attributes:
        logits: (B, K, H, W) at input resolution; finite everywhere, meaningless where ``valid`` is False.
        robustness: (B, M, H, W) float32 fusion weights over ``model.modalities`` at the finest scale,
            upsampled; sum to 1 over the modalities valid at a pixel, 0 for absent ones (all 0 where none).
        valid: (B, H, W) bool, False where no modality is present.
        robustness_scales: per scale i, (B, M, H_i, W_i) fusion weights at the feature resolution.
        mas_logits: (B, K, H, W) single-modality prediction of the MAS branch (``mas=True`` only).
        mas_modality: (B,) long index into ``model.modalities`` of the modality MAS drew per sample.
        mas_valid: (B, H, W) bool, where the drawn modality holds data.
        mas_probs: (B, M) the MAS sampling distribution (softmin of mean robustness).
        features: modality -> four per-stage encoder maps (B, C_i, H_i, W_i), zeros for samples lacking
            the modality (``return_features=True`` only; only modalities present in the batch).
    """

    logits: Tensor
    robustness: Tensor
    valid: Tensor
    robustness_scales: list[Tensor] = field(default_factory=list)
    mas_logits: Tensor | None = None
    mas_modality: Tensor | None = None
    mas_valid: Tensor | None = None
    mas_probs: Tensor | None = None
    features: dict[str, list[Tensor]] | None = None


class MultiModalSegmenter(nn.Module):
    """Incomplete-multimodal segmenter (SGMA and baselines).

    Args:
        modalities: modality name -> band count, in model order.
        num_classes: K.
        encoder: stage widths and depths.
        fusion: "sgf", "mean" or "concat".
        mas: whether the Modality-Aware Sampling branch exists (used when ``forward(mas=True)``).
        decoder_dim: width of the all-MLP decoder.
        head_dim: channels per attention head in SGF (heads = max(1, C_i // head_dim)).
        mas_sampling: "softmin" (MODEL.md: softmin of mean robustness) or "uniform" over present ones.
    """

    def __init__(
        self,
        modalities: Mapping[str, int],
        num_classes: int,
        encoder: EncoderConfig,
        fusion: str = "sgf",
        mas: bool = True,
        decoder_dim: int = 128,
        head_dim: int = 32,
        dropout: float = 0.1,
        mas_sampling: str = "softmin",
    ) -> None:
        super().__init__()
        if not modalities:
            raise ValueError("a model needs at least one modality")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; known: {', '.join(FUSIONS)}")
        if mas_sampling not in ("softmin", "uniform"):
            raise ValueError(f"unknown mas_sampling {mas_sampling!r}; known: softmin, uniform")
        self.modalities: tuple[str, ...] = tuple(modalities)
        self.band_counts: dict[str, int] = {k: int(v) for k, v in modalities.items()}
        self.num_classes = int(num_classes)
        self.fusion_kind = fusion
        self.has_mas = bool(mas)
        self.mas_sampling = mas_sampling
        self.encoder = SharedEncoder(self.band_counts, encoder)
        self.feature_info: tuple[FeatureInfo, ...] = self.encoder.feature_info
        fusion_cls = FUSIONS[fusion]
        self.fusions = nn.ModuleList(
            [
                fusion_cls(self.modalities, f.channels, self.num_classes, max(1, f.channels // head_dim))
                for f in self.feature_info
            ]
        )
        self.decoder = AllMLPDecoder(
            [f.channels for f in self.feature_info], decoder_dim, num_classes, dropout
        )
        # set by the registry's create_model: what a checkpoint card records
        self.architecture: str | None = None
        self.arguments: dict[str, Any] = {}

    # -- input handling ------------------------------------------------------------------------------
    def _check_inputs(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], tuple[int, int, int]]:
        if not inputs:
            raise InputShapeError(
                "no modality in the inputs; give at least one of " + ", ".join(self.modalities)
            )
        shape: tuple[int, int, int] | None = None
        xs: dict[str, Tensor] = {}
        ms: dict[str, Tensor] = {}
        for name, x in inputs.items():
            if name not in self.band_counts:
                raise BandMismatchError(
                    f"input modality {name!r} is not one of the model's ({', '.join(self.modalities)}); drop it"
                )
            if x.ndim != 4 or x.shape[1] != self.band_counts[name]:
                raise BandMismatchError(
                    f"modality {name!r} needs (B, {self.band_counts[name]}, H, W) input, got {tuple(x.shape)}"
                )
            bhw = (x.shape[0], x.shape[2], x.shape[3])
            if shape is None:
                shape = bhw
            elif bhw != shape:
                raise InputShapeError(
                    f"modality {name!r} has (B, H, W) {bhw}, others {shape}; co-register them"
                )
            mask = None if masks is None else masks.get(name)
            if mask is None:
                mask = torch.ones(bhw, dtype=torch.bool, device=x.device)
            elif tuple(mask.shape) != bhw:
                raise InputShapeError(f"mask of {name!r} has shape {tuple(mask.shape)}, expected {bhw}")
            xs[name], ms[name] = x, mask.to(device=x.device, dtype=torch.bool)
        if masks is not None:
            extra = set(masks) - set(self.band_counts)
            if extra:
                raise BandMismatchError(f"masks for unknown modalities {sorted(extra)}; drop them")
        assert shape is not None
        return xs, ms, shape

    def _encode(self, x: Tensor, mask: Tensor, name: str) -> list[Tensor]:
        """Encode the samples that hold any valid pixel of ``name``; zeros for the others."""
        # (B, C, H, W): masked pixels never reach the output, not even NaN / inf nodata (0 * NaN is NaN)
        x = torch.where(mask.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        present = mask.flatten(1).any(dim=1)  # (B,)
        if bool(present.all()):
            return self.encoder(x, name)
        idx = present.nonzero().squeeze(1)
        sub = self.encoder(x.index_select(0, idx), name)
        out = []
        for f in sub:
            full = f.new_zeros((x.shape[0], *f.shape[1:]))
            out.append(full.index_copy(0, idx, f))
        return out

    def _fuse_decode(
        self, names: Sequence[str], feats: list[Tensor], valid: list[Tensor], size: tuple[int, int]
    ) -> tuple[Tensor, list[Tensor]]:
        fused, robust = [], []
        for fusion, f, v in zip(self.fusions, feats, valid, strict=True):
            fu, r = fusion(names, f, v)
            fused.append(fu)
            robust.append(r)
        logits = self.decoder(fused)  # (B, K, H/4, W/4)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits, robust

    def _scatter(self, r: Tensor, names: Sequence[str]) -> Tensor:
        """(B, M', H, W) over the present modalities -> (B, M, H, W) over model.modalities."""
        b, _, h, w = r.shape
        full = r.new_zeros(b, len(self.modalities), h, w)
        for i, name in enumerate(names):
            full[:, self.modalities.index(name)] = r[:, i]
        return full

    # -- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        inputs: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        *,
        mas: bool = False,
        generator: torch.Generator | None = None,
        return_features: bool = False,
    ) -> SegmentationOutput:
        """Segment any non-empty subset of modalities.

        Args:
            inputs: modality -> (B, C_m, H, W) float normalised; an absent modality is simply missing.
            masks: optional modality -> (B, H, W) bool, True = valid pixel (default: all valid).
            mas: also run the MAS single-modality branch (training; ignored by models without MAS).
            generator: torch.Generator for the MAS draw (on the inputs' device).
            return_features: also return per-modality per-stage encoder features.
        """
        xs, ms, (_b, h, w) = self._check_inputs(inputs, masks)
        red = self.encoder.reduction
        ph, pw = (-h) % red, (-w) % red
        names = [n for n in self.modalities if n in xs and bool(ms[n].any())]
        if not names:  # nothing valid anywhere: run on the first given modality, all masked, flagged
            names = [n for n in self.modalities if n in xs][:1]
        feats_by_mod: dict[str, list[Tensor]] = {}
        pmasks = []
        for name in names:
            x, m = xs[name], ms[name]
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
                m = F.pad(m, (0, pw, 0, ph), value=False)
            feats_by_mod[name] = self._encode(x, m, name)
            pmasks.append(m)
        pmask = torch.stack(pmasks, dim=1)  # (B, M', Hp, Wp)
        pmask_f = pmask.float()
        feats, valid = [], []
        for i, info in enumerate(self.feature_info):
            feats.append(torch.stack([feats_by_mod[n][i] for n in names], dim=1))  # (B, M', C_i, H_i, W_i)
            valid.append(F.max_pool2d(pmask_f, info.stride, info.stride) > 0)  # (B, M', H_i, W_i)
        size = (h + ph, w + pw)
        logits, robust = self._fuse_decode(names, feats, valid, size)
        in_mask = pmask[:, :, :h, :w]  # (B, M', H, W)
        out = SegmentationOutput(
            logits=logits[:, :, :h, :w],
            robustness=self._scatter(self._input_robustness(robust[0], in_mask, size), names),
            valid=in_mask.any(dim=1),
            robustness_scales=[self._scatter(r, names) for r in robust],
        )
        if return_features:
            out.features = {n: feats_by_mod[n] for n in names if bool(ms[n].any())}
        if mas and self.has_mas:
            self._mas(out, names, feats, valid, robust[0], in_mask, size, generator)
        return out

    @staticmethod
    def _input_robustness(r: Tensor, in_mask: Tensor, size: tuple[int, int]) -> Tensor:
        """Finest-scale weights -> input resolution, re-masked and renormalised over valid modalities."""
        h, w = in_mask.shape[-2:]
        up = F.interpolate(r, size=size, mode="bilinear", align_corners=False)[:, :, :h, :w]
        m = in_mask.float()
        up = up * m
        s = up.sum(dim=1, keepdim=True)
        uniform = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.where(s > 0, up / s.clamp_min(1e-12), uniform)

    def _mas(
        self,
        out: SegmentationOutput,
        names: list[str],
        feats: list[Tensor],
        valid: list[Tensor],
        robust0: Tensor,
        in_mask: Tensor,
        size: tuple[int, int],
        generator: torch.Generator | None,
    ) -> None:
        """Modality-Aware Sampling: draw one modality per sample, favouring fragile (low-robustness) ones."""
        with torch.no_grad():
            v0 = valid[0]  # (B, M', H4, W4)
            present = v0.flatten(2).any(dim=2)  # (B, M')
            any_px = v0.any(dim=1).flatten(1).float().sum(dim=1).clamp_min(1.0)  # (B,)
            if self.mas_sampling == "softmin":
                mean_r = robust0.float().flatten(2).sum(dim=2) / any_px.unsqueeze(1)  # (B, M')
                inv = torch.where(
                    present & (mean_r > 0), 1.0 / mean_r.clamp_min(1e-6), torch.zeros_like(mean_r)
                )
            else:
                inv = present.float()
            empty = inv.sum(dim=1, keepdim=True) <= 0
            inv = torch.where(empty, torch.ones_like(inv), inv)  # no modality at all: any draw, all masked
            probs = inv / inv.sum(dim=1, keepdim=True)  # (B, M')
            pick = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            onehot = F.one_hot(pick, len(names)).bool()  # (B, M')
        single = [v & onehot[:, :, None, None] for v in valid]
        logits, _ = self._fuse_decode(names, feats, single, size)
        h, w = in_mask.shape[-2:]
        idx = torch.tensor([self.modalities.index(n) for n in names], device=pick.device)
        out.mas_logits = logits[:, :, :h, :w]
        out.mas_modality = idx[pick]
        out.mas_valid = (in_mask & onehot[:, :, None, None]).any(dim=1)
        full_probs = probs.new_zeros(probs.shape[0], len(self.modalities))
        full_probs[:, idx] = probs
        out.mas_probs = full_probs
