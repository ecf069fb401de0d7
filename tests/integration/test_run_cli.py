"""`sgma-batch run / status / quicklook` as a user calls them: a real process, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

pytestmark = pytest.mark.integration


_cli = run_archive.cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return run_archive.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=1)


def test_cli_run_json_status_quicklook_and_refusal(tmp_path, checkpoint):
    catalog = run_archive.build_archive(tmp_path / "archive")
    out = tmp_path / "m.zarr"
    bbox = ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())
    common = ["--aoi", bbox, "--start", "2024-06-01", "--end", "2024-06-30", "--catalog", str(catalog),
              "--model", str(checkpoint), "--tile-px", "128", "--halo-px", "16"]
    r = _cli("run", *common, "--out", str(out), "--dry-run", "--json")  # = plan: nothing written
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert (plan["tiles"], plan["compute"], plan["reuse"]) == (6, 6, 0) and not out.exists()
    assert plan["signatures"] == {"dem+s1": 6} and plan["estimate_s"] > 0

    # on a terminal: rich progress (tiles, km2, km2/h, ETA) on stderr; stdout holds the JSON alone
    code, stdout, terminal = run_archive.cli_with_terminal_stderr("run", *common, "--out", str(out), "--sequential",
                                                                  "--json")
    assert code == 0, terminal
    summary = json.loads(stdout)
    assert summary["tiles"] == 6 and summary["computed"] == 6 and summary["exit_code"] == 0
    assert "tiles" in terminal and "6/6" in terminal and "km2/h" in terminal

    r = _cli("status", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["computed"] == 6

    png = tmp_path / "q.png"
    r = _cli("quicklook", str(out), "--png", str(png))
    assert r.returncode == 0 and png.stat().st_size > 100

    r = _cli("run", *common, "--out", str(out), "--res", "20", "--sequential")
    assert r.returncode == 40 and "different layout" in r.stderr

    r = _cli("run", "--aoi", bbox, "--start", "2035-01-01", "--end", "2035-01-31", "--catalog", str(catalog),
             "--model", str(checkpoint), "--out", str(tmp_path / "n.zarr"), "--sequential")
    assert r.returncode == 4 and "no scenes" in r.stderr, r.stderr  # nothing found: a distinct exit code
    assert not (tmp_path / "n.zarr").exists()
    assert "Warning" not in r.stderr
