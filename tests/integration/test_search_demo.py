"""``sgma-batch search`` with no --catalog: the demo archive in the cache folder `run` uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", "search", *args], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2], env=env, check=False)


def test_default_catalogue_is_the_versioned_demo_archive_in_the_run_cache(demo_cache_home, tmp_path, monkeypatch):
    """No --catalog: the demo archive under $XDG_CACHE_HOME/sgma-batch (the folder `run` uses), in a folder
    named by the generator version and parameters, so a copy left by an older generator is not reused.
    The archive is the session's (tests/conftest.py), linked into this test's own cache folder: the command
    must find it there and not write it again."""
    from cli.run_cmd import _cache_dir as run_cache_dir
    from sgma_batch.synthetic import default_cache_dir, demo_aoi_path, demo_archive_info, ensure_demo_archive

    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert default_cache_dir() == run_cache_dir() == xdg / "sgma-batch"
    stale = xdg / "sgma-batch" / "demo-archive-v1"  # what the first generator cached: never read again
    stale.mkdir(parents=True)
    (stale / "catalog.json").write_text('{"type": "Catalog", "id": "stale", "description": "old", "links": []}')
    info = demo_archive_info(xdg / "sgma-batch")
    info.root.symlink_to(demo_archive_info(demo_cache_home / "sgma-batch").root, target_is_directory=True)
    stamp = info.catalog_path.stat().st_mtime_ns
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg)}
    p = _run("--aoi", str(demo_aoi_path()), "--start", "2024-05-01", "--end", "2024-05-31", "--json", env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["catalog"] == str(info.catalog_path) and info.root != stale and info.catalog_path.is_file()
    scenes = out["scenes"]
    assert len(scenes["s2"]) == 4 and len(scenes["s1"]) == 3 and len(scenes["dem"]) == 1
    assert scenes["dem"][0]["collection"] == "cop-dem-glo-30" and scenes["dem"][0]["datetime"].startswith("2021")
    # reused: neither the command nor the library default writes it again
    assert info.catalog_path.stat().st_mtime_ns == stamp
    assert ensure_demo_archive() == info and info.catalog_path.stat().st_mtime_ns == stamp
    # a window without any acquisition: the timeless DEM alone is "nothing found" (exit 4), stdout empty
    empty = _run("--aoi", str(demo_aoi_path()), "--start", "2030-01-01", "--end", "2030-01-31", env=env)
    assert empty.returncode == 4 and empty.stdout == "" and empty.stderr.startswith("error: no scenes")
