"""Chunk checksums in tile records (sgma_batch/verify.py, TileRecord.chunks)."""

from __future__ import annotations

import json

import pytest

from sgma_batch.errors import StoreCorruptError
from sgma_batch.store.record import TileRecord

BASE = {"schema_version": 1, "tile_id": "r0000_c0001", "status": "computed", "content_hash": "h", "index": [0, 1],
        "region": [[0, 128], [128, 256]]}


def test_chunk_checksums_round_trip_and_old_records_have_none():
    rec = TileRecord.from_json(json.dumps({**BASE, "chunks": {"class/c/0/1": "ab" * 32, "probability/c/0/0/1": None}}))
    assert dict(rec.chunks) == {"class/c/0/1": "ab" * 32, "probability/c/0/0/1": None}
    assert TileRecord.from_json(rec.to_json()) == rec
    old = TileRecord.from_json(json.dumps(BASE))
    assert dict(old.chunks) == {} and "chunks" not in old.to_dict()  # records as written before checksums


@pytest.mark.parametrize("chunks", [{"class/c/0/1": 5}, ["class/c/0/1"], {"class/c/0/1": ["x"]}])
def test_malformed_checksums_make_a_corrupt_record(chunks):
    with pytest.raises(StoreCorruptError):
        TileRecord.from_json(json.dumps({**BASE, "chunks": chunks}))
