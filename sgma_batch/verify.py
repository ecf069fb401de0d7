"""Verify before reuse: the sha256 of every chunk a tile wrote, recorded in its manifest record, and checked
before a rerun reuses the tile (and by ``sgma-batch status --verify``).

A tile writes exactly one chunk of each tile variable (``class``, ``confidence``, ``modality_mask``,
``robustness``, ``probability``), so its record can name them: ``chunks`` maps ``"<variable>/<chunk key>"``
to the chunk file's sha256, or to None where Zarr wrote no chunk (all fill value). A tile whose chunk is
missing, changed or unexpectedly present is not reused: the rerun recomputes it. Records written before
checksums existed carry none and are reused as before.

Chunk keys come from each array's own metadata (``zarr.json`` or ``.zarray``), read as JSON: no zarr import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["TILE_VARIABLES", "chunk_digests", "tile_problems", "verified_done", "with_chunk_digests"]

TILE_VARIABLES = ("class", "confidence", "modality_mask", "robustness", "probability", "acquired")


def _read(loc: Any, *parts: str) -> bytes | None:
    from sgma_batch import storage

    try:
        return storage.read_bytes(storage.join(loc, *parts))
    except FileNotFoundError:
        return None


def _array_meta(loc: Any, name: str) -> tuple[list[int], str, str] | None:
    """(chunk shape, key prefix, separator) of array ``name``, or None when the store has no such array."""
    raw = _read(loc, name, "zarr.json")
    if raw is not None:
        meta = json.loads(raw)
        if meta.get("node_type") != "array":
            return None
        chunks = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
        enc = meta.get("chunk_key_encoding") or {"name": "default"}
        sep = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name") == "default" else ".")
        return chunks, "c" + sep if enc.get("name", "default") == "default" else "", sep
    raw = _read(loc, name, ".zarray")
    if raw is None:
        return None
    meta = json.loads(raw)
    return list(meta["chunks"]), "", meta.get("dimension_separator") or "."


def _tile_keys(loc: Any, region: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, str]:
    """``"<variable>/<chunk key>"`` -> the chunk's path parts, for the tile core at ``region``."""
    (y0, _), (x0, _) = region
    keys: dict[str, str] = {}
    for name in TILE_VARIABLES:
        meta = _array_meta(loc, name)
        if meta is None:
            continue
        chunks, prefix, sep = meta
        coords = [0] * (len(chunks) - 2) + [y0 // chunks[-2], x0 // chunks[-1]]
        keys[f"{name}/{prefix}{sep.join(map(str, coords))}"] = name
    return keys


def chunk_digests(store: str | Path, region: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, str | None]:
    """The sha256 (hex) of each chunk of the tile core at ``region`` (None: no chunk file)."""
    from sgma_batch import storage

    loc = storage.location(store)
    out: dict[str, str | None] = {}
    for key in _tile_keys(loc, region):
        data = _read(loc, *key.split("/"))
        out[key] = None if data is None else hashlib.sha256(data).hexdigest()
    return out


def with_chunk_digests(store: str | Path, record: Any) -> Any:
    """``record`` with the checksums of its chunks (done records only: failed tiles wrote nothing)."""
    if not record.done or getattr(record, "chunks", None):
        return record
    return dataclasses.replace(record, chunks=chunk_digests(store, record.region))


def tile_problems(store: str | Path, record: Any) -> list[str]:
    """What does not match the record's checksums (empty: the tile's chunks are as written)."""
    expected: Mapping[str, str | None] = getattr(record, "chunks", None) or {}
    if not expected:
        return []
    found = chunk_digests(store, record.region)
    problems = []
    for key, digest in expected.items():
        got = found.get(key)
        if got == digest:
            continue
        problems.append(f"{key} {'missing' if got is None else 'unexpected' if digest is None else 'changed'}")
    return problems


def verified_done(store: str | Path, manifest: Mapping[str, Any], done: set[str]) -> set[str]:
    """The tiles of ``done`` whose chunks match their records; the others are logged and left to recompute."""
    bad = {}
    for tile_id in sorted(done):
        problems = tile_problems(store, manifest[tile_id])
        if problems:
            bad[tile_id] = problems
    if bad:
        first = next(iter(bad))
        log.warning("%d committed tile(s) have missing or changed chunks and are recomputed (e.g. %s: %s)",
                    len(bad), first, ", ".join(bad[first]))
    return done - set(bad)


def unfinished(store: str | Path) -> str | None:
    """Why a local store's finish step (overviews, quicklook, STAC item) is not current, or None.

    ``item.json`` is written last by the finish step; a store without it, or with a tile record committed
    after it (an interrupted rerun, perhaps with another window or model), has not been finished since its
    tiles changed. Object-storage stores are not checked (no reliable modification times): None.
    """
    if "://" in str(store):
        return None
    root = Path(store)
    item = root / "item.json"
    records = list((root / "manifest").glob("*.json"))
    if not records:
        return None
    if not item.is_file():
        return "its finish step never completed (no item.json, overviews or quicklook)"
    done_at = item.stat().st_mtime
    newer = sum(1 for r in records if r.stat().st_mtime > done_at)
    if newer:
        return (f"{newer} tile(s) were committed after its last finish step (an interrupted run: item.json, "
                "overviews and root attributes may describe another window or model)")
    return None
