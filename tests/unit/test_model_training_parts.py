"""Inference helper, SGMA loss, modality dropout and MAS sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgma_model import create_model
from sgma_model.dropout import cloud_holes, modality_dropout
from sgma_model.inference import predict
from sgma_model.losses import sgma_loss
from sgma_model.testing import MODALITIES, make_inputs

torch.set_num_threads(1)


def test_predict_fp32_matches_forward_and_keeps_model_trainable():
    model = create_model("sgma_tiny").eval()
    inputs = make_inputs(("s2", "s1"), 2, 64, 64)
    masks = {"s2": torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.4}
    masks["s1"] = torch.ones(2, 64, 64, dtype=torch.bool)
    masks["s1"][:, :8, :8] = masks["s2"][:, :8, :8] = False  # pixels with no modality at all
    with torch.no_grad():
        ref = model(inputs, masks)
    with torch.inference_mode():
        ref_inference = model(inputs, masks)
    out = predict(model, inputs, masks)
    assert out.logits.dtype == torch.float32 and torch.equal(out.logits, ref_inference.logits)
    # under inference_mode the decoder's fuse conv is folded into each scale: equal within float rounding
    assert torch.allclose(out.logits, ref.logits, atol=1e-5) and torch.equal(out.logits.argmax(1), ref.logits.argmax(1))
    # the GPU path (autocast + channels_last) run on CPU: finite, float32 out, close to fp32
    # (measured max |logit difference| 0.013 bf16, 0.0013 fp16; logits std 0.36)
    for amp, tol in ((torch.bfloat16, 0.04), (torch.float16, 0.005)):
        low = predict(model, inputs, masks, amp_dtype=amp, channels_last=True)
        assert low.logits.dtype == torch.float32 and torch.isfinite(low.logits).all()
        assert (low.logits - ref.logits).abs().max() < tol, amp
        assert (low.logits.argmax(1) == ref.logits.argmax(1)).float().mean() > 0.98, amp
        ones = torch.ones(int(low.valid.sum()))
        assert torch.allclose(low.robustness.sum(dim=1)[low.valid], ones, atol=1e-4)
    model.train()
    model(inputs, masks).logits.sum().backward()  # parameters are not inference tensors
    assert model.encoder.stems["s2"].conv.weight.grad is not None


def test_sgma_loss_weights_and_ignore():
    model = create_model("sgma_tiny", num_classes=4).train()
    inputs = make_inputs(tuple(MODALITIES), 2, 32, 32)
    target = torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(0))
    target[0] = 255
    out = model(inputs, mas=True, generator=torch.Generator().manual_seed(0))
    expect = 2 * F.cross_entropy(out.logits, target, ignore_index=255) + F.cross_entropy(
        out.mas_logits, target, ignore_index=255
    )
    assert torch.allclose(sgma_loss(out, target), expect, atol=1e-5)
    assert torch.allclose(
        sgma_loss(out, target, mas_weight=0.0),
        expect - F.cross_entropy(out.mas_logits, target, ignore_index=255),
        atol=1e-5,
    )
    empty = sgma_loss(out, torch.full_like(target, 255))
    assert empty.item() == 0.0
    empty.backward()


def test_modality_dropout_keeps_a_nonempty_subset_and_makes_holes():
    inputs = make_inputs(tuple(MODALITIES), 64, 64, 64)
    given = {"s1": torch.ones(64, 64, 64, dtype=torch.bool)}
    given["s1"][:8] = False  # samples 0-7 have no s1 at all
    a = modality_dropout(inputs, given, torch.Generator().manual_seed(5), subset_prob=1.0, hole_prob=0.5)
    b = modality_dropout(inputs, given, torch.Generator().manual_seed(5), subset_prob=1.0, hole_prob=0.5)
    assert all(torch.equal(a[m], b[m]) for m in MODALITIES)  # the generator decides everything
    kept = torch.stack([a[m].flatten(1).any(dim=1) for m in MODALITIES], dim=1)  # (B, M)
    assert kept.any(dim=1).all()  # never an empty subset
    assert not a["s1"][:8].any()  # never revives a missing modality
    assert (~kept).any()
    sizes = kept.sum(dim=1)
    assert (sizes == 1).any() and (sizes >= 2).any()
    frac = torch.stack([a[m].float().mean(dim=(1, 2)) for m in MODALITIES], dim=1)[kept]
    assert ((frac > 0) & (frac < 1)).any()  # holes: partial coverage somewhere
    none = modality_dropout(inputs, None, torch.Generator().manual_seed(5), subset_prob=0.0, hole_prob=0.0)
    assert all(v.all() for v in none.values())


def test_cloud_holes_cover_roughly_the_requested_fraction():
    cov = torch.tensor([0.0, 0.25, 0.5])
    holes = cloud_holes((3, 128, 128), cov, torch.Generator().manual_seed(0))
    got = holes.float().mean(dim=(1, 2))
    assert got[0] == 0 and torch.allclose(got[1:], cov[1:], atol=0.02)


def test_mas_draws_only_present_modalities_and_prefers_fragile_ones():
    model = create_model("sgma_tiny").eval()
    inputs = make_inputs(tuple(MODALITIES), 4, 32, 32)
    masks = {m: torch.ones(4, 32, 32, dtype=torch.bool) for m in MODALITIES}
    masks["s2"][2:] = False
    counts = torch.zeros(4, 3)
    with torch.no_grad():
        for seed in range(20):
            out = model(inputs, masks, mas=True, generator=torch.Generator().manual_seed(seed))
            counts[torch.arange(4), out.mas_modality] += 1
    assert counts[2:, 0].sum() == 0  # s2 absent in samples 2, 3: never drawn
    p = out.mas_probs
    assert torch.allclose(p.sum(dim=1), torch.ones(4)) and (p[2:, 0] == 0).all()
    # softmin: the modality with the lowest mean robustness gets the highest probability
    r = out.robustness.mean(dim=(2, 3))
    for b in range(4):
        present = r[b] > 0
        assert torch.argmin(torch.where(present, r[b], torch.inf)) == torch.argmax(p[b])
