"""Training chips: a Zarr chip store, spatially blocked splits, band statistics, and two sources.

Chip store layout (Zarr v3 group, ``format = "sgma-chips-v1"``)::

    <modality>       (N, C, H, W) float32, physical units (reflectance, dB, metres), 0 where invalid
    <modality>_mask  (N, H, W) bool, True = valid pixel (availability mask)
    label            (N, H, W) uint8 class ids, 255 = ignore
    split            (N,) uint8: 0 train, 1 val, 2 test
    origin           (N, 2) int64 (row, col) of the chip's top-left pixel in the source grid
    present          (N, M) bool: the chip holds modality m (a file with a valid pixel in the chip)
    source_index     (N,) int32: index into attrs source.chips (file sources), -1 otherwise
    attrs: format, modalities {name: [band, ...]}, classes [{name, color}], chip_px, block_px,
           guard_px, stats {modality: {mean, std, pixels}} over the train split only, counts,
           present_counts {modality: {split: chips}}, source {...}

Splits are spatially blocked: the source grid is cut into square blocks of ``block_px``; each block
belongs to one split; chips tile a block's interior, which is inset by ``guard_px / 2`` on every side, so
two chips of different blocks are always at least ``guard_px`` apart and no chip straddles a split.

Sources: :func:`export_chips` reads an archive with the same search / plan / read / harmonise path as
``run`` (``sgma_batch.read.read_modality``) plus labels: a local label raster, or the label asset of
an item of a STAC collection (:func:`find_label_item`, e.g. the synthetic archive's ``sgma-labels``);
:func:`sen1floods11_chip_store` reads the Sen1Floods11 folder layout (S1Hand, S2Hand, LabelHand), and
:func:`sgma_batch.chip_files.import_chip_files` any per-chip files (a directory, glob or ``{id}`` pattern
per modality and for labels). A chip may lack any modality; ``present`` (N, M) records which it holds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from sgma_batch.errors import ChipStoreError, EmptyDataError

log = logging.getLogger(__name__)

CHIP_FORMAT = "sgma-chips-v1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
IGNORE_INDEX = 255


# -- layout and splits -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChipWindow:
    """One chip: top-left (row, col) in the source grid, its block and the block's split code."""

    row: int
    col: int
    block: tuple[int, int]
    split: int


