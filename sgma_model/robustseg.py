"""RobustSeg stage-2 losses: a student trained with modality dropout against a frozen full-modality teacher.

Total = ce_weight x CE + kd_weight x KD + hpdm_weight x HPDM + rrm_weight x RRM, defaults 1 / 50 / 100 / 12
(RobustSeg's public code), RRM with an inner weight of 1e-5. Both outputs must come from
``model(..., return_features=True)``; student and teacher must have the same ``feature_info`` channels.

The defaults follow RobustSeg's public code (github.com/RobustSeg/RobustSeg, ``tools/train_deliver_mad50_
proto_cur_reg.py``, ``mmkd/PCUMD.py``, ``mmkd/Prototype.py``); the variants this project used first are kept
as options (``kd_reduction="sum"``, ``hpdm_variant="hybrid"``) and measured against them (docs/model.md).

- **KD**: KL(teacher || student) of the per-pixel class distributions at temperature T, times T^2.
  ``kd_reduction="mean"`` (default, as the public code's ``nn.KLDivLoss(reduction="mean")`` on (B, K, H, W)):
  the mean over classes *and* pixels, i.e. the per-pixel KL divided by K; ``"sum"``: summed over classes
  (K times stronger). Pixels: where the student has data (the public student always has some modality).
- **HPDM**: class prototypes by label-masked average pooling (labels resized to the feature grid with
  nearest; the sum divided by the pixel count once: the public code divides twice, which MODEL.md says not
  to copy), for student and teacher; KL(teacher || student) of the softmax over the class axis.
  ``hpdm_variant="robustseg"`` (default, as ``PCUMD``): a student modality is paired with the *same*
  teacher modality; all K classes enter the softmax (an absent class has a zero prototype); the KL is the
  mean over (class, channel) entries; summed over stages and over the student's modalities, divided by the
  batch size. ``"hybrid"`` (this project's first reading of "hybrid"): with probability
  ``cross_modal_prob`` (0.5) a random teacher modality, only the classes present in the sample, KL summed
  over classes and averaged over channels, mean over (stage, modality, sample).
- **RRM**: a functional-entropy regulariser (Gat et al. 2020, log-Sobolev inequality) turned into a
  teacher-student discrepancy, as RobustSeg's abstract describes it ("reduces representation discrepancies
  between the teacher and student by optimizing functional entropy"). Per stage and modality, each network's
  features x are perturbed with the *same* Gaussian draws eps (sigma = the per-sample feature std);
  f(x~) = sum over valid pixels of KL(softmax_c x || softmax_c x~) is Gat's functional, and its functional
  Fisher information I = E_eps[|grad f|^2 / f] (which bounds its functional entropy) is computed for the
  student and for the teacher. The penalty is ||1 / I_student - 1 / I_teacher||_2 over the samples that hold
  the modality (Gat's "max_ent" inverse information, taken relative to the teacher), times ``rrm_inner``.
  It is exactly 0 when student == teacher (same features, same draws) and positive otherwise.

KD, HPDM with own-modality pairing, and RRM are exactly 0 when the student equals the teacher. Cross-modal
HPDM pairs compare two different modalities' prototypes, so they are 0 only where those agree.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgma_model.losses import IGNORE_INDEX, masked_cross_entropy
from sgma_model.model import SegmentationOutput

KD_REDUCTIONS = ("mean", "sum")
HPDM_VARIANTS = ("robustseg", "hybrid")


def logit_kd(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, valid: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) x T^2 over (valid) pixels: ``mean`` over classes (RobustSeg's
    ``KLDivLoss(reduction="mean")``) or ``sum`` over classes (K times larger)."""
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"kd reduction {reduction!r}; use one of {KD_REDUCTIONS}")
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)  # (B, K, H, W)
    s = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = (t.exp() * (t - s)).sum(dim=1)  # (B, H, W)
    if reduction == "mean":
        kl = kl / t.shape[1]
    if valid is None:
        return kl.mean() * temperature**2
    return (kl * valid).sum() / valid.sum().clamp_min(1) * temperature**2


