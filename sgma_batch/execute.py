"""Execute a tile plan: read -> infer (model loaded once) -> write + commit, one chunk per tile.

Three executors share every per-tile function (:func:`read_tile`, :class:`TileRunner`), so they produce
bitwise-identical stores:

* :func:`execute_local` (the default on one machine): this process, reader threads feeding forward
  threads that share one model; no Ray to start, one copy of the model and of the read stack.
* :func:`sgma_batch.execute_ray.execute_ray` (with a cluster): pools of Ray reader and inference actors.
* :func:`execute_sequential`: one tile after another in this process, for tests and debugging.

A tile's halo box goes through the model once; the strips of it that lie in the neighbours' cores are
handed to their writers and cross-faded (see :class:`TileRunner`, :class:`Assembler`).
Tiles are ordered by modality signature, then in Z order, so that consecutive tiles share their inputs'
modalities (what a batch must share) and overlap the same source blocks (what a reader's cache holds).
The write stays with the forward, on purpose: a tile's write is one chunk per variable, and the worker
is the chunk's only writer; measured (``timing`` in the manifest records) it is a few per cent of the
forward on a CPU.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sgma_batch.grid import TileTask
from sgma_batch.store import (
    CLASS_NODATA,
    StoreLayout,
    TileArrays,
    TileRecord,
    TileTiming,
    commit_tile,
    write_tile,
)

if TYPE_CHECKING:
    from sgma_batch.blend import Part  # imports torch: not at import time (read workers never load it)

log = logging.getLogger(__name__)

__all__ = [
    "Assembler", "FailedPart", "Forwarded", "InferenceConfig", "Normalisation", "TileInputs", "TileRunner", "TileWriter",
    "batch_key",
    "execute_local", "execute_sequential", "local_workers", "neighbours", "read_tile", "tile_order",
]


@dataclass(frozen=True)
class InferenceConfig:
    """Everything a worker needs besides the tile: small, picklable."""

    checkpoint: str
    store: str
    layout: StoreLayout
    aoi_wkt: str  # the AOI polygon in the grid CRS (pixels outside are nodata)
    window_px: int | None = None  # None: a tile's halo box in one forward; else sliding windows of this size
    overlap_px: int = 64  # of sliding windows
    max_batch: int = 16  # sliding windows per forward
    threads: int = 1  # torch intra-op threads per worker
    read_retries: int = 3
    read_backoff_s: float = 0.5


@dataclass(frozen=True)
class TileInputs:
    """A tile after reading: normalised inputs and masks per present modality, and what went wrong."""

    task: TileTask
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)  # {m: (C, H, W) float32 normalised}
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)  # {m: (H, W) bool}
    scenes_used: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)  # "modality/scene" -> message
    read_s: float = 0.0
    acquired: Mapping[str, np.ndarray] = field(default_factory=dict)  # {m: (H, W) uint16 days since 1970, 0 none}


@dataclass(frozen=True)
class Normalisation:
    """A model card's per-band statistics as plain numbers: what a read task needs from the checkpoint.

    Read workers get this instead of the card, so they never import the model package (and torch).
    """

    stats: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]]  # modality -> (means, stds) in band order

    @classmethod
    def from_card(cls, card: Any) -> Normalisation:
        return cls({m.name: (tuple(b.mean for b in m.bands), tuple(b.std for b in m.bands))
                    for m in card.modalities})

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(self.stats)

    def normalise(self, modality: str, array: np.ndarray) -> np.ndarray:
        """(x - mean) / std per band of a (C, H, W) array, float32 (as ``ModelCard.normalise``)."""
        means, stds = self.stats[modality]
        mean = np.asarray(means, np.float32).reshape(-1, 1, 1)
        std = np.asarray(stds, np.float32).reshape(-1, 1, 1)
        return ((np.asarray(array, np.float32) - mean) / std).astype(np.float32)


def read_tile(task: TileTask, card: Any, cfg: InferenceConfig) -> TileInputs:
    """Read every modality of the model for a tile's halo, harmonised and normalised.

    ``card`` is the model card or its :class:`Normalisation` (anything with ``modality_names`` and
    ``normalise``).
    """
    from sgma_batch.chips import constant_modality
    from sgma_batch.read import acquisition_days, read_modality_report
    from sgma_batch.search import TIMELESS_MODALITIES
    from sgma_batch.sensors import get_profile

    t0 = time.perf_counter()
    acquired: dict[str, np.ndarray] = {}
    inputs: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    used: dict[str, tuple[str, ...]] = {}
    errors: dict[str, str] = {}
    for m in card.modality_names:
        scenes = tuple(task.scenes.get(m, ()))
        if not scenes:
            continue
        try:
            res = read_modality_report(scenes, task.halo, get_profile(scenes[0].sensor),
                                       retries=cfg.read_retries, backoff_s=cfg.read_backoff_s)
        except Exception as exc:  # noqa: BLE001 - degrade: this modality is absent, recorded below
            errors[m] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("tile %s: modality %s absent: %s", task.tile_id, m, errors[m])
            continue
        errors.update({f"{m}/{sid}": msg for sid, msg in res.errors.items()})
        if not res.valid.any():
            continue
        if constant_modality(res.data, res.valid):  # zero-filled / fill value: absent, not data (issue 20)
            log.warning("tile %s: modality %s is constant over its valid pixels: treated as absent", task.tile_id, m)
            continue
        x = card.normalise(m, res.data)  # (C, H, W)
        x[:, ~res.valid] = 0.0
        inputs[m], masks[m], used[m] = x, res.valid, res.scenes_used
        if m not in TIMELESS_MODALITIES:  # the date each pixel's scene was acquired (one order per run)
            acquired[m] = acquisition_days(res, scenes)
    return TileInputs(task, inputs, masks, used, errors, time.perf_counter() - t0, acquired)


def batch_key(tile: TileInputs) -> tuple[tuple[str, ...], tuple[int, int]]:
    """What tiles must share to be forwarded in one batch: the modalities present, and the halo shape."""
    return tuple(sorted(tile.inputs)), tuple(tile.task.halo.shape.yx)


class TileRunner:
    """Loads the model once; turns :class:`TileInputs` into parts for the writers (:meth:`forward`).

    With ``cfg.window_px`` None (the default) a tile's halo box is forwarded once, as one window, and its
    cross-faded prediction is cut into parts by the tile each piece lies in (:func:`sgma_batch.blend.
    split_window`): model work per output pixel is (1 + 2 halo / tile)^2 (1.27 at the 512 / 32 px
    defaults), and tiles of one :func:`batch_key` go through the model together. With a ``window_px``
    smaller than the halo tile, the tile is predicted window by window on the grid-wide lattice and blended
    inside the tile (:func:`sgma_batch.blend.blend_windows`); only its core is kept.
    """

    def __init__(self, cfg: InferenceConfig, device: str | None = None, loaded: tuple[Any, Any] | None = None) -> None:
        """``loaded``: (model, card) of ``cfg.checkpoint`` already loaded on the CPU (else it is loaded here)."""
        import torch

        from sgma_model import load_checkpoint

        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.card = loaded or load_checkpoint(cfg.checkpoint, map_location="cpu")
        self.model.eval().to(self.device)
        self.writer = TileWriter(cfg)

    def _predict(self, xb: Mapping[str, Any], mb: Mapping[str, Any]):
        import torch

        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), amp:
            out = self.model(dict(xb), masks=dict(mb))
        probs = torch.softmax(out.logits.float(), dim=1)  # (B, K, h, w)
        return probs, out.robustness.float(), out.valid  # (B, M, h, w), (B, h, w)

    def auto_batch(self, tasks: Sequence[TileTask]) -> int:
        """Tiles per forward: 1 on a CPU (one thread per forward: no faster per pixel in a batch, measured
        in docs/performance.md); on a GPU as many full tiles as half its free memory holds, from one probe."""
        import torch

        if self.device.type != "cuda" or self.cfg.window_px is not None or not tasks:
            return 1
        h, w = max(t.halo.shape.yx for t in tasks)
        xs = {m: torch.zeros((1, n, h, w), device=self.device) for m, n in self.card.band_counts().items()}
        ms = {m: torch.ones((1, h, w), dtype=torch.bool, device=self.device) for m in xs}
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self._predict(xs, ms)
        per_tile = max(torch.cuda.max_memory_allocated(self.device) - base, 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(min(max(free // 2 // per_tile, 1), 64))

    def _to_device(self, arrays: Sequence[np.ndarray]) -> Any:
        """Stack host arrays into one tensor on the device (pinned and non-blocking on a GPU)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x

    def forward(self, tiles: Sequence[TileInputs]) -> list[tuple[Forwarded, dict[tuple[int, int], Part]]]:
        """Forward tiles and cut each window's prediction into parts by the tile they land in.

        Halo-tile mode (``window_px`` None): the tiles must share one :func:`batch_key` and go through the
        model as one batch. Each sample of a batch is independent of the others (per-pixel LayerNorm, no
        BatchNorm), and with one intra-op thread on a CPU its result is bitwise the same in any batch
        (tested). With ``window_px``: each tile's windows are blended inside it and only its core is kept.
        """
        from sgma_batch.blend import Part, blend_windows, split_window

        if not tiles:
            return []
        t0 = time.perf_counter()
        out = []
        if self.cfg.window_px is not None:
            for tile in tiles:
                task = tile.task
                xs = {m: self._to_device([x])[0] for m, x in tile.inputs.items()}
                ms = {m: self._to_device([v])[0] for m, v in tile.masks.items()}
                res = blend_windows(self._predict, xs, ms, window_px=self.cfg.window_px,
                                    overlap_px=self.cfg.overlap_px, crop=task.crop, max_batch=self.cfg.max_batch,
                                    origin=task.origin)
                values = torch_cat_np(res.probability, res.robustness)
                h, w = task.core.shape.yx
                core = Part(task.index, *task.region, values, np.ones((h, w), np.float32), res.valid.cpu().numpy())
                out.append({task.index: core})
        else:
            keys = {batch_key(t) for t in tiles}
            if len(keys) != 1:
                raise ValueError(f"one batch needs one modality set and halo shape, got {sorted(keys)}")
            names = sorted(tiles[0].inputs)
            xb = {m: self._to_device([t.inputs[m] for t in tiles]) for m in names}  # {m: (B, C, H, W)}
            mb = {m: self._to_device([t.masks[m] for t in tiles]) for m in names}  # {m: (B, H, W)}
            probs, rob, valid = self._predict(xb, mb)
            for i, tile in enumerate(tiles):
                task = tile.task
                values = torch_cat_np(probs[i], rob[i])  # (K + M, H, W)
                out.append(split_window(task.index, task.halo_region or _padded(task), task.region, values,
                                        valid[i].cpu().numpy()))
        share = (time.perf_counter() - t0) / len(tiles)
        return [(self.forwarded(tile, share), parts) for tile, parts in zip(tiles, out, strict=True)]

    def forwarded(self, tile: TileInputs, forward_s: float = 0.0, error: str | None = None) -> Forwarded:
        """What a tile's writer needs of the tile besides the parts: its record fields and modality bits."""
        rows, cols = tile.task.crop
        bits = np.zeros(tile.task.core.shape.yx, np.uint8)
        for i, m in enumerate(self.cfg.layout.modalities):
            if m in tile.masks:
                bits |= tile.masks[m][rows, cols].astype(np.uint8) << i
        acquired = np.zeros((len(self.cfg.layout.modalities), *bits.shape), np.uint16)
        for i, m in enumerate(self.cfg.layout.modalities):
            if m in tile.acquired:
                acquired[i] = tile.acquired[m][rows, cols]
        return Forwarded(tile.task, {m: tuple(v) for m, v in tile.scenes_used.items()}, dict(tile.errors),
                         tuple(sorted(tile.inputs)), bits, tile.read_s, forward_s, error, acquired)

    def forward_or_fail(self, tiles: Sequence[TileInputs]) -> list[tuple[Forwarded, dict[tuple[int, int], Any]]]:
        """:meth:`forward` of the tiles with inputs (the others have no parts); a batch that fails is run
        tile by tile, and a tile whose forward fails comes back with its error and a :class:`FailedPart` for
        itself and each neighbour, so their writers know their border was blended without it."""
        todo = [t for t in tiles if t.inputs]
        done: dict[int, tuple[Forwarded, dict[tuple[int, int], Any]]] = {
            id(t): (self.forwarded(t), {}) for t in tiles if not t.inputs}
        try:
            done.update(zip((id(t) for t in todo), self.forward(todo), strict=True))
        except Exception as exc:  # isolate the tile that fails, record it as failed
            if len(todo) > 1:
                log.warning("a batch of %d tiles failed (%s); running them one by one", len(todo), exc)
                return [r for t in tiles for r in self.forward_or_fail([t])]
            task = todo[0].task
            log.exception("tile %s failed", task.tile_id)
            failed = FailedPart(task.index, task.tile_id)
            done[id(todo[0])] = (self.forwarded(todo[0], error=f"{type(exc).__name__}: {exc}"),
                                 {i: failed for i in (task.index, *neighbours(task.index))})
        return [done[id(t)] for t in tiles]

    def write(self, fwd: Forwarded, parts: Sequence[Any]) -> TileRecord:
        """See :meth:`TileWriter.write`."""
        return self.writer.write(fwd, parts)

    def infer(self, tile: TileInputs) -> TileArrays:
        """One tile alone (no neighbours' parts: its window cropped to the core); its output arrays."""
        from sgma_batch.blend import combine

        fwd, parts = self.forward_or_fail([tile])[0]
        if fwd.error is not None:
            raise RuntimeError(fwd.error)
        own = [p for target, p in parts.items() if target == tile.task.index and not isinstance(p, FailedPart)]
        values, valid = combine(tile.task.region, own, len(self.cfg.layout.classes) + len(self.cfg.layout.modalities))
        return self.writer.arrays(fwd, values, valid)