def assign_splits(
    n_blocks: int, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> np.ndarray:
    """Split code per block: a seeded permutation, with at least one val and test block when n >= 3."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ChipStoreError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    n_val = round(n_blocks * fractions[1])
    n_test = round(n_blocks * fractions[2])
    if n_blocks >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = n_blocks - n_val - n_test
    if n_train < 1:
        raise ChipStoreError(f"{n_blocks} blocks leave no training block; use smaller blocks or a larger AOI")
    codes = np.array([0] * n_train + [1] * n_val + [2] * n_test, dtype=np.uint8)
    return codes[np.random.default_rng(seed).permutation(n_blocks)]


def chip_windows(
    height: int,
    width: int,
    *,
    chip_px: int,
    block_px: int,
    guard_px: int,
    block_splits: np.ndarray | None = None,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> list[ChipWindow]:
    """Chips of ``chip_px`` tiling each block's interior (block inset by ``guard_px // 2`` per side).

    Args:
        block_splits: (n_block_rows, n_block_cols) split codes; default :func:`assign_splits`.
    """
    half = guard_px // 2
    inner = block_px - 2 * half
    per_block = inner // chip_px
    if per_block < 1:
        raise ChipStoreError(
            f"block_px {block_px} minus guard_px {guard_px} holds no chip of {chip_px} px; enlarge the block"
        )
    nby, nbx = height // block_px, width // block_px
    if nby * nbx == 0:
        raise ChipStoreError(f"a {height}x{width} grid holds no block of {block_px} px; use a smaller block_px")
    if block_splits is None:
        block_splits = assign_splits(nby * nbx, fractions, seed).reshape(nby, nbx)
    if block_splits.shape != (nby, nbx):
        raise ChipStoreError(f"block_splits has shape {block_splits.shape}, the grid has {(nby, nbx)} blocks")
    out = []
    for by in range(nby):
        for bx in range(nbx):
            for i in range(per_block):
                for j in range(per_block):
                    out.append(
                        ChipWindow(
                            row=by * block_px + half + i * chip_px,
                            col=bx * block_px + half + j * chip_px,
                            block=(by, bx),
                            split=int(block_splits[by, bx]),
                        )
                    )
    return out


# -- what counts as a present modality --------------------------------------------------------------
def constant_modality(data: np.ndarray, valid: np.ndarray, *, rtol: float = 1e-6) -> bool:
    """True when a modality's valid pixels carry no signal: every band is constant over them (e.g. a
    zero-filled optical scene marked valid, or a fill value without a nodata tag). Such a modality is
    treated as absent, by inference (``execute.read_tile``) and by the file importer: the model would
    otherwise take the constant for data (zero-filled S2 made a flood model collapse, issue 20).

    Args:
        data: (C, H, W) physical values; valid: (H, W) bool. Fewer than 2 valid pixels: False (nothing to judge).
    """
    data = np.asarray(data)
    # a real modality varies: one band varying among every 8th pixel settles it without copying the tile
    sub = data[:, ::8, ::8][:, valid[::8, ::8]]  # (C, n / 64)
    if sub.shape[1] >= 2 and np.all(np.isfinite(sub)) and not _constant_bands(sub, rtol):
        return False
    if int(valid.sum()) < 2:
        return False
    v = data[:, valid]  # (C, n)
    if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
        return False
    return _constant_bands(v, rtol)


def _constant_bands(v: np.ndarray, rtol: float) -> bool:
    """Every row of ``v`` (C, n) constant within ``rtol``."""
    lo, hi = v.min(axis=1).astype(np.float64), v.max(axis=1).astype(np.float64)
    return bool(np.all(hi - lo <= rtol * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))))


# -- statistics -------------------------------------------------------------------------------------
@dataclass
class BandStats:
    """Running per-band sums over valid pixels (float64), for mean / std over the train split."""

    n_bands: int
    count: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    total_sq: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.count = np.zeros(self.n_bands, np.float64)
        self.total = np.zeros(self.n_bands, np.float64)
        self.total_sq = np.zeros(self.n_bands, np.float64)

    def update(self, x: np.ndarray, valid: np.ndarray) -> None:
        """Add x (C, H, W) at pixels where valid (H, W) is True."""
        v = x[:, valid].astype(np.float64)  # (C, n)
        self.count += v.shape[1]
        self.total += v.sum(axis=1)
        self.total_sq += (v * v).sum(axis=1)

    @property
    def pixels(self) -> int:
        return int(self.count.min()) if self.n_bands else 0

    def result(self) -> tuple[list[float], list[float]]:
        if np.any(self.count == 0):
            raise EmptyDataError("no valid training pixel for some band; check the time window and the AOI")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean * mean, 0.0)
        std = np.maximum(np.sqrt(var), 1e-6)
        return [float(v) for v in mean], [float(v) for v in std]


# -- writing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChipSample:
    """One chip's arrays: per modality (C, H, W) float32 and (H, W) bool; label (H, W) uint8.

    ``present``: which modalities the chip really holds (default: those with any valid pixel);
    ``source``: index of the source file / block the chip was cut from (-1 = not recorded).
    """

    window: ChipWindow
    arrays: Mapping[str, np.ndarray]
    masks: Mapping[str, np.ndarray]
    label: np.ndarray
    present: Mapping[str, bool] | None = None
    source: int = -1


class ChipWriter:
    """Append chips to a new Zarr chip store, accumulating train-split statistics as it goes."""

    def __init__(
        self,
        path: str | Path,
        *,
        modalities: Mapping[str, Sequence[str]],
        classes: Sequence[Mapping[str, str]],
        chip_px: int,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        import zarr

        from sgma_batch import storage

        self.path = storage.location(path)  # a path or an s3:// gs:// az:// URL
        if storage.exists(self.path) and not overwrite:
            raise ChipStoreError(f"chip store {self.path} exists; pass --overwrite or choose another path")
        from sgma_batch.safety import check_output_target

        check_output_target(self.path, kind="chips", replace=True)  # --overwrite replaces only a chip store
        self.modalities = {m: tuple(b) for m, b in modalities.items()}
        self.group = zarr.open_group(storage.zarr_store(self.path), mode="w", zarr_format=3)
        c = chip_px
        for m, bands in self.modalities.items():
            self.group.create_array(m, shape=(0, len(bands), c, c), chunks=(1, len(bands), c, c), dtype="float32")
            self.group.create_array(f"{m}_mask", shape=(0, c, c), chunks=(1, c, c), dtype="bool")
        self.group.create_array("label", shape=(0, c, c), chunks=(1, c, c), dtype="uint8", fill_value=IGNORE_INDEX)
        self.group.create_array("split", shape=(0,), chunks=(4096,), dtype="uint8")
        self.group.create_array("origin", shape=(0, 2), chunks=(4096, 2), dtype="int64")
        # which modality each chip really holds (N, M), in the order of attrs["modalities"]
        self.group.create_array("present", shape=(0, len(self.modalities)), chunks=(4096, len(self.modalities)),
                                dtype="bool")
        self.group.create_array("source_index", shape=(0,), chunks=(4096,), dtype="int32")
        self.stats = {m: BandStats(len(b)) for m, b in self.modalities.items()}
        self.attrs = {
            "format": CHIP_FORMAT,
            "modalities": {m: list(b) for m, b in self.modalities.items()},
            "classes": [dict(c) for c in classes],
            "chip_px": chip_px,
            **(attrs or {}),
        }
        self.counts = [0, 0, 0]
        self.present_counts = {m: [0, 0, 0] for m in self.modalities}

    def append(self, chips: Sequence[ChipSample]) -> None:
        """Write a batch of chips (one block's worth keeps memory at O(block))."""
        if not chips:
            return
        for m in self.modalities:
            x = np.stack([np.where(c.masks[m][None], c.arrays[m], 0.0).astype(np.float32) for c in chips])
            self.group[m].append(x)
            self.group[f"{m}_mask"].append(np.stack([c.masks[m] for c in chips]).astype(bool))
        self.group["label"].append(np.stack([c.label for c in chips]).astype(np.uint8))
        self.group["split"].append(np.array([c.window.split for c in chips], np.uint8))
        self.group["origin"].append(np.array([[c.window.row, c.window.col] for c in chips], np.int64))
        present = np.array([[bool(c.present[m]) if c.present is not None else bool(c.masks[m].any())
                             for m in self.modalities] for c in chips], bool)
        self.group["present"].append(present)
        self.group["source_index"].append(np.array([c.source for c in chips], np.int32))
        for i, m in enumerate(self.modalities):
            for c, p in zip(chips, present[:, i]):
                self.present_counts[m][c.window.split] += int(p)
        for c in chips:
            self.counts[c.window.split] += 1
            if c.window.split == 0:
                for m in self.modalities:
                    self.stats[m].update(c.arrays[m], c.masks[m])

    def close(self) -> Path | str:
        """Write statistics and attributes; returns the store path."""
        if self.counts[0] == 0:
            raise ChipStoreError("the chip store has no training chip; use a larger AOI or smaller blocks")
        stats = {}
        for m, s in self.stats.items():
            if s.pixels == 0:
                # a modality no training chip holds: stored (chips may hold it in val/test), but no
                # statistics; `train` leaves it out of the model unless asked for it explicitly
                log.warning("no training chip holds %s: its statistics are undefined (mean 0, std 1)", m)
                stats[m] = {"mean": [0.0] * s.n_bands, "std": [1.0] * s.n_bands, "pixels": 0}
                continue
            mean, std = s.result()
            stats[m] = {"mean": mean, "std": std, "pixels": s.pixels}
        present = {m: dict(zip(SPLITS, v)) for m, v in self.present_counts.items()}
        self.group.attrs.update({**self.attrs, "stats": stats, "counts": dict(zip(SPLITS, self.counts)),
                                 "present_counts": present})
        log.info("chip store %s: %s", self.path, dict(zip(SPLITS, self.counts)))
        return self.path


# -- reading ----------------------------------------------------------------------------------------
class ChipStore:
    """Read side of a chip store (small enough to hold one split in memory for training)."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        from sgma_batch import storage

        self.path = storage.location(path)  # a path or an s3:// gs:// az:// URL
        try:
            self.group = zarr.open_group(storage.zarr_store(self.path, read_only=True), mode="r")
        except Exception as exc:  # noqa: BLE001 - zarr raises several kinds for "not a store"
            raise ChipStoreError(f"cannot open chip store {self.path} ({exc}); create one with `sgma-batch chips`") from None
        attrs = dict(self.group.attrs)
        if attrs.get("format") != CHIP_FORMAT:
            raise ChipStoreError(f"{self.path} is not a {CHIP_FORMAT} chip store; create one with `sgma-batch chips`")
        self.attrs = attrs
        self.modalities: dict[str, tuple[str, ...]] = {m: tuple(b) for m, b in attrs["modalities"].items()}
        self.classes: list[dict[str, str]] = list(attrs["classes"])
        self.stats: dict[str, dict[str, list[float]]] = attrs["stats"]
        self.split = np.asarray(self.group["split"][:])

    def present(self) -> np.ndarray:
        """(N, M) bool: which modality each chip holds (stores before ``present`` existed: any valid pixel)."""
        if "present" in self.group:
            return np.asarray(self.group["present"][:], bool)
        return np.stack([np.asarray(self.group[f"{m}_mask"][:]).reshape(len(self.split), -1).any(axis=1)
                         for m in self.modalities], axis=1)

    def train_pixels(self, modality: str) -> int | None:
        """Valid training pixels behind a modality's statistics (None: store written before this was recorded)."""
        px = self.stats.get(modality, {}).get("pixels")
        return None if px is None else int(px)

    def indices(self, split: str) -> np.ndarray:
        """Chip indices of ``split`` (train / val / test)."""
        if split not in SPLITS:
            raise ChipStoreError(f"unknown split {split!r}; use one of {SPLITS}")
        return np.flatnonzero(self.split == SPLITS.index(split))

    def load(self, split: str) -> dict[str, np.ndarray]:
        """All arrays of one split: ``<m>``, ``<m>_mask``, ``label``."""
        idx = self.indices(split)
        out: dict[str, np.ndarray] = {}
        names = [*self.modalities, *(f"{m}_mask" for m in self.modalities), "label"]
        for name in names:
            arr = self.group[name]
            out[name] = arr.get_orthogonal_selection((idx,)) if len(idx) else np.zeros((0, *arr.shape[1:]), arr.dtype)
        return out


def normalise(
    data: Mapping[str, np.ndarray],
    stats: Mapping[str, Mapping[str, Sequence[float]]],
    modalities: Sequence[str],
) -> dict[str, np.ndarray]:
    """(x - mean) / std per band for each modality (N, C, H, W); invalid pixels become 0."""
    out = {}
    for m in modalities:
        mean = np.asarray(stats[m]["mean"], np.float32)[None, :, None, None]
        std = np.asarray(stats[m]["std"], np.float32)[None, :, None, None]
        x = (data[m] - mean) / std
        out[m] = np.where(data[f"{m}_mask"][:, None], x, 0.0).astype(np.float32)
    return out


def card_stats(card: Any, store_modalities: Mapping[str, Sequence[str]]) -> dict[str, dict[str, list[float]]]:
    """Per-band mean/std from a model card, in the chip store's band order (checks the bands match)."""
    out = {}
    for info in card.modalities:
        name = info.name if hasattr(info, "name") else info["name"]
        bands = info.bands if hasattr(info, "bands") else info["bands"]
        get = (lambda b, k: getattr(b, k)) if bands and hasattr(bands[0], "name") else (lambda b, k: b[k])
        by_name = {get(b, "name"): (get(b, "mean"), get(b, "std")) for b in bands}
        if name not in store_modalities:
            continue
        missing = [b for b in store_modalities[name] if b not in by_name]
        if missing:
            raise ChipStoreError(f"the model's {name} bands lack {missing}; use chips made for this model")
        out[name] = {
            "mean": [by_name[b][0] for b in store_modalities[name]],
            "std": [by_name[b][1] for b in store_modalities[name]],
        }
    return out


def iter_batches(
    data: Mapping[str, np.ndarray],
    normalised: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    batch_size: int,
) -> Iterator[tuple[dict, dict, Any]]:
    """(inputs, masks, labels) torch batches in chip order, as :func:`sgma_batch.evaluate.evaluate_model` takes."""
    import torch

    n = len(data["label"])
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        inputs = {m: torch.from_numpy(normalised[m][sl]) for m in modalities}
        masks = {m: torch.from_numpy(data[f"{m}_mask"][sl]) for m in modalities}
        yield inputs, masks, torch.from_numpy(data["label"][sl].astype(np.int64))


# -- source 1: Sen1Floods11 folder layout ----------------------------------------------------------
# Sentinel-2 L1C band names of Sen1Floods11's S2Hand, in file order, and the canonical names we keep.
S2_L1C_FILE_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)
S2_L1C_TO_CANONICAL: Mapping[str, str] = {
    "B2": "blue", "B3": "green", "B4": "red", "B5": "rededge1", "B6": "rededge2", "B7": "rededge3",
    "B8": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22",
}
SEN1FLOODS11_CLASSES: tuple[tuple[str, str], ...] = (("not_water", "#d9d9d9"), ("water", "#1f78b4"))


