"""Availability masks are honoured: absent data changes nothing, weights renormalise, no NaN."""

from __future__ import annotations

import pytest
import torch

from sgma_model import create_model, list_models
from sgma_model.testing import MODALITIES, make_inputs

torch.set_num_threads(1)

TINY = [n for n in list_models() if n.endswith("_tiny")]


def _random_masks(b, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    masks = {m: torch.rand(b, h, w, generator=g) > 0.3 for m in MODALITIES}
    masks["s1"][0] = False  # s1 absent for the whole of sample 0
    masks["s2"][:, :16, :16] = False
    masks["s1"][:, :16, :16] = False
    masks["dem"][:, :16, :16] = False  # a corner with nothing at all
    return masks


@pytest.mark.parametrize("name", TINY)
def test_masked_values_change_nothing(name):
    model = create_model(name).eval()
    b, h, w = 2, 64, 64
    inputs = make_inputs(tuple(MODALITIES), b, h, w)
    masks = _random_masks(b, h, w, 1)
    with torch.no_grad():
        ref = model(inputs, masks)
        noisy = {
            m: torch.where(masks[m].unsqueeze(1), x, 1e3 * torch.randn_like(x)) for m, x in inputs.items()
        }
        out = model(noisy, masks)
        nodata = {m: x.masked_fill(~masks[m].unsqueeze(1), float("nan")) for m, x in inputs.items()}
        nodata["s2"][:, 0].masked_fill_(~masks["s2"], float("inf"))
        out_nan = model(nodata, masks)
    for o in (out, out_nan):
        assert torch.equal(ref.logits, o.logits)
        assert torch.equal(ref.robustness, o.robustness)
    # and the values do matter where they are valid (the test can fail)
    with torch.no_grad():
        changed = model({m: x + 1.0 for m, x in inputs.items()}, masks)
    assert not torch.allclose(changed.logits, ref.logits)


@pytest.mark.parametrize("name", TINY)
def test_robustness_sums_to_one_over_present_and_empty_pixels_are_flagged(name):
    model = create_model(name).eval()
    b, h, w = 2, 64, 64
    masks = _random_masks(b, h, w, 2)
    with torch.no_grad():
        out = model(make_inputs(tuple(MODALITIES), b, h, w), masks)
    present = torch.stack([masks[m] for m in model.modalities], dim=1)  # (B, M, H, W)
    r = out.robustness
    assert (r[~present] == 0).all()
    s = r.sum(dim=1)
    any_px = present.any(dim=1)
    assert torch.allclose(s[any_px], torch.ones_like(s[any_px]), atol=1e-5)
    assert (s[~any_px] == 0).all()
    assert torch.equal(out.valid, any_px) and not out.valid[:, :16, :16].any()
    assert torch.isfinite(out.logits).all()
    for rs in out.robustness_scales:
        assert torch.isfinite(rs).all()
        ssum = rs.sum(dim=1)
        assert ((ssum - 1).abs() < 1e-5).logical_or(ssum == 0).all()
    # nothing valid anywhere at all
    none = {m: torch.zeros(b, h, w, dtype=torch.bool) for m in ("s1", "dem")}
    with torch.no_grad():
        out = model(make_inputs(("s1", "dem"), b, h, w), none)
    assert torch.isfinite(out.logits).all() and not out.valid.any() and (out.robustness == 0).all()


def test_absent_modality_is_not_encoded():
    model = create_model("sgma_tiny").eval()
    calls: dict[str, int] = {m: 0 for m in MODALITIES}
    for m in MODALITIES:
        model.encoder.stems[m].register_forward_hook(lambda *_a, m=m: calls.__setitem__(m, calls[m] + 1))
        model.fusions[0].projectors[m].register_forward_hook(
            lambda *_a, m=m: calls.__setitem__(m, calls[m] + 1)
        )
    inputs = make_inputs(tuple(MODALITIES), 2, 32, 32)
    masks = {"dem": torch.zeros(2, 32, 32, dtype=torch.bool)}  # given but fully masked
    with torch.no_grad():
        model({"s2": inputs["s2"], "dem": inputs["dem"]}, masks)
    assert calls == {"s2": 2, "s1": 0, "dem": 0}


@pytest.mark.parametrize("name", ["sgma_tiny", "concat_fusion_tiny"])
def test_per_sample_absence_matches_single_sample_run(name):
    """A sample's output does not depend on which other samples share its batch."""
    model = create_model(name).eval()
    inputs = make_inputs(tuple(MODALITIES), 2, 64, 64, seed=4)
    masks = {m: torch.ones(2, 64, 64, dtype=torch.bool) for m in MODALITIES}
    masks["s1"][0] = False
    with torch.no_grad():
        both = model(inputs, masks)
        alone = model({m: x[1:] for m, x in inputs.items()})
        first = model({m: x[:1] for m, x in inputs.items() if m != "s1"})
    assert torch.allclose(both.logits[1:], alone.logits, atol=1e-5)
    assert torch.allclose(both.logits[:1], first.logits, atol=1e-5)
