"""Verify before reuse (issue 22 item 4): every committed record carries the sha256 of the chunks its tile
wrote; ``status --verify`` finds a deleted and a corrupted chunk (exit 43), the rerun recomputes exactly
those tiles and ends bitwise equal to the undamaged store; records without checksums are reused as before."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive

pytestmark = pytest.mark.integration


def _run(catalog: Path, model: Path, out: Path) -> list[str]:
    return ["run", "--aoi", ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat()), "--start", "2024-06-01",
            "--end", "2024-06-30", "--catalog", str(catalog), "--model", str(model), "--tile-px", "128",
            "--halo-px", "16", "--out", str(out), "--sequential", "--json"]


def test_deleted_and_corrupted_chunks_are_found_and_recomputed(tmp_path):
    catalog = run_archive.build_archive(tmp_path / "archive")
    model = rh.make_checkpoint(tmp_path / "model")
    out = tmp_path / "map.zarr"
    args = _run(catalog, model, out)
    assert rh.cli(*args).returncode == 0
    reference = tmp_path / "reference.zarr"
    shutil.copytree(out, reference)
    records = rh.manifest(out)
    for rec in records.values():  # one chunk of each tile variable
        assert {k.split("/")[0] for k in rec.chunks} >= {"class", "confidence", "modality_mask", "robustness"}
    r = rh.cli("status", str(out), "--verify")
    assert r.returncode == 0, r.stderr

    deleted, corrupted = sorted(records)[1], sorted(records)[-1]
    key = next(k for k, v in records[deleted].chunks.items() if k.startswith("class/") and v)
    (out / key).unlink()
    key = next(k for k, v in records[corrupted].chunks.items() if k.startswith("confidence/") and v)
    (out / key).write_bytes(b"\x00" * 16)

    r = rh.cli("status", str(out), "--verify")
    assert r.returncode == 43, r.stderr
    line = rh.one_line_error(r.stderr)
    assert "2 committed tile(s) have missing or changed chunks" in line

    r = rh.cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s["reused"], s["computed"]) == (len(records) - 2, 2)
    assert rh.cli("status", str(out), "--verify").returncode == 0
    rh.assert_same_store(out, reference)


def test_records_without_checksums_are_reused_as_before(tmp_path):
    catalog = run_archive.build_archive(tmp_path / "archive")
    model = rh.make_checkpoint(tmp_path / "model")
    out = tmp_path / "map.zarr"
    args = _run(catalog, model, out)
    assert rh.cli(*args).returncode == 0
    for f in (out / "manifest").glob("*.json"):  # as written before checksums existed
        doc = json.loads(f.read_text())
        doc.pop("chunks")
        f.write_text(json.dumps(doc))
    r = rh.cli(*args)
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["reused"] == s["tiles"]
    assert rh.cli("status", str(out), "--verify").returncode == 0


def test_a_damaged_record_changes_nothing_and_an_unfinished_store_is_reported(tmp_path):
    catalog = run_archive.build_archive(tmp_path / "archive")
    model = rh.make_checkpoint(tmp_path / "model")
    out = tmp_path / "map.zarr"
    args = _run(catalog, model, out)
    assert rh.cli(*args).returncode == 0
    assert rh.cli("status", str(out)).returncode == 0
    # a damaged record: refused (43) before the root attributes are rewritten
    record = sorted((out / "manifest").glob("*.json"))[0]
    good = record.read_bytes()
    record.write_bytes(good[: len(good) // 2])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = rh.cli(*args)
    assert r.returncode == 43 and "is not JSON" in rh.one_line_error(r.stderr)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # zarr.json included
    record.write_bytes(good)
    # a finish step that did not complete: status says so and exits 3; the rerun finishes it
    (out / "item.json").unlink()
    r = rh.cli("status", str(out))
    assert r.returncode == 3 and "unfinished" in r.stderr and "never completed" in r.stderr
    assert rh.cli(*args).returncode == 0
    assert rh.cli("status", str(out)).returncode == 0
    # a tile committed after the last finish (an interrupted rerun): unfinished again
    import os
    import time

    later = time.time() + 5
    os.utime(record, (later, later))
    r = rh.cli("status", str(out))
    assert r.returncode == 3 and "committed after its last finish step" in r.stderr