class TileWriter:
    """The store side of a tile: blends the parts over its core, applies the AOI and validity, writes the
    chunk and commits the manifest record. No model: the Ray executor writes in the driver."""

    def __init__(self, cfg: InferenceConfig) -> None:
        from rasterio.features import geometry_mask
        from shapely import wkt

        self.cfg = cfg
        self._aoi = wkt.loads(cfg.aoi_wkt)
        self._geometry_mask = geometry_mask

    def arrays(self, fwd: Forwarded, values: np.ndarray, valid: np.ndarray) -> TileArrays:
        """A core's output arrays from its blended (K + M, h, w) values (AOI and validity applied)."""
        from sgma_batch.blend import to_uint8

        task = fwd.task
        h, w = task.core.shape.yx
        k = len(self.cfg.layout.classes)
        if not fwd.modalities:
            return _nodata_arrays(h, w, len(self.cfg.layout.modalities), k, self.cfg.layout.write_probability)
        in_aoi = self._geometry_mask([self._aoi], out_shape=(h, w), transform=task.core.transform, invert=True)
        mask_bits = fwd.modality_bits.copy()
        valid = valid & in_aoi & (mask_bits > 0)
        prob = values[:k]  # (K, h, w)
        cls = prob.argmax(0).astype(np.uint8)
        conf = to_uint8(prob.max(0))
        rob = to_uint8(values[k:])  # (M, h, w)
        cls[~valid] = CLASS_NODATA
        conf[~valid] = 0
        mask_bits[~valid] = 0
        rob[:, ~valid] = 0
        p16 = None
        if self.cfg.layout.write_probability:
            p16 = prob.astype(np.float16)
            p16[:, ~valid] = np.nan
        acquired = None
        if fwd.acquired is not None:
            acquired = fwd.acquired.copy()
            acquired[:, ~valid] = 0
        return TileArrays(cls, conf, mask_bits, rob, p16, acquired=acquired)

    def write(self, fwd: Forwarded, parts: Sequence[Any]) -> TileRecord:
        """Blend the parts over a tile's core, write its chunk and commit its manifest record; the record.

        A :class:`FailedPart` among ``parts``: that neighbour's forward failed, so its strip of this core was
        blended without it; the tile is recorded as degraded and recomputed by the next run.
        """
        from sgma_batch.blend import combine

        task = fwd.task
        t0 = time.perf_counter()
        errors = dict(fwd.errors)
        missing = [p.tile_id for p in parts if isinstance(p, FailedPart) and p.source != task.index]
        parts = [p for p in parts if not isinstance(p, FailedPart)]
        if missing:
            errors["neighbours"] = f"blended without the failed tiles {', '.join(sorted(missing))}"
        timing, worker = None, None
        try:
            if fwd.error is not None:
                raise RuntimeError(fwd.error)
            values, valid = combine(task.region, parts, len(self.cfg.layout.classes) + len(self.cfg.layout.modalities))
            arrays = self.arrays(fwd, values, valid)
            t1 = time.perf_counter()
            write_tile(self.cfg.store, self.cfg.layout, task.region, arrays)
            t2 = time.perf_counter()
            if errors:  # some input failed to read: recorded, and retried by the next run
                status = "degraded"
            elif not fwd.modalities or not (arrays.class_ != CLASS_NODATA).any():
                status = "nodata"
            else:
                status = "computed"
            timing = TileTiming(round(fwd.read_s, 4), round(fwd.forward_s + t1 - t0, 4), round(t2 - t1, 4))
            worker = f"{socket.gethostname()}:{os.getpid()}"  # provenance: which process wrote it
        except Exception as exc:
            if fwd.error is None:
                log.exception("tile %s failed", task.tile_id)
            status = "failed"
            errors["tile"] = f"{type(exc).__name__}: {exc}"
        record = TileRecord.for_task(task, status, scenes_used=fwd.scenes_used, modalities=fwd.modalities,
                                     errors=errors, timing=timing, worker=worker)
        commit_tile(self.cfg.store, record)  # after the data: the commit point
        return record


