"""``sgma-batch search``: JSON output, plain output when not a terminal, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the CLI in a subprocess

STAC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "stac"
ES10 = str(STAC / "earthsearch_sentinel-2-c1-l2a_10items.json")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", "search", *args], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2], env=env, check=False)


def test_json_output(tmp_path):
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[-105.2, 39.9], [-105.0, 39.9], [-105.0, 40.1], [-105.2, 40.1], [-105.2, 39.9]]]}))
    p = _run("--aoi", str(aoi), "--start", "2024-04-05", "--end", "2024-04-10", "--catalog", ES10, "--json",
             "--query", '{"eo:cloud_cover": {"lt": 50}}')
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [s["id"] for s in out["scenes"]["s2"]] == ["S2A_T13TDE_20240405T175934_L2A", "S2B_T13TDE_20240407T174209_L2A"]
    assert out["scenes"]["s2"][0]["cloud_cover"] == 11.954951
    assert out["scenes"]["s2"][0]["assets"]["nir08"].endswith("/B8A.tif")


def test_plain_output_and_exit_codes():
    p = _run("--aoi=-105.2,39.9,-105.0,40.1", "--start", "2024-04-05", "--end", "2024-04-07", "--catalog", ES10)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert [ln.split("\t")[1] for ln in lines] == ["S2A_T13TDE_20240405T175934_L2A", "S2B_T13TDE_20240407T174209_L2A"]
    nothing = _run("--aoi=-105.2,39.9,-105.0,40.1", "--start", "2023-04-05", "--end", "2023-04-07", "--catalog", ES10)
    assert nothing.returncode == 4 and nothing.stdout == "" and nothing.stderr.startswith("error: no scenes")
    bad = _run("--aoi=-105.2,39.9,-105.0,40.1", "--start", "2024-04-05", "--end", "2024-04-07", "--catalog", ES10,
               "--collections", "s1=sentinel-1-rtc")
    assert bad.returncode == 21 and "available: sentinel-2-c1-l2a" in bad.stderr
    big = _run("--aoi=0,0,5,5", "--start", "2024-04-05", "--end", "2024-04-07", "--catalog", ES10)
    assert big.returncode == 15 and len(big.stderr.strip().splitlines()) == 1


def test_table_on_a_terminal():
    """On a terminal (a real pseudo-terminal) the scenes are a table per modality; machine lines otherwise."""
    from terminal import cli_on_terminal

    code, stderr, screen = cli_on_terminal("search", "--aoi=-105.2,39.9,-105.0,40.1", "--start", "2024-04-05",
                                           "--end", "2024-04-07", "--catalog", ES10, stream="stdout",
                                           env={"COLUMNS": "200", "TERM": "xterm"}, timeout=120)
    assert code == 0, stderr
    assert "s2: 2 scenes" in screen and "cloud %" in screen and "\t" not in screen
    assert "S2A_T13TDE_20240405T175934_L2A" in screen and "S2B_T13TDE_20240407T174209_L2A" in screen
