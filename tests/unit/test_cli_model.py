"""``sgma-batch --help`` / ``--version`` / ``model --help`` import no heavy library; ``model list`` and
``model info`` work on a real checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgma_batch import __version__
from sgma_model import ModelCard, create_model, list_models, save_checkpoint
from sgma_model.testing import CLASSES, MODALITIES, card_modalities

pytestmark = pytest.mark.integration  # every test runs the CLI in a subprocess

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
from cli.app import main
for args in (["--help"], ["--version"], ["model", "--help"]):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), (args, exc.code)
heavy = sorted(m for m in ("torch", "ray", "rasterio", "xarray", "zarr") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cli.app import main; main()", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_imports_no_heavy_library():
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], check=False, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout and "model" in proc.stdout and "info" in proc.stdout
    assert f"sgma-batch {__version__}\n" in proc.stdout
    assert "HEAVY=\n" in proc.stdout, proc.stdout.splitlines()[-1]


def test_model_list():
    proc = _run("model", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == list_models()
    proc = _run("model", "list")
    assert "sgma_tiny" in proc.stdout.split()


def test_model_info_on_saved_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities=MODALITIES, num_classes=len(CLASSES))
    card = ModelCard.for_model(model, card_modalities(), CLASSES, training={"metrics": {"miou_all": 0.61}})
    saved = save_checkpoint(model, tmp_path / "ckpt", card)
    proc = _run("model", "info", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stderr
    assert "sgma_tiny" in proc.stdout and "vv, vh" in proc.stdout and "miou_all: 0.61" in proc.stdout
    assert saved.model_hash[:16] in proc.stdout
    proc = _run("model", "info", str(tmp_path / "ckpt"), "--json")
    assert json.loads(proc.stdout)["architecture"] == "sgma_tiny"
    # a directory without a card: one-line error and the checkpoint exit code (30)
    proc = _run("model", "info", str(tmp_path))
    assert proc.returncode == 30 and proc.stderr.startswith("error: ") and "card.json" in proc.stderr