@dataclass(frozen=True)
class Sen1Floods11Chip:
    """One Sen1Floods11 chip: s2 TOA reflectance (10, H, W), s1 dB (2, H, W), masks, label with 255."""

    id: str
    s2: np.ndarray
    s2_mask: np.ndarray
    s1: np.ndarray
    s1_mask: np.ndarray
    label: np.ndarray
    crs: str
    transform: tuple[float, ...]


SEN1FLOODS11_LABEL_MAP = "0:not_water,1:water,-1:nodata"


def sen1floods11_sources(
    root: str | Path, *, labels: str | None = None
) -> tuple[list[Any], str]:
    """The Sen1Floods11 layout as :mod:`sgma_batch.chip_files` sources: (modality specs, label pattern).

    S2Hand: L1C B2..B12 minus B1/B9/B10 as the ten s2 bands, DN / 10000, 0 = nodata; S1Hand: VV, VH dB (NaN
    nodata); labels ``LabelHand/{id}_LabelHand.tif`` unless ``labels`` (a pattern with ``{id}``, a
    directory or a glob) says otherwise. A chip needs a label and at least one of S1 / S2.
    """
    from sgma_batch.chip_files import ModalityFiles

    root = Path(root)
    s2 = ModalityFiles("s2", str(root / "S2Hand" / "{id}_S2Hand.tif"), bands=tuple(S2_L1C_TO_CANONICAL.values()),
                       select=tuple(S2_L1C_FILE_BANDS.index(b) + 1 for b in S2_L1C_TO_CANONICAL),
                       scale=1e-4, nodata=0.0)
    s1 = ModalityFiles("s1", str(root / "S1Hand" / "{id}_S1Hand.tif"), bands=("vv", "vh"), select=(1, 2))
    return [s2, s1], labels or str(root / "LabelHand" / "{id}_LabelHand.tif")


