"""RobustSeg stage-2 losses: zero at equality (KD, HPDM, RRM), positive otherwise, finite gradients."""

from __future__ import annotations

import copy

import torch

from sgma_model import create_model
from sgma_model.robustseg import (
    RobustSegLoss,
    class_prototypes,
    functional_information,
    hpdm_loss,
    logit_kd,
    rrm_loss,
)
from sgma_model.testing import MODALITIES, make_inputs

torch.set_num_threads(1)


def _pair():
    torch.manual_seed(0)
    teacher = create_model("sgma_tiny", modalities=MODALITIES, num_classes=4, dropout=0.0).eval()
    student = copy.deepcopy(teacher)
    inputs = make_inputs(tuple(MODALITIES), 2, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    target[:, :8] = 255
    return teacher, student, inputs, target


def test_prototypes_divide_by_pixel_count_once():
    feat = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[:, 2:] = 1
    labels[0, 0, 0] = 255
    protos, present = class_prototypes(feat, labels, 3)
    assert present[:, :2].all() and not present[:, 2].any()
    keep = labels[0] == 0
    assert torch.allclose(protos[0, 0], feat[0][:, keep].mean(dim=1))
    assert torch.allclose(protos[1, 1], feat[1][:, 2:].reshape(3, -1).mean(dim=1))


def test_losses_zero_for_identical_student_and_positive_otherwise():
    teacher, student, inputs, target = _pair()
    with torch.no_grad():
        t_out = teacher(inputs, return_features=True)
    s_out = student(inputs, return_features=True)
    assert logit_kd(s_out.logits, t_out.logits).item() == 0.0
    g = torch.Generator().manual_seed(0)
    assert (
        hpdm_loss(s_out.features, t_out.features, target, 4, cross_modal_prob=0.0, generator=g).item() == 0.0
    )
    rrm = rrm_loss(s_out.features, t_out.features, generator=torch.Generator().manual_seed(0))
    assert rrm.item() == 0.0
    # the whole distillation loss (CE aside) is 0 at equality, with finite (zero) gradients
    at_eq = RobustSegLoss(num_classes=4, ce_weight=0.0, cross_modal_prob=0.0)(
        s_out, t_out, target, generator=torch.Generator().manual_seed(1)
    )
    assert at_eq["loss"].item() == 0.0
    at_eq["loss"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    # a minimum: gradients vanish up to float32 rounding (measured max |g| ~ 5e-8)
    assert grads and all(torch.isfinite(g).all() and g.abs().max() < 1e-6 for g in grads)
    student.zero_grad(set_to_none=True)

    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s_masks = {"s2": torch.ones(2, 64, 64, dtype=torch.bool)}
    s_masks["s2"][1] = False  # the student lacks s2 in sample 1
    student_in = {m: inputs[m] for m in ("s2", "dem")}
    s_out = student.train()(student_in, s_masks, return_features=True)
    loss = RobustSegLoss(num_classes=4)
    terms = loss(s_out, t_out, target, student_masks=s_masks, generator=torch.Generator().manual_seed(1))
    for name in ("kd", "hpdm", "rrm", "ce"):
        assert torch.isfinite(terms[name]) and terms[name] > 0, name
    terms["loss"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert student.encoder.stems["s1"].conv.weight.grad is None
    assert any(g.abs().sum() > 0 for g in grads)
    # weights are overridable and really used
    only_kd = RobustSegLoss(num_classes=4, ce_weight=0, hpdm_weight=0, rrm_weight=0)(
        s_out, t_out, target, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(only_kd["loss"], 50 * only_kd["kd"])


def test_rrm_is_positive_for_a_different_student_and_ignores_samples_without_the_modality():
    teacher, student, inputs, _ = _pair()
    with torch.no_grad():
        t_feats = teacher(inputs, return_features=True).features
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s_feats = {
        m: [f.detach().clone().requires_grad_(True) for f in v]
        for m, v in student(inputs, return_features=True).features.items()
    }
    masks = {"s2": torch.ones(2, 64, 64, dtype=torch.bool)}
    masks["s2"][1] = False
    r = rrm_loss(s_feats, t_feats, student_masks=masks, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(r) and r > 0
    r.backward()
    assert all(torch.isfinite(f.grad).all() for v in s_feats.values() for f in v)
    assert all((f.grad[1] == 0).all() for f in s_feats["s2"])  # sample 1 has no s2: no gradient there
    assert any(f.grad[0].abs().sum() > 0 for f in s_feats["s2"])
    # what the student holds for an absent sample does not change the term
    other = {m: [f.detach().clone() for f in v] for m, v in s_feats.items()}
    for f in other["s2"]:
        f[1] = 100.0 * torch.randn_like(f[1])
    r2 = rrm_loss(other, t_feats, student_masks=masks, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(r2, r.detach(), rtol=1e-6)


def test_functional_information_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=g)
    noise = torch.randn(3, 2, 8, 5, 5, generator=g)
    valid = torch.rand(2, 5, 5, generator=g) > 0.3
    info = functional_information(x, noise, valid)
    # autograd of f = sum_valid KL(softmax(x) || softmax(x~)) w.r.t. the perturbed features x~
    sigma = x.flatten(1).std(dim=1).view(1, -1, 1, 1, 1)
    xt = (x.unsqueeze(0) + sigma * noise).requires_grad_(True)
    log_p = torch.log_softmax(x, dim=1).unsqueeze(0)
    f = ((log_p.exp() * (log_p - torch.log_softmax(xt, dim=2))).sum(dim=2) * valid).sum(dim=(2, 3))  # (n, B)
    (grad,) = torch.autograd.grad(f.sum(), xt)
    expect = (grad.pow(2).sum(dim=(2, 3, 4)) / (f + 1e-8)).mean(dim=0)
    assert info.shape == (2,) and (info > 0).all()
    assert torch.allclose(info, expect, rtol=1e-5)


def test_cross_modal_pairing_is_finite_and_compares_other_modalities():
    teacher, student, inputs, target = _pair()
    with torch.no_grad():
        t_out = teacher(inputs, return_features=True)
    s_out = student(inputs, return_features=True)
    cross = hpdm_loss(
        s_out.features,
        t_out.features,
        target,
        4,
        cross_modal_prob=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.isfinite(cross) and cross > 0  # other modalities' prototypes differ
    cross.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
