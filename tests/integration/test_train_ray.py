"""Ray Train end to end: 2 CPU workers (gloo, DDP) on a tiny real chip store, checkpoint card, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sgma_batch import chips
from sgma_batch.train import TrainSpec, train

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
S1F11 = SHARED / "data" / "sen1floods11"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield
    if started:
        ray.shutdown()


def test_train_two_workers_checkpoint_and_resume(tmp_path, ray_local):
    from sgma_model import load_checkpoint

    store = chips.sen1floods11_chip_store(S1F11, tmp_path / "c.zarr", test_quadrant=3, val_quadrant=2)
    base = dict(name="tiny", chips=store, storage=tmp_path / "runs", model="sgma_tiny", batch_size=4,
                workers=2, lr=2e-3, warmup_epochs=0.5)
    first = train(TrainSpec(**base, epochs=1))
    assert first.epochs == 1
    model, card = load_checkpoint(first.checkpoint)
    assert model.modalities == ("s2", "s1")
    cs = chips.ChipStore(store)
    vv = card.modality("s1").bands[0]
    assert vv.name == "vv" and vv.mean == pytest.approx(cs.stats["s1"]["mean"][0])
    assert card.modality("s2").bands[0].common_name == "blue"
    assert [c.name for c in card.classes] == ["not_water", "water"]
    metrics = card.training["metrics"]
    assert set(metrics["miou_per_subset"]) == {"s2+s1", "s2", "s1"}
    assert all(0 <= v <= 100 for v in metrics["miou_per_subset"].values())
    assert card.training["data"]["counts"] == {"train": 18, "val": 9, "test": 9}

    # rerun with the same name and more epochs: continues from epoch 1 instead of starting over;
    # val_every=3 skips validation after epoch 1 (of 0..2) but never after the last
    second = train(TrainSpec(**base, epochs=3, val_every=3))
    assert second.epochs == 3
    assert [h["epoch"] for h in second.history] == [0, 1, 2]
    assert "val_average" not in second.history[1] and "val_average" in second.history[2]
    assert second.history[0]["loss"] == pytest.approx(first.history[0]["loss"])
    # epoch 0 was not trained again: its record (incl. when it finished) is the first run's, verbatim
    assert second.history[0]["finished_at"] == first.history[0]["finished_at"]
    assert second.history[1]["finished_at"] > first.history[0]["finished_at"]
    _, card2 = load_checkpoint(second.checkpoint)
    assert card2.training["epochs"] == 3 and card2.model_hash != card.model_hash
    assert np.isfinite(second.history[2]["loss"])
    assert card2.training["metrics"]["average"] == second.history[2]["val_average"]
    json.dumps(card2.training)  # serialisable

    # the evaluate command on the trained checkpoint: JSON with every subset, both conventions
    from typer.testing import CliRunner

    from cli.app import app

    res = CliRunner().invoke(app, ["evaluate", "--model", str(second.checkpoint), "--data", str(store),
                                   "--protocol", "emm,nm", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    convs = {(r["protocol"], r["convention"]) for r in report["results"]}
    assert convs == {("emm", "dropped"), ("emm", "zero-filled"), ("nm", "n/a")}
    emm = next(r for r in report["results"] if r["convention"] == "dropped")
    assert set(emm["miou"]) == {"s2+s1", "s2", "s1"}
    assert emm["summary"]["last1"] == min(emm["miou"].values())