def sen1floods11_ids(root: str | Path, *, labels: str | None = None) -> list[str]:
    """Chip ids with a label and at least one of ``<id>_S1Hand.tif`` / ``<id>_S2Hand.tif``."""
    from sgma_batch.chip_files import resolve_files

    mods, lab = sen1floods11_sources(root, labels=labels)
    have = set().union(*(set(resolve_files(m.pattern)) for m in mods))
    ids = sorted(i for i in resolve_files(lab) if i in have)
    if not ids:
        raise ChipStoreError(f"no Sen1Floods11 chip under {root}: expected LabelHand/<id>_LabelHand.tif (or "
                             "--label-files) and S1Hand/<id>_S1Hand.tif and/or S2Hand/<id>_S2Hand.tif")
    return ids


def load_sen1floods11(root: str | Path, chip_id: str) -> Sen1Floods11Chip:
    """Read one chip with both S1 and S2: S2 L1C DN/10000 as the ten s2 bands, S1 VV/VH dB, label -1 -> 255."""
    from sgma_batch.chip_files import LabelMap, read_modality_file, read_raster

    mods, lab = sen1floods11_sources(root)
    out = {}
    for m in mods:
        path = Path(m.pattern.replace("{id}", chip_id))
        if not path.exists():
            raise ChipStoreError(f"chip {chip_id} has no {path.name}; use sen1floods11_chip_store for partial chips")
        out[m.name] = read_modality_file(m, path)
    raster = read_raster(lab.replace("{id}", chip_id))
    label = LabelMap.parse(SEN1FLOODS11_LABEL_MAP).apply(raster.data[0], [raster.nodata[0]], chip_id)
    s2, s2_mask, _, r2 = out["s2"]
    s1, s1_mask, _, _ = out["s1"]
    if not (s2.shape[1:] == s1.shape[1:] == label.shape):
        raise ChipStoreError(f"chip {chip_id}: S1, S2 and label grids differ; Sen1Floods11 chips share one grid")
    return Sen1Floods11Chip(chip_id, s2, s2_mask, s1, s1_mask, label, r2.crs or "", r2.transform or ())


