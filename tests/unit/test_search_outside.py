"""``sgma-batch search`` over an AOI outside the catalogue: exit 17 naming the catalogue's area (for the demo
archive: a small synthetic area, and --catalog), while an AOI inside it with an empty window stays exit 4."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the CLI in a subprocess

STAC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "stac"
ES10 = str(STAC / "earthsearch_sentinel-2-c1-l2a_10items.json")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", "search", *args], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2], check=False)


def test_outside_a_catalogue_is_17_inside_with_an_empty_window_is_4():
    out = _run("--aoi=10.0,10.0,10.01,10.01", "--start", "2024-04-05", "--end", "2024-04-07", "--catalog", ES10)
    assert out.returncode == 17 and out.stdout == "", out.stderr
    assert out.stderr.startswith("error: the AOI is outside every item of") and "window" not in out.stderr
    inside = _run("--aoi=-105.2,39.9,-105.0,40.1", "--start", "2023-04-05", "--end", "2023-04-07", "--catalog", ES10)
    assert inside.returncode == 4 and "widen" in inside.stderr
