"""Contract tests generated from the registry: every model name, every non-empty modality subset."""

from __future__ import annotations

import pytest
import torch

from sgma_model import create_model, list_models
from sgma_model.errors import BandMismatchError, InputShapeError, UnknownModelError
from sgma_model.testing import MODALITIES, SUBSETS, make_inputs

torch.set_num_threads(1)

TINY = [n for n in list_models() if n.endswith("_tiny")]
LARGER = [n for n in list_models() if not n.endswith("_tiny")]
KINDS = ("sgma", "sgf_only", "mas_only", "mean_fusion", "concat_fusion")


def test_registry_covers_ablation_grid():
    for kind in KINDS:
        for size in ("tiny", "small", "base"):
            assert f"{kind}_{size}" in list_models()


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownModelError) as err:
        create_model("sgma_huge")
    assert "sgma_tiny" in str(err.value) and "mean_fusion_base" in str(err.value)


@pytest.mark.parametrize("name", TINY)
def test_tiny_variants_fit_three_million_params(name):
    model = create_model(name, modalities=MODALITIES, num_classes=7)
    assert sum(p.numel() for p in model.parameters()) <= 3_000_000


def _check_contract(model, subset, b, h, w):
    """One forward (with MAS) and backward on ``subset``: shapes, finite values, gradients where used."""
    k = model.num_classes
    model.zero_grad(set_to_none=True)
    inputs = make_inputs(subset, b, h, w)
    out = model(inputs, mas=True, generator=torch.Generator().manual_seed(1))
    assert out.logits.shape == (b, k, h, w)
    assert out.robustness.shape == (b, len(MODALITIES), h, w)
    assert out.valid.shape == (b, h, w) and out.valid.all()
    assert len(out.robustness_scales) == 4
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.robustness).all()
    loss = out.logits.square().mean()
    if model.has_mas:
        assert out.mas_logits.shape == (b, k, h, w) and torch.isfinite(out.mas_logits).all()
        assert out.mas_modality.shape == (b,)
        assert all(model.modalities[i] in subset for i in out.mas_modality.tolist())
        loss = loss + out.mas_logits.square().mean()
    else:
        assert out.mas_logits is None
    loss.backward()
    for pname, p in model.named_parameters():
        if pname.startswith("encoder.stems."):
            modality = pname.split(".")[2]
            if modality not in subset:
                assert p.grad is None, f"{pname} got a gradient without its modality ({subset})"
                continue
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} got no gradient ({subset})"
        elif ".projectors." in pname and pname.split(".projectors.")[1].split(".")[0] not in subset:
            assert p.grad is None, f"{pname} computed for an absent modality ({subset})"
            continue
        if len(subset) == len(MODALITIES):
            # every parameter is used with all modalities present
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} got no gradient"
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.slow  # backbone-sized models (up to ~25 M parameters): the tiny variants keep the unit tier's contract
@pytest.mark.parametrize("name", LARGER)
def test_larger_variants_are_backbone_sized_and_keep_the_contract(name):
    torch.manual_seed(0)
    model = create_model(name, modalities=MODALITIES, num_classes=7).train()
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    if name.endswith("_base"):  # the paper's PVT-v2-b2 / ResNet-50 class: ~25 M
        assert 20e6 <= n_enc <= 40e6
    else:
        assert 5e6 <= n_enc < 20e6
    info = model.feature_info
    assert [f.stride for f in info] == [4, 8, 16, 32]
    # all modalities: every parameter is used (subsets exercise the same code as the tiny variants')
    _check_contract(model, tuple(MODALITIES), 1, 32, 32)


@pytest.mark.parametrize("name", TINY)
def test_forward_every_subset_shapes_finite_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, modalities=MODALITIES, num_classes=5).train()
    for subset in SUBSETS:
        _check_contract(model, subset, 2, 64, 48)


@pytest.mark.parametrize("name", ["sgma_tiny", "mean_fusion_tiny"])
def test_odd_sizes_are_padded_and_cropped(name):
    model = create_model(name).eval()
    out = model(make_inputs(("s2", "dem"), 1, 37, 53))
    assert out.logits.shape == (1, 7, 37, 53) and torch.isfinite(out.logits).all()


def test_bad_inputs_fail_with_named_errors():
    model = create_model("sgma_tiny").eval()
    with pytest.raises(BandMismatchError, match="s1"):
        model({"s1": torch.randn(1, 3, 32, 32)})
    with pytest.raises(BandMismatchError, match="lidar"):
        model({"lidar": torch.randn(1, 1, 32, 32)})
    with pytest.raises(InputShapeError):
        model({})
    with pytest.raises(InputShapeError):
        model({"s1": torch.randn(1, 2, 32, 32), "dem": torch.randn(1, 1, 64, 32)})
    with pytest.raises(InputShapeError):
        model({"s1": torch.randn(1, 2, 32, 32)}, {"s1": torch.ones(1, 16, 32, dtype=torch.bool)})