def sen1floods11_chip_store(
    root: str | Path,
    out: str | Path,
    *,
    test_quadrant: int = 3,
    val_quadrant: int | None = None,
    chip_px: int = 64,
    guard_px: int = 16,
    labels: str | None = None,
    resolution: float | None = None,
    split_by: str = "quadrant",
    overwrite: bool = False,
) -> Path:
    """Chip store from Sen1Floods11 chips: per chip, quadrant ``test_quadrant`` (0 NW, 1 NE, 2 SW, 3 SE)
    is the test split, the other three quadrants train (no val split by default: nothing is tuned on it;
    ``val_quadrant`` moves one quadrant to val). ``split_by="file"`` splits whole chips instead.

    A chip may lack S2Hand or S1Hand (stored as absent; ``present`` records it). Through
    :func:`sgma_batch.chip_files.import_chip_files`.
    """
    from sgma_batch.chip_files import import_chip_files

    ids = sen1floods11_ids(root, labels=labels)
    mods, lab = sen1floods11_sources(root, labels=labels)
    return import_chip_files(
        mods, lab, out, label_map=SEN1FLOODS11_LABEL_MAP, resolution=resolution, chip_px=chip_px,
        split_by=split_by, test_quadrant=test_quadrant, val_quadrant=val_quadrant, guard_px=guard_px,
        collections={"s2": "sentinel-2-l1c", "s1": "sentinel-1-grd"},
        source={"kind": "sen1floods11", "root": str(Path(root).resolve()), "ids": ids},
        overwrite=overwrite,
    )