def class_prototypes(
    feat: Tensor, labels: Tensor, num_classes: int, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Label-masked average pooling.

    Args:
        feat: (B, C, h, w) features; labels: (B, h, w) long (ignore_index allowed); valid: (B, h, w) bool.
    Returns:
        prototypes (B, K, C) (sum divided by the pixel count, once) and present (B, K) bool.
    """
    b, c, h, w = feat.shape
    keep = (labels >= 0) & (labels < num_classes)
    if valid is not None:
        keep = keep & valid
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).to(feat.dtype)  # (B, h, w, K)
    onehot = onehot * keep.unsqueeze(-1).to(feat.dtype)
    onehot = onehot.reshape(b, h * w, num_classes)
    sums = torch.bmm(onehot.transpose(1, 2), feat.reshape(b, c, h * w).transpose(1, 2))  # (B, K, C)
    count = onehot.sum(dim=1)  # (B, K)
    return sums / count.clamp_min(1).unsqueeze(-1), count > 0


def _prototype_kl(ps: Tensor, pt: Tensor, present: Tensor, temperature: float) -> Tensor:
    """KL over the class axis of (B, K, C) prototypes, restricted to classes present; -> (B,) mean over C."""
    neg = torch.finfo(torch.float32).min
    ls = F.log_softmax((ps.float() / temperature).masked_fill(~present.unsqueeze(-1), neg), dim=1)
    lt = F.log_softmax((pt.float() / temperature).masked_fill(~present.unsqueeze(-1), neg), dim=1)
    kl = (lt.exp() * (lt - ls)).masked_fill(~present.unsqueeze(-1), 0.0).sum(dim=1)  # (B, C)
    return kl.mean(dim=1)


def _resize_labels(target: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _student_valid(masks: Mapping[str, Tensor] | None, modality: str, feat: Tensor) -> Tensor:
    """(B, h, w) bool on the grid of ``feat``: a feature pixel is valid if any input pixel it covers is."""
    b, _, h, w = feat.shape
    if masks is None or modality not in masks:
        return torch.ones((b, h, w), dtype=torch.bool, device=feat.device)
    return F.adaptive_max_pool2d(masks[modality][:, None].float(), (h, w))[:, 0] > 0


def hpdm_loss(
    student_feats: Mapping[str, list[Tensor]],
    teacher_feats: Mapping[str, list[Tensor]],
    target: Tensor,
    num_classes: int,
    *,
    student_masks: Mapping[str, Tensor] | None = None,
    cross_modal_prob: float | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    variant: str = "robustseg",
) -> Tensor:
    """Prototype distillation (module docstring): ``robustseg`` (public code) or ``hybrid`` (first variant).

    ``cross_modal_prob``: default 0 for ``robustseg`` (same-modality pairs), 0.5 for ``hybrid``.
    """
    if variant not in HPDM_VARIANTS:
        raise ValueError(f"hpdm variant {variant!r}; use one of {HPDM_VARIANTS}")
    if cross_modal_prob is None:
        cross_modal_prob = 0.0 if variant == "robustseg" else 0.5
    if variant == "robustseg":
        return _hpdm_robustseg(student_feats, teacher_feats, target, num_classes, student_masks=student_masks,
                               cross_modal_prob=cross_modal_prob, temperature=temperature, generator=generator)
    t_names = list(teacher_feats)
    total, n = target.new_zeros((), dtype=torch.float32), 0
    for m, s_stages in student_feats.items():
        for i, fs in enumerate(s_stages):
            h, w = fs.shape[-2:]
            labels = _resize_labels(target, (h, w))
            valid = _student_valid(student_masks, m, fs)
            cross = torch.rand((), generator=generator, device=target.device).item() < cross_modal_prob
            if cross:
                j = int(torch.randint(len(t_names), (), generator=generator, device=target.device).item())
                partner = t_names[j]
            else:
                partner = m if m in teacher_feats else t_names[0]
            ft = teacher_feats[partner][i].detach()
            if ft.shape[1] != fs.shape[1]:
                raise ValueError(
                    f"stage {i}: student has {fs.shape[1]} channels, teacher {ft.shape[1]}; use equal sizes"
                )
            ps, present = class_prototypes(fs, labels, num_classes, valid)
            pt, present_t = class_prototypes(ft, labels, num_classes)
            present = present & present_t
            has = present.any(dim=1)  # samples with any labelled valid pixel
            if bool(has.any()):
                total = total + _prototype_kl(ps, pt, present, temperature)[has].sum()
                n += int(has.sum())
    return total / max(n, 1)


def _hpdm_robustseg(
    student_feats: Mapping[str, list[Tensor]],
    teacher_feats: Mapping[str, list[Tensor]],
    target: Tensor,
    num_classes: int,
    *,
    student_masks: Mapping[str, Tensor] | None,
    cross_modal_prob: float,
    temperature: float,
    generator: torch.Generator | None,
) -> Tensor:
    """RobustSeg's PCUMD: per sample, sum over stages and the modalities the sample holds of
    KL(reduction="mean" over K x C) between softmaxes over all K classes; divided by the batch size."""
    t_names = list(teacher_feats)
    b = target.shape[0]
    total = target.new_zeros((), dtype=torch.float32)
    for m, s_stages in student_feats.items():
        for i, fs in enumerate(s_stages):
            h, w = fs.shape[-2:]
            labels = _resize_labels(target, (h, w))
            valid = _student_valid(student_masks, m, fs)
            has = valid.flatten(1).any(dim=1)  # (B,) samples holding the modality
            if not bool(has.any()):
                continue
            partner = m if m in teacher_feats else t_names[0]
            if cross_modal_prob > 0 and torch.rand((), generator=generator, device=target.device).item() < cross_modal_prob:
                partner = t_names[int(torch.randint(len(t_names), (), generator=generator, device=target.device).item())]
            ft = teacher_feats[partner][i].detach()
            if ft.shape[1] != fs.shape[1]:
                raise ValueError(
                    f"stage {i}: student has {fs.shape[1]} channels, teacher {ft.shape[1]}; use equal sizes"
                )
            ps, _ = class_prototypes(fs, labels, num_classes, valid)  # (B, K, C); absent classes 0
            pt, _ = class_prototypes(ft, labels, num_classes)
            ls = F.log_softmax(ps.float() / temperature, dim=1)
            lt = F.log_softmax(pt.float() / temperature, dim=1)
            kl = (lt.exp() * (lt - ls)).mean(dim=(1, 2)).clamp_min(0)  # (B,) mean over K x C
            total = total + kl[has].sum()
    return total / max(b, 1)


def functional_information(x: Tensor, noise: Tensor, valid: Tensor, eps: float = 1e-8) -> Tensor:
    """Gat et al.'s functional Fisher information of a feature map under Gaussian perturbation, per sample.

    f(x~) = sum over valid pixels of KL(softmax_c(x) || softmax_c(x~)) with x~ = x + sigma * noise and sigma the
    per-sample std of x (not differentiated). Per pixel, grad_x~ f = softmax_c(x~) - softmax_c(x), so
    |grad f|^2 is computed in closed form (no double backward). Both sums run over pixels, so the ratio does
    not grow with the feature-map size.

    Args:
        x: (B, C, h, w) float32 features; noise: (n, B, C, h, w) standard normal draws; valid: (B, h, w) bool.
    Returns:
        (B,) I = mean over the n draws of |grad f|^2 / f.
    """
    sigma = x.detach().flatten(1).std(dim=1).view(1, -1, 1, 1, 1)  # (1, B, 1, 1, 1)
    log_p = F.log_softmax(x, dim=1).unsqueeze(0)  # (1, B, C, h, w)
    log_q = F.log_softmax(x.unsqueeze(0) + sigma * noise, dim=2)  # (n, B, C, h, w)
    p, q = log_p.exp(), log_q.exp()
    w = valid.unsqueeze(0).to(x.dtype)  # (1, B, h, w)
    f = ((p * (log_p - log_q)).sum(dim=2) * w).sum(dim=(2, 3))  # (n, B)
    grad_sq = ((q - p).pow(2).sum(dim=2) * w).sum(dim=(2, 3))  # (n, B)
    return (grad_sq / (f + eps)).mean(dim=0)


def rrm_loss(
    student_feats: Mapping[str, list[Tensor]],
    teacher_feats: Mapping[str, list[Tensor]],
    *,
    student_masks: Mapping[str, Tensor] | None = None,
    n_samples: int = 4,
    generator: torch.Generator | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Sum over (stage, modality) of ||1 / I_student - 1 / I_teacher||_2 over the samples holding the modality.

    Student and teacher share the noise draws, and the information is taken over the student's valid pixels
    for both, so the term is exactly 0 when the student's features equal the teacher's.
    """
    terms: list[Tensor] = []
    for m, s_stages in student_feats.items():
        if m not in teacher_feats:
            continue
        for i, (fs, ft) in enumerate(zip(s_stages, teacher_feats[m], strict=True)):
            if fs.shape != ft.shape:
                raise ValueError(
                    f"stage {i}: student features {tuple(fs.shape)}, teacher {tuple(ft.shape)}; use equal sizes"
                )
            valid = _student_valid(student_masks, m, fs)
            has = valid.flatten(1).any(dim=1)  # (B,) samples where the student holds the modality
            if not bool(has.any()):
                continue
            noise = torch.randn((n_samples, *fs.shape), generator=generator, device=fs.device)
            inv_s = 1.0 / (functional_information(fs.float(), noise, valid, eps) + eps)
            with torch.no_grad():
                inv_t = 1.0 / (functional_information(ft.detach().float(), noise, valid, eps) + eps)
            terms.append(torch.linalg.vector_norm((inv_s - inv_t)[has], ord=2))
    if not terms:
        return next(iter(student_feats.values()))[0].new_zeros((), dtype=torch.float32)
    return torch.stack(terms).sum()


class RobustSegLoss(nn.Module):
    """CE + KD + HPDM + RRM against a frozen teacher; returns a dict of the weighted total and the terms.

    Args:
        num_classes: K.
        ce_weight, kd_weight, hpdm_weight, rrm_weight: term weights (defaults 1 / 50 / 100 / 12).
        rrm_inner: inner RRM weight (1e-5).
        temperature: KD temperature; hpdm_temperature: softmax temperature over classes in HPDM.
        cross_modal_prob: chance that HPDM pairs a student modality with a random teacher modality
            (default 0 for ``hpdm_variant="robustseg"``, 0.5 for ``"hybrid"``).
        kd_reduction: ``mean`` over classes (public code) or ``sum``.
        hpdm_variant: ``robustseg`` (public code's PCUMD) or ``hybrid`` (module docstring).
        rrm_samples: noise draws per feature map in RRM.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ce_weight: float = 1.0,
        kd_weight: float = 50.0,
        hpdm_weight: float = 100.0,
        rrm_weight: float = 12.0,
        rrm_inner: float = 1e-5,
        temperature: float = 1.0,
        hpdm_temperature: float = 1.0,
        cross_modal_prob: float | None = None,
        rrm_samples: int = 4,
        ignore_index: int = IGNORE_INDEX,
        kd_reduction: str = "mean",
        hpdm_variant: str = "robustseg",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.hpdm_weight = hpdm_weight
        self.rrm_weight = rrm_weight
        self.rrm_inner = rrm_inner
        self.temperature = temperature
        self.hpdm_temperature = hpdm_temperature
        self.cross_modal_prob = cross_modal_prob
        self.rrm_samples = rrm_samples
        self.ignore_index = ignore_index
        if kd_reduction not in KD_REDUCTIONS or hpdm_variant not in HPDM_VARIANTS:
            raise ValueError(f"kd_reduction {kd_reduction!r} / hpdm_variant {hpdm_variant!r}: use one of "
                             f"{KD_REDUCTIONS} / {HPDM_VARIANTS}")
        self.kd_reduction = kd_reduction
        self.hpdm_variant = hpdm_variant

    def forward(
        self,
        student: SegmentationOutput,
        teacher: SegmentationOutput,
        target: Tensor,
        *,
        student_masks: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Args: outputs with ``features``; target (B, H, W) class ids; the student's masks if any."""
        if student.features is None or teacher.features is None:
            raise ValueError("RobustSegLoss needs model(..., return_features=True) for student and teacher")
        ce = masked_cross_entropy(student.logits, target, student.valid, self.ignore_index)
        kd = logit_kd(student.logits, teacher.logits, self.temperature, student.valid, self.kd_reduction)
        hpdm = hpdm_loss(
            student.features,
            teacher.features,
            target,
            self.num_classes,
            student_masks=student_masks,
            cross_modal_prob=self.cross_modal_prob,
            temperature=self.hpdm_temperature,
            generator=generator,
            variant=self.hpdm_variant,
        )
        rrm = self.rrm_inner * rrm_loss(
            student.features,
            teacher.features,
            student_masks=student_masks,
            n_samples=self.rrm_samples,
            generator=generator,
        )
        total = self.ce_weight * ce + self.kd_weight * kd + self.hpdm_weight * hpdm + self.rrm_weight * rrm
        return {
            "loss": total,
            "ce": ce.detach(),
            "kd": kd.detach(),
            "hpdm": hpdm.detach(),
            "rrm": rrm.detach(),
        }
