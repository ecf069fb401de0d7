"""Evaluation arithmetic against hand-computed numbers, and corruption statistics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sgma_batch import evaluate as ev


def test_subsets_enumerate_all_non_empty_in_model_order():
    subsets = ev.modality_subsets(("s2", "s1", "dem"))
    assert subsets == [
        ("s2", "s1", "dem"),
        ("s2", "s1"), ("s2", "dem"), ("s1", "dem"),
        ("s2",), ("s1",), ("dem",),
    ]
    assert len(ev.modality_subsets(("a", "b", "c", "d"))) == 15
    assert ev.subset_name(("s2", "dem")) == "s2+dem"


def test_confusion_matrix_and_miou_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 2, 255, 0])
    cm = ev.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[2, 0, 0], [0, 1, 0], [0, 1, 0]]
    iou = ev.iou_per_class(cm)
    # class 0: 2/2; class 1: tp 1, fp 1 -> 1/2; class 2: tp 0, fn 1 -> 0
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.0])
    assert ev.mean_iou(cm) == pytest.approx(50.0)


def test_miou_skips_classes_absent_from_truth_and_prediction():
    cm = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 4]])
    # class 0: 3/(3+1) ; class 1: 2/(2+1) ; class 2: absent -> NaN ; class 3: 1
    iou = ev.iou_per_class(cm)
    assert math.isnan(iou[2])
    assert ev.mean_iou(cm) == pytest.approx(100 * (0.75 + 2 / 3 + 1.0) / 3)


def test_confusion_matrix_accumulates_over_images_not_per_image_mean():
    # image A: one pixel of class 0 correct; image B: 3 pixels class 1, all predicted 0
    cm = ev.confusion_matrix(torch.tensor([0]), torch.tensor([0]), 2)
    cm += ev.confusion_matrix(torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]), 2)
    # accumulated: class 0 tp 1 fp 3 -> 0.25; class 1 -> 0 => 12.5 (per-image mean would give 50)
    assert ev.mean_iou(cm) == pytest.approx(12.5)


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match="labels outside"):
        ev.confusion_matrix(torch.tensor([0]), torch.tensor([5]), 3)


def test_expected_miou_weights_by_hand():
    mods = ("s2", "s1", "dem")
    scores = {}
    for s in ev.modality_subsets(mods):
        scores[s] = {3: 90.0, 2: 70.0, 1: 40.0}[len(s)]
    # p = 0.2: full 0.8^3 = 0.512, each pair 0.2*0.8^2 = 0.128, each single 0.2^2*0.8 = 0.032
    want = (0.512 * 90 + 3 * 0.128 * 70 + 3 * 0.032 * 40) / (0.512 + 3 * 0.128 + 3 * 0.032)
    assert ev.expected_miou(scores, 3, 0.2) == pytest.approx(want)
    assert ev.subset_weight(("s2",), 3, 0.1) == pytest.approx(0.1**2 * 0.9)
    summary = ev.summarise(scores, 3)
    assert summary["average"] == pytest.approx((90 + 3 * 70 + 3 * 40) / 7)
    assert summary["top1"] == 90.0 and summary["last1"] == 40.0
    assert summary["E(0.2)"] == pytest.approx(want)
    # smaller p puts more weight on the full set
    assert summary["E(0.05)"] > summary["E(0.1)"] > summary["E(0.2)"]


def test_rmm_zeroes_the_requested_fraction():
    gen = torch.Generator().manual_seed(1)
    x = torch.ones(4, 3, 64, 64)
    for r in ev.RMM_RATES:
        y, dropped = ev.zero_elements(x, r, gen)
        frac = float((y == 0).float().mean())
        assert abs(frac - r) < 0.01
        assert torch.equal(dropped, y == 0)
    mask = torch.ones(4, 64, 64, dtype=torch.bool)
    y, m = ev.zero_pixels(x, mask, 0.5, gen)
    assert abs(float((~m).float().mean()) - 0.5) < 0.02
    # a dropped pixel is zero in every band, a kept one untouched
    assert torch.all(y[(~m)[:, None].expand_as(y)] == 0)
    assert torch.all(y[m[:, None].expand_as(y)] == 1)


def test_nm_noise_levels():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, 128, 128, generator=gen)
    for density in (0.05, 0.1, 0.2):
        y = ev.salt_and_pepper(x, density, gen)
        changed = float((y != x).float().mean())
        assert abs(changed - density) < 0.01
        hi = x.amax(dim=(2, 3), keepdim=True)
        lo = x.amin(dim=(2, 3), keepdim=True)
        assert torch.all((y == x) | (y == hi) | (y == lo))
    const = torch.zeros(2, 1, 256, 256)  # salt == pepper == 0, so only the Gaussian part remains
    for level, (_, sigma) in ev.NM_LEVELS.items():
        y = ev.noisy(const, level, gen)
        assert float(y.std()) == pytest.approx(sigma, rel=0.03)


class OneHotReader(torch.nn.Module):
    """A deterministic model: s2 carries a one-hot label image; s1 alone always predicts class 0."""

    modalities = ("s2", "s1")
    num_classes = 3

    def forward(self, inputs, masks=None):
        b, _, h, w = next(iter(inputs.values())).shape
        logits = torch.zeros(b, 3, h, w)
        logits[:, 0] = 0.5
        if "s2" in inputs:
            s2 = inputs["s2"]
            if masks is not None and "s2" in masks:
                s2 = s2 * masks["s2"][:, None]
            logits = logits + s2
        return SimpleNamespace(logits=logits)


def _batches():
    labels = torch.tensor([[[0, 1], [2, 255]]])  # (1,2,2)
    onehot = torch.nn.functional.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    inputs = {"s2": onehot, "s1": torch.zeros(1, 2, 2, 2)}
    masks = {"s2": torch.ones(1, 2, 2, dtype=torch.bool), "s1": torch.ones(1, 2, 2, dtype=torch.bool)}
    return [(inputs, masks, labels)] * 2


def test_evaluate_model_emm_both_conventions_by_hand():
    report = ev.evaluate_model(OneHotReader(), _batches(), protocols=("emm",))
    for conv in ev.CONVENTIONS:
        r = report.find("emm", conv)
        assert r.scores[("s2", "s1")] == pytest.approx(100.0)
        assert r.scores[("s2",)] == pytest.approx(100.0)
        # s1 alone: predicts 0 everywhere; truth 0,1,2 -> IoU 1/3, 0, 0 -> 11.11
        assert r.scores[("s1",)] == pytest.approx(100 / 9)
        assert r.summary["last1"] == pytest.approx(100 / 9)
        assert r.summary["average"] == pytest.approx((200 + 100 / 9) / 3)
    assert report.n_pixels == 6
    md = report.to_markdown()
    assert "EMM" in md and "zero-filled" in md and "s2+s1" in md


def test_evaluate_model_rmm_degrades_with_rate():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 32, 32))
    onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    ones = torch.ones(2, 32, 32, dtype=torch.bool)
    batches = [({"s2": onehot, "s1": torch.zeros(2, 2, 32, 32)}, {"s2": ones, "s1": ones}, labels)]
    report = ev.evaluate_model(OneHotReader(), batches, protocols=("rmm", "nm"))
    for conv in ev.CONVENTIONS:
        prev = 101.0
        for r in ev.RMM_RATES:
            res = report.find("rmm", conv, f"r={r:g}")
            assert res.scores[("s2", "s1")] == pytest.approx(100.0)  # nothing missing
            assert res.scores[("s2",)] == pytest.approx(100.0)  # only s1 corrupted; s1 carries nothing
            s1_only = res.scores[("s1",)]  # s2 partially zeroed: a fraction ~r of pixels lose the label
            assert s1_only < prev
            prev = s1_only
    nm = [report.find("nm", "n/a", lv).scores[("s2", "s1")] for lv in ev.NM_LEVELS]
    assert nm[0] > nm[2]