# -- source 2: an archive, through the same search / plan / read path as ``run`` --------------------
def label_geobox(labels: str | Path) -> Any:
    """The GeoBox of a label raster (the chip grid: chips and labels share it pixel for pixel)."""
    import rasterio
    from odc.geo.geobox import GeoBox

    with rasterio.open(labels) as src:
        return GeoBox((src.height, src.width), src.transform, src.crs)


def _crop_to_aoi(gbox: Any, aoi_geometry: Any) -> tuple[Any, int, int]:
    """Sub-GeoBox of ``gbox`` covering the AOI's bounding box, and its (row, col) offset in ``gbox``."""
    from odc.geo import geom

    bbox = geom.Geometry(aoi_geometry, "EPSG:4326").to_crs(gbox.crs).boundingbox
    inv = ~gbox.affine
    cols, rows = zip(*(inv * xy for xy in ((bbox.left, bbox.top), (bbox.right, bbox.bottom))))
    r0, r1 = max(0, int(math.floor(min(rows)))), min(gbox.shape[0], int(math.ceil(max(rows))))
    c0, c1 = max(0, int(math.floor(min(cols)))), min(gbox.shape[1], int(math.ceil(max(cols))))
    if r1 <= r0 or c1 <= c0:
        raise EmptyDataError("the AOI does not overlap the label raster; pick an AOI inside the labels' extent")
    return gbox[r0:r1, c0:c1], r0, c0


@dataclass(frozen=True)
class LabelSource:
    """A label raster found in a STAC collection: its href, item id and classes (None: not declared)."""

    href: str
    item_id: str
    collection: str
    classes: list[dict[str, str]] | None


