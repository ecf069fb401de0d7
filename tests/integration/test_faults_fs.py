"""File-system faults on the real file system: ``--out`` on tmpfs mounts that are read-only, full at the
start, full mid-run, and a store folder that vanishes while the run writes it (the tests run as root).

Each ends with one ``error:`` line and exit 41 (no traceback), no half-made store when nothing was
committed, the committed tiles kept otherwise, and a rerun with room finishing the store bitwise equal to
an undisturbed run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive

pytestmark = pytest.mark.integration

WINDOW = ["--start", "2024-06-01", "--end", "2024-06-30"]
TILING = ["--tile-px", "128", "--halo-px", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsfaults")
    w = {"root": root, "catalog": run_archive.build_archive(root / "archive"),
         "model": rh.make_checkpoint(root / "model")}
    w["reference"] = root / "reference.zarr"
    r = rh.cli(*_run(w, w["reference"]), "--json")
    assert r.returncode == 0, r.stderr
    return w


def _run(w: dict[str, Path], out: Path) -> list[str]:
    return ["run", "--aoi", ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat()), *WINDOW, "--catalog",
            str(w["catalog"]), "--model", str(w["model"]), *TILING, "--out", str(out), "--sequential"]


@pytest.fixture
def mount(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs folder; unmounted at the end."""
    mounted: list[Path] = []

    def make(size: str, ro: bool = False) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        assert subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)]).returncode == 0, "needs root"
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)])


def _failed_41(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 41, (r.returncode, r.stderr[-3000:])
    line = rh.one_line_error(r.stderr)
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in line, line
    return line


def test_read_only_file_system(world, mount):
    mnt = mount("1m", ro=True)
    _failed_41(rh.cli(*_run(world, mnt / "x.zarr")), "Read-only file system")
    assert list(mnt.iterdir()) == []


def test_full_at_the_start_leaves_no_half_made_store(world, mount):
    mnt = mount("40k")
    _failed_41(rh.cli(*_run(world, mnt / "x.zarr")), "full")
    assert list(mnt.iterdir()) == []  # the template this run began is removed: nothing was committed


def test_full_mid_run_keeps_committed_tiles_and_a_rerun_with_room_finishes_identically(world, mount):
    mnt = mount("200k")
    out = mnt / "x.zarr"
    _failed_41(rh.cli(*_run(world, out)), "full", "committed tiles are kept")
    kept = sum(r.done for r in rh.manifest(out).values())  # the tile the full disk stopped is recorded failed
    assert 0 < kept < len(rh.manifest(world["reference"]))
    assert subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)]).returncode == 0
    r = rh.cli(*_run(world, out), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    s = json.loads(r.stdout)
    assert s["reused"] == kept and s["computed"] == s["tiles"] - kept
    rh.assert_same_store(out, world["reference"])


def test_a_store_folder_that_vanishes_mid_run(world, mount):
    mnt = mount("16m")
    out = mnt / "x.zarr"
    proc = subprocess.Popen(rh.cli_args(*_run(world, out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=rh.cli_env(), cwd=rh.REPO)
    rh.wait_for(lambda: (out / "manifest").is_dir() and any((out / "manifest").glob("*.json")), 300,
                "a first committed tile")
    shutil.rmtree(out)  # an operator (or a cleanup job) deletes the store under the run
    stdout, stderr = proc.communicate(timeout=300)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if r.returncode == 0:  # the run may have recreated nothing and finished before it noticed: then the
        pytest.fail(f"the run finished a store whose folder was deleted: {stderr[-2000:]}")
    _failed_41(r, "cannot write the store")
    r = rh.cli(*_run(world, out), "--json")  # the rerun starts afresh
    assert r.returncode == 0, r.stderr[-3000:]
    rh.assert_same_store(out, world["reference"])
