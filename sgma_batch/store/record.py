"""The manifest record of one tile: a small frozen value, written as JSON with a schema version.

``manifest/<tile_id>.json`` holds one :class:`TileRecord`; its presence is the tile's commit point. This
module is the only place that knows the JSON keys: every writer builds a :class:`TileRecord` and every
reader gets one from :meth:`TileRecord.from_json`.

Schema versions: 1 is the record as written since the manifest exists; records written before the
``schema_version`` key was added have the same keys and read as version 1. A record of a newer version
(a newer sgma-batch wrote it) is refused with :class:`~sgma_batch.errors.StoreIncompatibleError`, never
half-read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

from sgma_batch.errors import StoreCorruptError, StoreIncompatibleError

if TYPE_CHECKING:
    from sgma_batch.grid import TileTask

#: The record schema this code writes, and the newest it reads.
SCHEMA_VERSION = 1

TileStatus = Literal["computed", "degraded", "failed", "nodata"]
STATUSES: tuple[TileStatus, ...] = get_args(TileStatus)
#: Statuses a rerun reuses (with a matching content hash); degraded and failed tiles are recomputed.
DONE_STATUSES: frozenset[TileStatus] = frozenset({"computed", "nodata"})

@dataclass(frozen=True, slots=True)
class TileTiming:
    """Seconds one tile spent reading its inputs, in the model (and blending), and writing its chunk."""

    read_s: float
    infer_s: float
    write_s: float


def _ids(by_modality: Mapping[str, Sequence[str]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({m: tuple(v) for m, v in sorted(by_modality.items())})


@dataclass(frozen=True, slots=True)
class TileRecord:
    """What the manifest holds about one committed tile.

    Attributes:
        region: the tile core's pixel rows and columns in the grid, ``((y0, y1), (x0, x1))``, end exclusive.
        scenes: the scene ids per modality the tile was planned with (they enter its content hash).
        scenes_used: the scene ids per modality actually read.
        modalities: the modalities present (read), sorted.
        errors: what went wrong, by input (``"s1/s1-a"``), ``"neighbours"`` or ``"tile"``; empty when nothing did.
        timing: None for a failed tile.
        worker: ``host:pid`` of the process that wrote the tile (None for a failed tile).
        chunks: sha256 of each chunk the tile wrote, by ``"<variable>/<chunk key>"`` (None: no chunk file,
            all fill value); checked before a rerun reuses the tile (:mod:`sgma_batch.verify`). Empty in
            records written before checksums existed.
    """

    tile_id: str
    status: TileStatus
    content_hash: str
    index: tuple[int, int]
    region: tuple[tuple[int, int], tuple[int, int]]
    scenes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    scenes_used: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    timing: TileTiming | None = None
    worker: str | None = None
    schema_version: int = SCHEMA_VERSION
    chunks: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"tile status {self.status!r} is not one of {', '.join(STATUSES)}")
        # plain values in, read-only values kept: a record is never changed after it is built
        if len(self.index) != 2 or len(self.region) != 2:
            raise ValueError(f"index {self.index!r} and region {self.region!r} must be (row, col) and (rows, cols)")
        object.__setattr__(self, "index", (int(self.index[0]), int(self.index[1])))
        object.__setattr__(self, "region", tuple((int(a), int(b)) for a, b in self.region))
        object.__setattr__(self, "scenes", _ids(self.scenes))
        object.__setattr__(self, "scenes_used", _ids(self.scenes_used))
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "errors", MappingProxyType(dict(self.errors)))
        if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in dict(self.chunks).items()):
            raise ValueError("chunks must map chunk keys to sha256 strings or null")
        object.__setattr__(self, "chunks", MappingProxyType(dict(self.chunks)))

    @classmethod
    def for_task(cls, task: TileTask, status: TileStatus, **fields: Any) -> TileRecord:
        """A record of ``task`` (its id, index, core region, content hash and planned scenes)."""
        ys, xs = task.region
        return cls(tile_id=task.tile_id, status=status, content_hash=task.content_hash, index=task.index,
                   region=((ys.start, ys.stop), (xs.start, xs.stop)), scenes=task.scene_ids(), **fields)

    @property
    def done(self) -> bool:
        """Reusable by a rerun whose plan gives this tile the same content hash."""
        return self.status in DONE_STATUSES

    @property
    def slices(self) -> tuple[slice, slice]:
        """The core region as (rows, cols) slices."""
        (y0, y1), (x0, x1) = self.region
        return slice(y0, y1), slice(x0, x1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (plain lists and dicts)."""
        return {
            "schema_version": self.schema_version,
            "tile_id": self.tile_id,
            "status": self.status,
            "content_hash": self.content_hash,
            "index": list(self.index),
            "region": [list(self.region[0]), list(self.region[1])],
            "scenes": {m: list(v) for m, v in self.scenes.items()},
            "scenes_used": {m: list(v) for m, v in self.scenes_used.items()},
            "modalities": list(self.modalities),
            "error": dict(self.errors) or None,
            "timing": None if self.timing is None else {"read_s": self.timing.read_s, "infer_s": self.timing.infer_s,
                                                        "write_s": self.timing.write_s},
            "worker": self.worker,
            **({"chunks": dict(self.chunks)} if self.chunks else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "manifest record") -> TileRecord:
        """A record from its JSON object; ``source`` names it in errors.

        Raises:
            StoreIncompatibleError: written with a newer schema than this code reads.
            StoreCorruptError: not a tile record (missing or malformed fields).
        """
        version = d.get("schema_version", 1) if isinstance(d, Mapping) else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise StoreIncompatibleError(
                f"{source} has schema version {version}; this sgma-batch reads up to {SCHEMA_VERSION}: "
                "upgrade sgma-batch to read this store"
            )
        try:
            if version != 1:
                raise ValueError(f"schema version {version!r}")
            timing = d.get("timing")
            return cls(
                tile_id=str(d["tile_id"]),
                status=d["status"],
                content_hash=str(d["content_hash"]),
                index=tuple(d["index"]),
                region=tuple(tuple(r) for r in d["region"]),
                scenes=d.get("scenes") or {},
                scenes_used=d.get("scenes_used") or {},
                modalities=tuple(d.get("modalities") or ()),
                errors=d.get("error") or {},
                timing=None if timing is None else TileTiming(float(timing["read_s"]), float(timing["infer_s"]),
                                                              float(timing["write_s"])),
                worker=d.get("worker"),
                schema_version=SCHEMA_VERSION,
                chunks=d.get("chunks") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorruptError(
                f"{source} is not a tile record ({type(exc).__name__}: {exc}); delete it to recompute that tile"
            ) from None

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "manifest record") -> TileRecord:
        """A record from its JSON text (see :meth:`from_dict`); text that is not JSON is a
        :class:`~sgma_batch.errors.StoreCorruptError`."""
        try:
            d = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's recursion limit
            raise StoreCorruptError(f"{source} is not JSON; delete it to recompute that tile") from None
        if not isinstance(d, dict):
            raise StoreCorruptError(f"{source} is not a tile record (a JSON {type(d).__name__}); "
                                    "delete it to recompute that tile")
        return cls.from_dict(d, source=source)