def find_label_item(
    catalog: str | Path, collection: str, aoi: Any, *, asset: str = "labels"
) -> LabelSource:
    """The label raster of ``collection`` in ``catalog`` (static catalogue or STAC API) for ``aoi``.

    Labels are ground truth, not acquisitions: the collection is searched without a time window. Of the
    items intersecting the AOI, the one covering most of it wins (ties: smallest id); the chip grid is
    that item's raster. Classes come from the asset's ``classification:classes`` (values must be
    0..K-1), else None (the caller's default).
    """
    from shapely.geometry import shape

    from sgma_batch.aoi import AOI, load_aoi
    from sgma_batch.search import (
        CollectionChoice,
        StaticCatalog,
        _api_search,
        _check_hrefs,
        _is_loopback,
        _is_url,
        _open_client,
    )

    area = aoi if isinstance(aoi, AOI) else load_aoi(aoi)
    cat = str(catalog)
    if _is_url(cat):
        client = _open_client(cat, retries=3, backoff=0.5, timeout=30.0)
        items = _api_search(client, cat, CollectionChoice("labels", collection, "labels"), area, None, None,
                            None, None, 1000)
        for item in items:
            _check_hrefs(item, cat, local_ok=_is_loopback(cat))
    else:
        static = StaticCatalog(cat)
        if collection not in static.collections:
            raise ChipStoreError(f"label collection {collection!r} is not in {cat} "
                                 f"(it has {', '.join(static.collections)}); check --labels-collection")
        items = list(static.search(collection, area.geometry, None, None))
    items = [i for i in items if asset in (i.get("assets") or {})]
    if not items:
        raise EmptyDataError(f"no item of {collection!r} with a {asset!r} asset intersects the AOI; "
                             "pick an AOI inside the labels' extent")
    items.sort(key=lambda i: str(i["id"]))
    best = max(items, key=lambda i: shape(i["geometry"]).intersection(area.geometry).area)  # first on ties
    a = best["assets"][asset]
    classes = None
    declared = sorted(a.get("classification:classes") or [], key=lambda c: int(c["value"]))
    if declared and [int(c["value"]) for c in declared] == list(range(len(declared))):
        classes = [{"name": str(c["name"]), "color": "#" + str(c.get("color_hint", "808080")).lower().lstrip("#")}
                   for c in declared]
    log.info("labels: %s item %s (%d candidates)", collection, best["id"], len(items))
    return LabelSource(str(a["href"]), str(best["id"]), collection, classes)


