"""``sgma-batch reprocess`` with the real run pipeline (sequential executor, real COGs, real Zarr stores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive  # noqa: E402

from sgma_batch.errors import StoreLockedError  # noqa: E402
from sgma_batch.reprocess import acquire_lock, expand_spec, load_spec, lock_path, reprocess  # noqa: E402
from sgma_batch.store import read_manifest  # noqa: E402

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from sgma_model import ModelCard, create_model, save_checkpoint
    from sgma_model.testing import CLASSES, card_modalities

    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2, "dem": 1}, num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, path, ModelCard.for_model(model, card_modalities(), CLASSES))
    return path


@pytest.fixture()
def job(tmp_path: Path, checkpoint: Path) -> Path:
    catalog = run_archive.build_archive(tmp_path / "archive")
    spec = {
        "catalog": str(catalog),
        "model": str(checkpoint),
        "executor": "sequential",
        "threads": 1,
        "tile_px": 128, "halo_px": 16, "window_px": 64, "overlap_px": 16, "batch_size": 2,
        "aois": [{"name": "site", "bbox": run_archive.aoi_lonlat()}],
        "periods": [{"start": "2024-06-01", "end": "2024-06-30", "name": "2024-06"}],
        "stores": [{"name": "maps", "path": "maps/{aoi}/{period}.zarr"}],
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_unchanged_archive_recomputes_nothing_and_a_new_scene_only_its_tiles(job: Path) -> None:
    torch.set_num_threads(1)
    spec, base = load_spec(job)
    entries = expand_spec(spec, base)
    first = reprocess(entries, spec_path=str(job))
    (o1,) = first.entries
    assert o1.status == "ok" and o1.computed > 0 and o1.reused == 0, o1

    again = reprocess(entries, spec_path=str(job))
    (o2,) = again.entries
    assert (o2.computed, o2.reused) == (0, o1.computed)
    assert again.exit_code == 0

    before = read_manifest(entries[0].store)
    archive = base / "archive"
    run_archive.add_scene(archive, run_archive.s1_item(archive, "s1-new", 10, w=100, seed=3))
    third = reprocess(entries, spec_path=str(job))
    (o3,) = third.entries
    after = read_manifest(entries[0].store)
    touched = {t for t, r in after.items() if "s1-new" in r.scenes["s1"]}
    assert 0 < len(touched) < o1.computed
    assert {t for t in after if after[t] != before[t]} == touched  # every other tile's record is untouched
    assert (o3.computed, o3.reused) == (len(touched), o1.computed - len(touched))
    assert third.totals["computed"] == len(touched)


def test_a_held_lock_refuses_with_exit_42_and_writes_nothing(job: Path) -> None:
    spec, base = load_spec(job)
    (entry,) = expand_spec(spec, base)
    acquire_lock(entry.store)
    held = lock_path(entry.store).read_bytes()
    files = sorted(p.relative_to(job.parent) for p in job.parent.rglob("*"))
    with pytest.raises(StoreLockedError) as err:
        reprocess([entry])
    assert err.value.exit_code == 42
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    report = job.parent / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.app", "reprocess", "--spec", str(job), "--report", str(report)],
        check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert proc.returncode == 42, proc.stderr
    assert f"store {entry.store} is locked, held by pid {os.getpid()}" in proc.stderr
    assert "--break-lock" in proc.stderr and proc.stdout == ""
    # nothing written: no store, no report, the holder's lock untouched, not one new file anywhere
    assert sorted(p.relative_to(job.parent) for p in job.parent.rglob("*")) == files
    assert not Path(entry.store).exists() and lock_path(entry.store).read_bytes() == held
    # the holder (this test process) is alive: --break-lock alone is refused (42), --force takes it over and
    # runs; the report is written
    proc = subprocess.run(
        [sys.executable, "-m", "cli.app", "reprocess", "--spec", str(job), "--report", str(report), "--break-lock"],
        check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert proc.returncode == 42 and "alive" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "cli.app", "reprocess", "--spec", str(job), "--report", str(report), "--break-lock",
         "--force"],
        check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["entries"][0]["computed"] > 0 and data["exit_code"] == 0
    assert "recomputed" in proc.stderr
