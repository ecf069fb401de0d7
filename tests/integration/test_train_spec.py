"""TrainSpec validation, the LR schedule, and the `chips` command on the real Sen1Floods11 chip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from sgma_batch.errors import SpecError
from sgma_batch.train import TrainSpec, lr_factor

S1F11 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sen1floods11"


def test_spec_rejects_unknown_and_invalid_keys(tmp_path):
    with pytest.raises(SpecError, match="lr_rate"):
        TrainSpec.build(name="a", chips=tmp_path, lr_rate=1.0)
    with pytest.raises(SpecError, match="epochs"):
        TrainSpec.build(name="a", chips=tmp_path, epochs=0)
    with pytest.raises(SpecError, match="name"):
        TrainSpec.build(name="../x", chips=tmp_path)


def test_spec_from_yaml_flags_override(tmp_path):
    f = tmp_path / "spec.yaml"
    f.write_text("name: demo\nchips: c.zarr\nepochs: 7\nlr: 0.01\n")
    spec = TrainSpec.from_yaml(f, epochs=3, lr=None)
    assert (spec.name, spec.epochs, spec.lr) == ("demo", 3, 0.01)
    assert spec.out_dir == Path("runs") / "demo" / "model"
    f.write_text("- not a mapping\n")
    with pytest.raises(SpecError, match="mapping"):
        TrainSpec.from_yaml(f)


def test_lr_warmup_then_poly_decay():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, 10) == 0.0
    assert lr_factor(5, 100, 0, power=1.0) == pytest.approx(0.95)


def test_chips_command_sen1floods11(tmp_path):
    res = CliRunner().invoke(app, ["chips", "--sen1floods11", str(S1F11), "--out", str(tmp_path / "c.zarr"),
                                   "--test-quadrant", "0", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["counts"] == {"train": 27, "val": 0, "test": 9}
    assert summary["classes"] == ["not_water", "water"]
    again = CliRunner().invoke(app, ["chips", "--sen1floods11", str(S1F11), "--out", str(tmp_path / "c.zarr")])
    assert again.exit_code != 0  # refuses to overwrite without --overwrite