def export_chips(
    *,
    catalog: str | Path,
    aoi: Any,
    start: str,
    end: str,
    labels: str | Path | None = None,
    out: str | Path,
    labels_collection: str | None = None,
    labels_asset: str = "labels",
    classes: Sequence[Mapping[str, str]] | None = None,
    label_map: Any = None,
    label_nodata: float | None = None,
    modalities: Sequence[str] = ("s2", "s1", "dem"),
    chip_px: int = 64,
    block_px: int = 144,
    guard_px: int = 16,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Export chips over ``aoi`` from ``catalog`` into a chip store at ``out``.

    The grid is the label raster's (cropped to the AOI). Per block (one split each), the scenes planned
    for the block by :func:`sgma_batch.colocate.plan_cell` are read onto the block's GeoBox with
    :func:`sgma_batch.read.read_modality`, exactly as ``run`` reads a tile; a modality with no scene is
    stored as all-invalid (mask False), which is what the model sees at inference time too.

    Args:
        aoi: an :class:`sgma_batch.aoi.AOI`, or anything :func:`sgma_batch.aoi.load_aoi` accepts.
        labels: a label raster (class ids, 255 = ignore); its grid is the chip grid.
        labels_collection: instead of ``labels``, a STAC collection of ``catalog`` whose item
            (``labels_asset``) over the AOI is the label raster (:func:`find_label_item`).
        classes: [{name, color}] of the label ids; default the label item's ``classification:classes``,
            else the synthetic archive's classes.
        label_map: ``"0:dry,1:water,-1:nodata"`` (or a :class:`sgma_batch.chip_files.LabelMap`): label values
            -> classes (its classes replace ``classes``); values it does not name are an error.
        label_nodata: label value meaning "no label" with ``label_map`` (default: the raster's nodata tag).
    """
    import rasterio
    from rasterio.windows import Window

    from sgma_batch.aoi import AOI, load_aoi
    from sgma_batch.colocate import plan_cell
    from sgma_batch.read import read_modality
    from sgma_batch.scenes import MODALITY_BANDS
    from sgma_batch.search import search_scenes
    from sgma_batch.sensors import get_profile

    area = aoi if isinstance(aoi, AOI) else load_aoi(aoi)
    label_meta: dict[str, Any] = {}
    if labels_collection is not None:
        if labels is not None:
            raise ChipStoreError("give a label raster or a label collection, not both")
        found = find_label_item(catalog, labels_collection, area, asset=labels_asset)
        labels, label_meta = found.href, {"labels_collection": found.collection, "labels_item": found.item_id}
        classes = classes if classes is not None else found.classes
    if labels is None:
        raise ChipStoreError("give a label raster (labels=) or a STAC label collection (labels_collection=)")
    if label_map is not None:
        from sgma_batch.chip_files import LabelMap

        label_map = label_map if isinstance(label_map, LabelMap) else LabelMap.parse(str(label_map))
        classes = list(label_map.classes)
    if classes is None:
        from sgma_batch.synthetic import CLASSES

        classes = [{"name": n, "color": c} for n, c in CLASSES]
    # static modalities (the DEM) are searched without the window by search_scenes itself
    found_scenes = search_scenes(catalog, area, start, end, modalities=list(modalities), allow_empty=True)
    scenes = {m: list(v) for m, v in found_scenes.items() if m in modalities}
    grid, r_off, c_off = _crop_to_aoi(label_geobox(labels), area.geometry)
    h, w = grid.shape
    windows = chip_windows(h, w, chip_px=chip_px, block_px=block_px, guard_px=guard_px,
                           fractions=fractions, seed=seed)
    writer = ChipWriter(
        out, modalities={m: MODALITY_BANDS[m] for m in modalities}, classes=classes, chip_px=chip_px,
        overwrite=overwrite,
        attrs={"source": {"kind": "archive", "catalog": str(catalog), "start": start, "end": end,
                          "labels": str(labels), **label_meta, "crs": str(grid.crs), "affine": list(grid.affine)[:6],
                          "scenes": {m: sorted(s.id for s in v) for m, v in scenes.items()}},
               "block_px": block_px, "guard_px": guard_px, "seed": seed, "fractions": list(fractions)},
    )
    by_block: dict[tuple[int, int], list[ChipWindow]] = {}
    for win in windows:
        by_block.setdefault(win.block, []).append(win)
    with rasterio.open(labels) as lsrc:
        for (by, bx), wins in by_block.items():
            r0, c0 = by * block_px, bx * block_px
            block = grid[r0:r0 + block_px, c0:c0 + block_px]
            plan = plan_cell(block.extent.to_crs("EPSG:4326").geom, scenes, start, end)
            arrays, masks = {}, {}
            for m in modalities:
                cands = tuple(plan.candidates.get(m, ()))
                if cands:
                    arrays[m], masks[m] = read_modality(cands, block, get_profile(cands[0].sensor))
                else:
                    arrays[m] = np.zeros((len(MODALITY_BANDS[m]), *block.shape), np.float32)
                    masks[m] = np.zeros(block.shape, bool)
            label = lsrc.read(1, window=Window(c_off + c0, r_off + r0, block_px, block_px))
            if label_map is not None:
                nd = label_nodata if label_nodata is not None else lsrc.nodata
                label = label_map.apply(label, [nd], str(labels))
            samples = []
            for win in wins:
                sl = (slice(win.row - r0, win.row - r0 + chip_px), slice(win.col - c0, win.col - c0 + chip_px))
                samples.append(ChipSample(
                    win,
                    {m: arrays[m][(slice(None), *sl)] for m in modalities},
                    {m: masks[m][sl] for m in modalities},
                    label[sl],
                ))
            writer.append(samples)
            log.info("block %s: %d chips, modalities %s", (by, bx), len(samples), sorted(plan.available))
    return writer.close()
