"""Tile writes and the manifest: one writer per chunk, and a tile's record committed atomically after its data.

A record's presence in ``manifest/<tile_id>.json`` is the tile's commit point.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgma_batch.store.layout import (
    CLASS_NODATA,
    MANIFEST_DIR,
    NODATA,
    ROBUSTNESS_SCALE,
    StoreLayout,
    TileArrays,
)
from sgma_batch.store.record import DONE_STATUSES, TileRecord  # noqa: F401 - DONE_STATUSES re-exported


def _check_region(region: tuple[slice, slice], layout: StoreLayout) -> None:
    h, w = layout.geobox.shape.yx
    t = layout.tile_px
    for sl, n in zip(region, (h, w)):
        # One writer per chunk: a region must start on a chunk edge and end on the next or at the edge.
        if sl.start % t != 0 or not (sl.stop - sl.start == t or (sl.stop == n and sl.stop - sl.start <= t)):
            raise AssertionError(f"region {region} is not one chunk of {t} px in a {h}x{w} grid")


def write_tile(path: str | Path, layout: StoreLayout, region: tuple[slice, slice], arrays: TileArrays) -> None:
    """Write one tile core's arrays into exactly its own chunk of every variable.

    On object storage a failed request (endpoint down, credentials expired) raises StoreUnwritableError: the
    run reports it in one line (exit 41) and keeps the committed tiles.
    """
    from sgma_batch import storage

    with storage.write_errors(storage.location(path)):
        _write_tile(path, layout, region, arrays)


def _write_tile(path: str | Path, layout: StoreLayout, region: tuple[slice, slice], arrays: TileArrays) -> None:
    import zarr

    _check_region(region, layout)
    ys, xs = region
    shape = (ys.stop - ys.start, xs.stop - xs.start)
    assert arrays.class_.shape == shape, (arrays.class_.shape, shape)

    from sgma_batch import storage

    store = storage.zarr_store(storage.location(path))  # a path, or zarr's ObjectStore for s3:// gs:// az://

    def arr(name: str):  # open arrays directly: listing the group would visit manifest/ as well
        return zarr.open_array(store, path=name, mode="r+", zarr_format=layout.zarr_format)

    cls = arrays.class_.astype(np.uint8, copy=False)
    nodata = cls == CLASS_NODATA  # (H, W): every variable is nodata there, whatever the caller passed
    arr("class")[ys, xs] = cls
    conf = np.maximum(arrays.confidence.astype(np.uint8, copy=False), 1)  # 0 is reserved for nodata
    arr("confidence")[ys, xs] = np.where(nodata, NODATA["confidence"], conf).astype(np.uint8)
    arr("modality_mask")[ys, xs] = np.where(nodata, NODATA["modality_mask"], arrays.modality_mask).astype(np.uint8)
    arr("robustness")[:, ys, xs] = encode_robustness(arrays.robustness, nodata)
    if arrays.acquired is not None:
        try:
            acquired = arr("acquired")
        except (FileNotFoundError, KeyError, LookupError):  # a store made before the variable existed
            acquired = None
        if acquired is not None:
            acquired[:, ys, xs] = np.where(nodata, NODATA["acquired"], arrays.acquired).astype(np.uint16)
    if layout.write_probability:
        assert arrays.probability is not None
        arr("probability")[:, ys, xs] = np.where(nodata, np.float16(np.nan), arrays.probability).astype(np.float16)


def encode_robustness(weights_x255: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """(M, H, W) uint8 weights x 255 (as :class:`TileArrays` carries them) to the stored x 254, 255 at ``nodata``.

    Integer rounding, so the same input always gives the same bytes (determinism tests compare stores).
    """
    r = (weights_x255.astype(np.uint16) * ROBUSTNESS_SCALE + 127) // 255  # round half up; 255 -> 254
    return np.where(nodata, NODATA["robustness"], r).astype(np.uint8)


#: Mode of the files written here (manifest records, the STAC item): readable by all, like the Zarr files.
FILE_MODE = 0o644


def _atomic_write(target: Path | str, text: str) -> None:
    """Write ``text`` to ``target`` atomically (a temporary file, fsync, rename), mode :data:`FILE_MODE`;
    on object storage (``target`` a URL) one PUT, which is atomic there."""
    if not isinstance(target, Path):
        from sgma_batch import storage

        storage.write_bytes(storage.location(target), text.encode())
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_json(target: Path | str, obj: Mapping[str, Any]) -> None:
    _atomic_write(target, json.dumps(obj, sort_keys=True, default=str))


def commit_tile(path: str | Path, record: TileRecord) -> None:
    """Commit a tile: write its manifest record atomically, after its data (on object storage: one PUT)."""
    from sgma_batch.verify import with_chunk_digests

    record = with_chunk_digests(path, record)  # the written chunks' sha256: a rerun reuses them only if they match
    from sgma_batch import storage

    directory = storage.join(storage.location(path), MANIFEST_DIR)
    if isinstance(directory, Path):
        directory.mkdir(exist_ok=True)
    with storage.write_errors(storage.location(path)):
        _atomic_write(storage.join(directory, f"{record.tile_id}.json"), record.to_json())


def read_manifest(path: str | Path) -> dict[str, TileRecord]:
    """All committed tile records of a store, by tile id.

    Raises:
        StoreCorruptError: a record is not JSON or not a tile record.
        StoreIncompatibleError: a record was written by a newer sgma-batch (a newer schema version).
    """
    from sgma_batch import storage

    directory = storage.join(storage.location(path), MANIFEST_DIR)
    out: dict[str, TileRecord] = {}
    files = [storage.join(directory, name) for name in storage.list_names(directory, suffix=".json")]
    for f, raw in zip(files, storage.read_many(files)):  # on object storage: listed once, fetched in parallel
        rec = TileRecord.from_json(raw, source=f"manifest record {f}")
        out[rec.tile_id] = rec
    return out


def manifest_summary(path: str | Path) -> dict[str, int]:
    """Counts of committed tiles per status."""
    counts: dict[str, int] = {}
    for rec in read_manifest(path).values():
        counts[rec.status] = counts.get(rec.status, 0) + 1
    return counts


def tile_records_done(manifest: Mapping[str, TileRecord], tasks: Sequence[Any]) -> set[str]:
    """Ids of tasks whose committed record is done with a matching content hash (reusable)."""
    return {
        t.tile_id for t in tasks
        if (rec := manifest.get(t.tile_id)) is not None and rec.done and rec.content_hash == t.content_hash
    }
