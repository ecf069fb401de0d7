"""A store left half-written by a killed run: torn chunks of uncommitted tiles, a never-written chunk, a
leftover temporary manifest file, no finish step. The rerun must recompute exactly the uncommitted tiles and
end bitwise identical to an undisturbed run; a damaged commit record is a clear error, never silently used."""

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


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("store")
    catalog = run_archive.build_archive(root / "archive")
    model = rh.make_checkpoint(root / "model", seed=4)
    bbox = ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())
    args = ["run", "--aoi", bbox, "--start", "2024-06-01", "--end", "2024-06-30", "--catalog", str(catalog),
            "--model", str(model), "--tile-px", "64", "--halo-px", "16", "--sequential", "--json"]
    ref = root / "ref.zarr"
    r = rh.cli(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    return {"args": args, "ref": ref, "total": json.loads(r.stdout)["tiles"]}


def _chunks(store: Path, tile_id: str) -> list[Path]:
    iy, ix = (int(p[1:]) for p in tile_id.split("_"))
    found = [p for p in store.glob(f"*/c/**/{iy}/{ix}") if p.is_file()]
    return [p for p in found if p.relative_to(store).parts[0] in ("class", "confidence", "modality_mask",
                                                                  "robustness")]


def test_half_written_store_resumes_to_a_bitwise_identical_result(setup, tmp_path):
    half = tmp_path / "half.zarr"
    shutil.copytree(setup["ref"], half)
    tiles = sorted(rh.manifest(half))
    torn, unwritten = tiles[1:4], tiles[5]
    for tid in torn:  # data half-written, record never committed
        (half / "manifest" / f"{tid}.json").unlink()
        chunks = _chunks(half, tid)
        assert chunks, tid
        for c in chunks:
            c.write_bytes(c.read_bytes()[: max(len(c.read_bytes()) // 2, 1)])
    (half / "manifest" / f"{unwritten}.json").unlink()  # killed before its data reached the disk
    for c in _chunks(half, unwritten):
        c.unlink()
    (half / "manifest" / f".{tiles[0]}.json.x1y2.tmp").write_text('{"tile_id": "')  # an interrupted commit
    for f in ("item.json", "quicklook.png"):  # the finish step never ran
        (half / f).unlink(missing_ok=True)

    r = rh.cli(*setup["args"], "--out", str(half))
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert (s["reused"], s["computed"]) == (setup["total"] - 4, 4)
    rh.assert_same_store(setup["ref"], half)
    assert (half / "item.json").exists()


def test_a_damaged_commit_record_is_a_clear_error_then_recomputed(setup, tmp_path):
    store = tmp_path / "damaged.zarr"
    shutil.copytree(setup["ref"], store)
    victim = sorted((store / "manifest").glob("*.json"))[2]
    victim.write_text('{"tile_id": "r0_c2", "status": "comp')  # truncated by a full disk, say

    def files() -> dict[Path, bytes]:  # every file but the root metadata (its provenance stamp is refreshed)
        return {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p != store / "zarr.json"}

    before = files()
    r = rh.cli(*setup["args"], "--out", str(store))
    assert r.returncode == 43, r.stderr[-2000:]
    line = rh.one_line_error(r.stderr)
    assert victim.name in line and "delete it" in line
    assert files() == before  # no data, no record touched
    victim.unlink()  # what the message says to do
    r = rh.cli(*setup["args"], "--out", str(store))
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s["reused"], s["computed"]) == (setup["total"] - 1, 1)
    rh.assert_same_store(setup["ref"], store)
