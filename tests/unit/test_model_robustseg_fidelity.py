"""The default KD and HPDM equal a transliteration of RobustSeg's public code (tools/train_deliver_mad50_
proto_cur_reg.py, mmkd/PCUMD.py, mmkd/Prototype.py), except for its double division of the prototypes by the
pixel count (MODEL.md: not copied); the first variants stay available as options and differ by the factors
documented in docs/model.md."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgma_model.robustseg import RobustSegLoss, hpdm_loss, logit_kd


def _public_prototypes(features, labels, num_classes):
    """mmkd/Prototype.py calculate_batch_prototypes, without its second division by the count."""
    labels = F.interpolate(labels[:, None].float(), size=features.shape[2:], mode="nearest").long()[:, 0]
    b, c, h, w = features.shape
    f = features.permute(0, 2, 3, 1).reshape(-1, c)
    lab = labels.reshape(-1)
    protos = torch.zeros(num_classes, c)
    for i in range(num_classes):
        mask = lab == i
        if mask.sum() > 0:
            protos[i] = f[mask].mean(dim=0)
    return protos


def _public_pcumd(student, teacher, lbl, num_classes):
    """mmkd/PCUMD.py: student[i][j] (M_sel, C, h, w) per sample i and stage j, pairs with teacher[i][j][index[k]]."""
    kl = nn.KLDivLoss(reduction="mean")
    loss = 0.0
    for i in range(len(student)):
        for j in range(len(student[i])):
            for k in range(student[i][j].shape[0]):
                ps = _public_prototypes(student[i][j][k][None], lbl[i][None], num_classes)
                pt = _public_prototypes(teacher[i][j][k][None], lbl[i][None], num_classes)
                loss += kl(torch.log_softmax(ps, dim=0), torch.softmax(pt, dim=0)).clamp(min=0)
    return loss / len(student)


def test_kd_default_is_klDivLoss_mean_and_sum_is_k_times_it():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    public = nn.KLDivLoss(reduction="mean")(torch.log_softmax(s, dim=1), torch.softmax(t, dim=1))
    assert logit_kd(s, t) == pytest.approx(float(public), rel=1e-5)
    assert logit_kd(s, t, reduction="sum") == pytest.approx(5 * float(public), rel=1e-5)


def test_hpdm_default_equals_the_public_pcumd_with_same_modality_pairs():
    g = torch.Generator().manual_seed(1)
    mods, k, b = ("s2", "s1"), 4, 3
    shapes = [(8, 16, 16), (16, 8, 8)]
    sf = {m: [torch.randn(b, *sh, generator=g) for sh in shapes] for m in mods}
    tf = {m: [torch.randn(b, *sh, generator=g) for sh in shapes] for m in mods}
    target = torch.randint(0, k - 1, (b, 32, 32), generator=g)  # class 3 absent: a zero prototype
    ours = hpdm_loss(sf, tf, target, k)
    stu = [[torch.stack([sf[m][j][i] for m in mods]) for j in range(2)] for i in range(b)]
    tea = [[torch.stack([tf[m][j][i] for m in mods]) for j in range(2)] for i in range(b)]
    assert float(ours) == pytest.approx(float(_public_pcumd(stu, tea, target, k)), rel=1e-5)
    hybrid = hpdm_loss(sf, tf, target, k, variant="hybrid", cross_modal_prob=0.0)
    assert float(hybrid) != pytest.approx(float(ours), rel=1e-3)


def test_hpdm_counts_only_the_modalities_a_sample_holds():
    g = torch.Generator().manual_seed(2)
    sf = {m: [torch.randn(2, 8, 8, 8, generator=g)] for m in ("a", "b")}
    tf = {m: [torch.randn(2, 8, 8, 8, generator=g)] for m in ("a", "b")}
    target = torch.randint(0, 3, (2, 32, 32), generator=g)
    masks = {"a": torch.ones(2, 32, 32, dtype=torch.bool), "b": torch.tensor([True, False])[:, None, None].expand(2, 32, 32)}
    full = hpdm_loss(sf, tf, target, 3)
    part = hpdm_loss(sf, tf, target, 3, student_masks=masks)
    only_a = hpdm_loss({"a": sf["a"]}, tf, target, 3)
    b0 = hpdm_loss({"b": [sf["b"][0][:1]]}, {"b": [tf["b"][0][:1]]}, target[:1], 3)
    assert float(part) == pytest.approx(float(only_a) + float(b0) / 2, rel=1e-5)  # sample 1 lacks b
    assert float(part) < float(full)


def test_loss_defaults_are_the_public_ones_and_variants_are_options():
    loss = RobustSegLoss(4)
    assert (loss.kd_reduction, loss.hpdm_variant, loss.kd_weight, loss.hpdm_weight, loss.rrm_weight) == (
        "mean", "robustseg", 50.0, 100.0, 12.0)
    with pytest.raises(ValueError):
        RobustSegLoss(4, hpdm_variant="other")