def torch_cat_np(*tensors: Any) -> np.ndarray:
    """Concatenate (C_i, H, W) tensors along C into one float32 numpy array on the host."""
    import torch

    return torch.cat([t.float() for t in tensors]).cpu().numpy()


def _padded(task: TileTask) -> tuple[slice, slice]:
    """The halo rows and cols of a task planned without ``halo_region`` (the core padded evenly)."""
    y0, x0 = task.origin
    return slice(y0, y0 + task.halo.shape.y), slice(x0, x0 + task.halo.shape.x)


@dataclass(frozen=True)
class FailedPart:
    """In place of a window's part: its tile's forward failed (``tile_id``)."""

    source: tuple[int, int]
    tile_id: str


@dataclass(frozen=True)
class Forwarded:
    """A tile after its forward, without its prediction (that travels as parts): what its writer needs."""

    task: TileTask
    scenes_used: Mapping[str, tuple[str, ...]]
    errors: Mapping[str, str]
    modalities: tuple[str, ...]  # the modalities present (read), sorted
    modality_bits: np.ndarray  # (h, w) uint8 over the core: bit m set where modality m is valid
    read_s: float = 0.0
    forward_s: float = 0.0
    error: str | None = None  # the forward failed: the tile is recorded as failed
    acquired: np.ndarray | None = None  # (M, h, w) uint16 over the core: acquisition day per modality, 0 none


