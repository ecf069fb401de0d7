"""The typed manifest record: JSON round trip, schema versions, refusals, and how it is committed."""

from __future__ import annotations

import dataclasses
import json
import stat

import pytest
from odc.geo.geobox import GeoBox

from sgma_batch.errors import StoreCorruptError, StoreIncompatibleError
from sgma_batch.grid import plan_tiles
from sgma_batch.store import (
    SCHEMA_VERSION,
    TileRecord,
    TileTiming,
    commit_tile,
    read_manifest,
    tile_records_done,
)

GBOX = GeoBox.from_bbox((500000, 4000000, 500000 + 10 * 200, 4000000 + 10 * 150), "EPSG:32633", resolution=10)

#: A record exactly as sgma-batch wrote it before the schema version existed (a degraded tile).
OLD_RECORD = {
    "content_hash": "3f2a", "error": {"s1/s1-b": "RasterioIOError: 404"}, "index": [1, 2],
    "modalities": ["dem", "s1"], "region": [[64, 128], [128, 192]],
    "scenes": {"dem": ["dem-1"], "s1": ["s1-a", "s1-b"]}, "scenes_used": {"dem": ["dem-1"], "s1": ["s1-a"]},
    "status": "degraded", "tile_id": "r1_c2", "timing": {"infer_s": 0.5, "read_s": 0.25, "write_s": 0.01},
    "worker": "host:123",
}


def _tasks():
    return plan_tiles(GBOX, GBOX.extent.to_crs("EPSG:4326").geom, tile_px=64, halo_px=0)


def test_a_record_round_trips_through_json_with_its_schema_version():
    task = _tasks()[4]
    rec = TileRecord.for_task(task, "computed", scenes_used={"s2": ["a"]}, modalities=["s2"],
                              timing=TileTiming(0.1, 0.2, 0.3), worker="h:1")
    assert rec.region == ((task.region[0].start, task.region[0].stop), (task.region[1].start, task.region[1].stop))
    assert rec.slices == task.region and rec.index == task.index and rec.content_hash == task.content_hash
    d = json.loads(rec.to_json())
    assert d["schema_version"] == SCHEMA_VERSION == 1
    assert TileRecord.from_json(rec.to_json()) == rec
    failed = TileRecord.for_task(task, "failed", errors={"tile": "RuntimeError: boom"})
    assert TileRecord.from_json(failed.to_json()) == failed and failed.timing is None and not failed.done


def test_a_record_is_frozen_and_holds_no_mutable_containers():
    rec = TileRecord.from_dict(OLD_RECORD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "computed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rec.errors["x"] = "y"  # type: ignore[index]
    assert rec.scenes["s1"] == ("s1-a", "s1-b") and isinstance(rec.modalities, tuple)
    assert not hasattr(rec, "__dict__")  # slots


def test_a_record_written_before_the_schema_version_reads_as_version_1():
    rec = TileRecord.from_json(json.dumps(OLD_RECORD))
    assert rec.schema_version == 1
    assert (rec.tile_id, rec.status, rec.index, rec.region) == ("r1_c2", "degraded", (1, 2), ((64, 128), (128, 192)))
    assert rec.errors == {"s1/s1-b": "RasterioIOError: 404"} and rec.scenes_used["s1"] == ("s1-a",)
    assert rec.timing == TileTiming(read_s=0.25, infer_s=0.5, write_s=0.01) and rec.worker == "host:123"
    # written again, it carries the version and nothing else changes
    assert {k: v for k, v in json.loads(rec.to_json()).items() if k != "schema_version"} == OLD_RECORD
    no_error = TileRecord.from_dict({**OLD_RECORD, "error": None, "status": "computed"})
    assert no_error.errors == {} and json.loads(no_error.to_json())["error"] is None


def test_a_newer_schema_is_refused_and_a_malformed_record_is_corrupt():
    with pytest.raises(StoreIncompatibleError, match=r"r1_c2.json has schema version 2; .*upgrade sgma-batch"):
        TileRecord.from_dict({**OLD_RECORD, "schema_version": 2, "status": "new-kind"}, source="record r1_c2.json")
    for bad in ({k: v for k, v in OLD_RECORD.items() if k != "content_hash"}, {**OLD_RECORD, "status": "done"},
                {**OLD_RECORD, "region": [[0, 64]]}, {**OLD_RECORD, "schema_version": 0},
                {**OLD_RECORD, "timing": {"read_s": 1}}):
        with pytest.raises(StoreCorruptError, match="is not a tile record"):
            TileRecord.from_dict(bad)
    with pytest.raises(StoreCorruptError, match="is not JSON; delete it"):
        TileRecord.from_json('{"tile_id": "')
    with pytest.raises(StoreCorruptError, match="is not a tile record"):
        TileRecord.from_json("[1, 2]")
    with pytest.raises(ValueError, match="tile status 'done'"):
        TileRecord.for_task(_tasks()[0], "done")  # type: ignore[arg-type]


def test_commit_writes_a_readable_record_atomically_and_read_manifest_types_it(tmp_path):
    tasks = _tasks()
    for t in tasks[:3]:
        commit_tile(tmp_path, TileRecord.for_task(t, "computed"))
    files = sorted((tmp_path / "manifest").iterdir())
    assert [f.name for f in files] == sorted(f"{t.tile_id}.json" for t in tasks[:3])  # no temporary left
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}  # like the Zarr files, not mkstemp's 0600
    manifest = read_manifest(tmp_path)
    assert all(isinstance(r, TileRecord) for r in manifest.values())
    assert tile_records_done(manifest, tasks) == {t.tile_id for t in tasks[:3]}
    (tmp_path / "manifest" / "r9_c9.json").write_text(json.dumps({**OLD_RECORD, "schema_version": 9}))
    with pytest.raises(StoreIncompatibleError, match="r9_c9.json has schema version 9"):
        read_manifest(tmp_path)