def neighbours(index: tuple[int, int]) -> list[tuple[int, int]]:
    """The 8 tile indices around ``index`` (some may lie outside the grid or the plan)."""
    iy, ix = index
    return [(iy + dy, ix + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


class Assembler:
    """Holds forwarded tiles' parts until every window over a tile's core has come; then hands it out.

    ``todo`` are the tiles to write; ``context`` are tiles not written (already committed) whose windows
    still overlap a tile to write: they are forwarded for their parts only. Generic over what a part is
    (arrays in one process, object refs on Ray): :meth:`add` takes ``{target index: part}`` per source.
    """

    def __init__(self, todo: Sequence[TileTask], context: Sequence[TileTask] = ()) -> None:
        self.todo = {t.index: t for t in todo}
        forwarded = set(self.todo) | {t.index for t in context}
        self.waiting = {i: {i, *(n for n in neighbours(i) if n in forwarded)} for i in self.todo}
        self.parts: dict[tuple[int, int], list[tuple[tuple[int, int], Any]]] = {i: [] for i in self.todo}
        self.own: dict[tuple[int, int], Any] = {}

    def add(self, index: tuple[int, int], own: Any, parts: Mapping[tuple[int, int], Any]) -> list[tuple[Any, list[Any]]]:
        """Record tile ``index``'s forward (``own``: what its writer needs; ``parts`` by target tile).

        Returns the tiles now complete: (own, their parts in source order).
        """
        if index in self.todo:
            self.own[index] = own
        for target, part in parts.items():
            if target in self.parts:
                self.parts[target].append((index, part))
        ready = []
        for t in (index, *neighbours(index)):
            left = self.waiting.get(t)
            if left is None:
                continue
            left.discard(index)
            if not left:
                del self.waiting[t]
                got = sorted(self.parts.pop(t), key=lambda sp: sp[0])
                ready.append((self.own.pop(t), [p for _, p in got]))
        return ready

    @property
    def pending(self) -> int:
        """Tiles forwarded or waiting, whose parts are held."""
        return len(self.own)


def _nodata_arrays(h: int, w: int, m: int, k: int, probability: bool) -> TileArrays:
    return TileArrays(
        np.full((h, w), CLASS_NODATA, np.uint8), np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8),
        np.zeros((m, h, w), np.uint8), np.full((k, h, w), np.nan, np.float16) if probability else None,
    )


def tile_order(tasks: Iterable[TileTask], seed: int | None = None) -> list[TileTask]:
    """Tiles in row-major order of their grid index.

    A tile is written once the windows of its 8 neighbours have been forwarded (their parts hold its
    border strips), so the parts held at any time are about one row of tiles: row-major keeps that
    frontier at its minimum (a Z order holds up to a quadrant's edge). Consecutive tiles are neighbours
    on the ground, so a reader's GDAL block cache still serves a source block to the tiles around it.
    With ``seed``, a seeded shuffle instead: results must not depend on the order (determinism tests).
    """
    ordered = sorted(tasks, key=lambda t: t.index)
    if seed is not None:
        import random

        random.Random(seed).shuffle(ordered)
    return ordered


def execute_sequential(
    tasks: Sequence[TileTask],
    cfg: InferenceConfig,
    *,
    context: Sequence[TileTask] = (),
    on_record: Callable[[TileRecord], None] | None = None,
    order_seed: int | None = None,
    loaded: tuple[Any, Any] | None = None,
) -> list[TileRecord]:
    """Run every tile in this process, one after another (tests, debugging); the same per-tile code as the
    other executors. ``context``: committed tiles next to ``tasks``, forwarded only for their parts;
    ``loaded``: the checkpoint's (model, card) if already loaded."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        runner = TileRunner(cfg, loaded=loaded)
        assembler = Assembler(tasks, context)
        records = []
        for task in tile_order([*tasks, *context], order_seed):
            ((fwd, parts),) = runner.forward_or_fail([read_tile(task, runner.card, cfg)])
            for own, got in assembler.add(task.index, fwd, parts):
                rec = runner.write(own, got)
                records.append(rec)
                if on_record is not None:
                    on_record(rec)
        return records
    finally:
        torch.set_num_threads(prev)


# -- in-process, threaded ---------------------------------------------------------------------------------
def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for this process (elsewhere: nothing).

    glibc gives threads that contend for malloc arenas of their own (up to 8 per core), and the tile-sized
    buffers freed in them stay mapped: over a 4096 km2 run on 2 cores the in-process executor's resident
    memory crept from 1.38 to 1.85 GiB with the parts held constant; with 2 arenas it peaked at 1.62 GiB,
    and ran no slower (docs/performance.md, run 10).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        log.debug("malloc arenas not limited: not glibc")


def local_workers(device: str, threads: int) -> int:
    """Forward threads of the local executor: one per ``threads`` CPUs usable by this process, one on a GPU."""
    if device == "cuda":
        return 1
    return max(1, len(os.sched_getaffinity(0)) // max(threads, 1))


def execute_local(
    tasks: Sequence[TileTask],
    cfg: InferenceConfig,
    *,
    workers: int | None = None,
    readers: int | None = None,
    batch_size: int | None = None,
    on_record: Callable[[TileRecord], None] | None = None,
    order_seed: int | None = None,
    device: str | None = None,
    context: Sequence[TileTask] = (),
    before_write: Callable[[], Any] | None = None,
    loaded: tuple[Any, Any] | None = None,
) -> list[TileRecord]:
    """Run the plan in this process: reader threads feed forward threads that share one model.

    No Ray: nothing to start, one copy of the model and of the read stack, no object store. GDAL and torch
    release the GIL, so ``workers`` forward threads of ``cfg.threads`` intra-op threads each (default:
    every CPU; one on a GPU) run the model in parallel while ``readers`` threads read ahead (default: one
    per forward thread on a CPU, where a tile's read costs about half its forward, so that one slow read
    does not leave a forward thread waiting; more on a GPU, where reads are what the model waits for). At most ``workers x batch + readers`` tiles are read ahead, so memory
    stays O(tile). Each worker forwards up to ``batch_size`` ready tiles of one :func:`batch_key` at once
    (default 1 on a CPU, sized to the GPU's memory on a GPU); the thread that completes a tile's last
    window writes and commits it. ``context``: committed tiles next to ``tasks``, forwarded for their parts.
    ``before_write`` is called before each write (it waits for the store, being created meanwhile);
    ``loaded``: the checkpoint's (model, card) if already loaded.

    A tile's result does not depend on the thread, the batch or the order (one intra-op thread per worker
    on a CPU: bitwise identical to :func:`execute_sequential` and the Ray executor).
    """
    import queue
    import threading
    from concurrent.futures import Future, ThreadPoolExecutor

    import torch

    if not tasks:
        return []
    limit_malloc_arenas()
    runner = TileRunner(cfg, device, loaded)
    dev = runner.device.type
    n_workers = workers or local_workers(dev, cfg.threads)
    n_readers = readers or (max(1, len(os.sched_getaffinity(0)) - 1) if dev == "cuda" else n_workers)
    batch = batch_size or runner.auto_batch(tasks)
    log.info("local executor: %d forward threads x %d torch threads, %d readers, batch %d, on %s",
             n_workers, cfg.threads, n_readers, batch, runner.device)
    ordered = iter(tile_order([*tasks, *context], order_seed))
    assembler, assembling = Assembler(tasks, context), threading.Lock()
    ready: deque[Future] = deque()  # finished reads, oldest first
    cond = threading.Condition()
    stop = threading.Event()
    results: queue.Queue = queue.Queue()

    def on_read(fut: Future) -> None:
        with cond:
            ready.append(fut)
            cond.notify()

    def take() -> list[TileInputs] | None:
        """The oldest ready tile and up to ``batch - 1`` more of its key; None once stopped."""
        with cond:
            while not ready and not stop.is_set():
                cond.wait(0.5)
            if stop.is_set():
                return None
            first = ready.popleft().result()
            key, group = batch_key(first), [first]
            for fut in list(ready):
                if len(group) == batch:
                    break
                if batch_key(fut.result()) == key:
                    ready.remove(fut)
                    group.append(fut.result())
            return group

    def work() -> None:
        torch.set_num_threads(cfg.threads)  # per thread: a new thread starts with torch's default
        try:
            while (group := take()) is not None:
                for fwd, parts in runner.forward_or_fail(group):
                    with assembling:
                        complete = assembler.add(fwd.task.index, fwd, parts)
                        forwarded[0] += 1
                    for own, got in complete:
                        if before_write is not None:
                            before_write()
                        results.put(runner.write(own, got))
                results.put(None)  # a forward done: room to read ahead
        except BaseException as exc:  # noqa: BLE001 - a reader's or the runner's own bug: the run ends with it
            results.put(exc)

    threads = [threading.Thread(target=work, name=f"sgma-forward-{i}", daemon=True) for i in range(n_workers)]
    pool = ThreadPoolExecutor(n_readers, thread_name_prefix="sgma-read")
    look_ahead = n_readers + 2 * n_workers * batch  # tiles being read, ready, or in a forward
    records: list[TileRecord] = []
    submitted, forwarded = 0, [0]

    def refill() -> None:
        nonlocal submitted
        while submitted - forwarded[0] < look_ahead:
            task = next(ordered, None)
            if task is None:
                return
            pool.submit(read_tile, task, runner.card, cfg).add_done_callback(on_read)
            submitted += 1

    prev = torch.get_num_threads()
    try:
        refill()
        for t in threads:
            t.start()
        while len(records) < len(tasks):
            try:
                item = results.get(timeout=0.5)  # a timeout, so SIGTERM's handler runs here promptly
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            if item is None:
                refill()
                continue
            records.append(item)
            if on_record is not None:
                on_record(item)
            refill()
        return records
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        pool.shutdown(wait=False, cancel_futures=True)
        for t in threads:  # a forward in flight finishes its tile (data, then record) or is abandoned
            t.join(timeout=60 if len(records) == len(tasks) else 1)
        torch.set_num_threads(prev)
