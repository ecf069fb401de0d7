"""Chips from plain files: one raster per (chip, modality) plus one label raster per chip.

This is the generic source of ``sgma-batch chips`` beside the catalogue and Sen1Floods11 sources (the
Sen1Floods11 source is this importer with fixed patterns). Each modality and the labels are given as

* a pattern with ``{id}``, e.g. ``data/S1Hand/{id}_S1Hand.tif`` (the chip id is what ``{id}`` matches),
* a directory (every ``*.tif`` / ``*.tiff`` in it; the chip id is the file stem), or
* a glob (the chip id is the file stem).

A chip is a label file; every modality file with the same id is its data. **A chip may lack any
modality** (no file, or a file with no valid pixel): the modality is stored as all-invalid (mask False)
and the store's ``present`` array (N, M) records which modality each chip really has. A chip without
any modality is skipped with a warning.

Rasters: every band of every page is read (multi-band and multi-page TIFFs: pages are GDAL's
``GTIFF_DIR`` subdatasets of equal size), then bands are selected and named (``--bands``). A pixel is
valid when every selected band is finite and differs from the nodata value (the raster's own tag unless
one is given). Physical values = raw x scale + offset. Files of one chip must share the pixel grid
(same shape; same CRS and transform when both have one). Files without a CRS are accepted when an
explicit pixel size (``resolution``, metres) is given, which the store records.

Labels: a class map such as ``0:dry,1:water,-1:nodata`` maps raster values to class names (``nodata`` or
``ignore`` = 255, the ignore index); the raster's nodata tag (or ``label_nodata``) is ignored too. Values
that the map does not name are an error, so no class is silently dropped. Without a map, the values must
be class ids 0..K-1.

Splits: ``file`` (each file is one block: a seeded assignment of files to train / val / test) or
``quadrant`` (each file's quadrants, one held out for test, with a guard gap, as for one large chip);
``auto`` picks ``file`` from 3 files up.
"""

from __future__ import annotations

import glob as globlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sgma_batch.errors import ChipStoreError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
IGNORE_NAMES = ("nodata", "ignore")
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
PALETTE = ("#d9d9d9", "#1f78b4", "#33a02c", "#e31a1c", "#ff7f00", "#6a3d9a", "#b15928", "#a6cee3",
           "#b2df8a", "#fb9a99", "#fdbf6f", "#cab2d6")


# -- specifications --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModalityFiles:
    """Where one modality's rasters are and how to read them.

    Args:
        name: modality name (``s2``, ``s1``, ``dem`` or any other).
        pattern: ``{id}`` pattern, directory or glob.
        bands: canonical band names of the selected bands (default: the modality's canonical names when the
            count matches, else the file's band descriptions, else ``b1..bn``).
        select: which file bands to keep, in order: 1-based indices over all pages, or band descriptions;
            None keeps all.
        scale, offset: physical value = raw x scale + offset.
        nodata: raw value marking invalid pixels (None: the raster's own nodata tag); NaN/inf are always invalid.
    """

    name: str
    pattern: str
    bands: tuple[str, ...] | None = None
    select: tuple[int | str, ...] | None = None
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None


@dataclass(frozen=True)
class LabelMap:
    """Raster value -> class index (255 = ignore) and the class list."""

    values: Mapping[int, int]
    classes: tuple[Mapping[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> LabelMap:
        """``"0:dry,1:water,-1:nodata"`` (names ``nodata``/``ignore`` = 255; ``name#rrggbb`` sets a colour)."""
        values: dict[int, int] = {}
        names: list[str] = []
        colors: dict[str, str] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if ":" not in part:
                raise ChipStoreError(f"label map entry {part!r} is not VALUE:NAME (e.g. 0:dry,1:water,-1:nodata)")
            raw, name = (s.strip() for s in part.split(":", 1))
            try:
                value = int(float(raw))
            except ValueError:
                raise ChipStoreError(f"label map value {raw!r} is not an integer (in {text!r})") from None
            color = None
            if "#" in name:
                name, color = name.split("#", 1)
                color = "#" + color.lower()
            if not name:
                raise ChipStoreError(f"label map entry {part!r} has no class name")
            if value in values:
                raise ChipStoreError(f"label map gives value {value} twice (in {text!r})")
            if name.lower() in IGNORE_NAMES:
                values[value] = IGNORE_INDEX
                continue
            if name not in names:
                names.append(name)
            if color:
                colors[name] = color
            values[value] = names.index(name)
        if not names:
            raise ChipStoreError(f"label map {text!r} names no class (only nodata)")
        if len(names) >= IGNORE_INDEX:
            raise ChipStoreError(f"label map has {len(names)} classes; at most {IGNORE_INDEX - 1}")
        classes = tuple({"name": n, "color": colors.get(n, PALETTE[i % len(PALETTE)])} for i, n in enumerate(names))
        return cls(values, classes)

    @classmethod
    def identity(cls, k: int, names: Sequence[str] | None = None) -> LabelMap:
        names = list(names) if names else [f"class_{i}" for i in range(k)]
        return cls({i: i for i in range(k)},
                   tuple({"name": n, "color": PALETTE[i % len(PALETTE)]} for i, n in enumerate(names)))

    def apply(self, raw: np.ndarray, nodata: Sequence[float], where: str) -> np.ndarray:
        """Class ids uint8 (255 = ignore); unmapped values are a :class:`ChipStoreError` naming them."""
        out = np.full(raw.shape, IGNORE_INDEX, np.uint8)
        ignore = ~np.isfinite(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, bool)
        for v in nodata:
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                ignore |= raw == v
        done = ignore.copy()
        for value, cls_id in self.values.items():
            hit = (raw == value) & ~ignore
            out[hit] = cls_id
            done |= hit
        if not done.all():
            bad = np.unique(raw[~done])[:6]
            raise ChipStoreError(
                f"{where}: label values {[_num(b) for b in bad]} are not in the class map "
                f"({sorted(self.values)}); give --label-map VALUE:NAME,... (NAME 'nodata' = ignore) or --label-nodata"
            )
        return out


def _num(v: Any) -> float | int:
    f = float(v)
    return int(f) if f.is_integer() else f


def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """``["s1=dir/{id}.tif", ...]`` -> {"s1": "dir/{id}.tif"}; a clean error for a malformed entry."""
    out: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise ChipStoreError(f"{what} {item!r} is not MODALITY=VALUE (e.g. s1=data/S1/{{id}}_S1.tif)")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k or not v.strip():
            raise ChipStoreError(f"{what} {item!r} is not MODALITY=VALUE")
        if k in out:
            raise ChipStoreError(f"{what} gives {k!r} twice")
        out[k] = v.strip()
    return out


def parse_band_spec(text: str) -> tuple[tuple[str, ...], tuple[int | str, ...] | None]:
    """``"vv,vh"`` (names in file order) or ``"blue:2,green:B3"`` (name:1-based index or description)."""
    names: list[str] = []
    sel: list[int | str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if ":" in part:
            n, s = (x.strip() for x in part.split(":", 1))
            names.append(n)
            sel.append(int(s) if s.isdigit() else s)
        else:
            names.append(part)
    if not names:
        raise ChipStoreError(f"band list {text!r} is empty")
    if sel and len(sel) != len(names):
        raise ChipStoreError(f"band list {text!r}: give NAME:BAND for every band or for none")
    if len(set(names)) != len(names):
        raise ChipStoreError(f"band list {text!r} repeats a name")
    return tuple(names), (tuple(sel) if sel else None)


# -- finding files ---------------------------------------------------------------------------------
def resolve_files(pattern: str) -> dict[str, Path]:
    """Chip id -> file for an ``{id}`` pattern, a directory or a glob (see the module docstring)."""
    if "{id}" in pattern:
        if pattern.count("{id}") != 1:
            raise ChipStoreError(f"pattern {pattern!r} must hold {{id}} once")
        head, tail = pattern.split("{id}")
        rx = re.compile(re.escape(head) + r"(?P<id>.+?)" + re.escape(tail) + r"\Z")
        found = {}
        for f in sorted(globlib.glob(glob_escape(head) + "*" + glob_escape(tail))):
            m = rx.match(f)
            if m and Path(f).is_file():
                found[m.group("id")] = Path(f)
        return found
    p = Path(pattern)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in RASTER_SUFFIXES and f.is_file())
    else:
        files = sorted(Path(f) for f in globlib.glob(pattern) if Path(f).is_file())
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise ChipStoreError(f"two files share the chip id {f.stem!r} ({out[f.stem]}, {f}); use an {{id}} pattern")
        out[f.stem] = f
    return out


def glob_escape(s: str) -> str:
    return globlib.escape(s)


# -- reading rasters -------------------------------------------------------------------------------
@dataclass
class Raster:
    """All bands of all pages of one file: (C, H, W) raw values, per-band nodata, descriptions, georeferencing."""

    data: np.ndarray
    nodata: list[float | None]
    descriptions: list[str | None]
    crs: str | None
    transform: tuple[float, ...] | None
    res: tuple[float, float] | None


def read_raster(path: str | Path) -> Raster:
    """Read every band of every page (pages = GDAL ``GTIFF_DIR`` subdatasets of the same size)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():  # chips without georeferencing are allowed (see --resolution)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return _read_pages(rasterio, path)
    except RasterioIOError as exc:
        raise ChipStoreError(f"cannot read raster {path}: {exc}") from None


def _read_pages(rasterio: Any, path: str | Path) -> Raster:
    if True:
        with rasterio.open(path) as src:
            pages = [p for p in (src.subdatasets or []) if p.startswith("GTIFF_DIR:")]
            shape = (src.height, src.width)
            crs = src.crs.to_string() if src.crs else None
            georef = src.crs is not None or not src.transform.is_identity
            transform = tuple(src.transform)[:6] if georef else None
            res = tuple(float(r) for r in src.res) if georef else None
            datas, nodata, desc = [src.read()], [src.nodata] * src.count, list(src.descriptions)
        for page in pages[1:]:
            with rasterio.open(page) as sub:
                if (sub.height, sub.width) != shape:
                    log.info("%s: page %s is %dx%d, not %dx%d: skipped (overview?)", path, page,
                             sub.height, sub.width, *shape)
                    continue
                datas.append(sub.read())
                nodata += [sub.nodata] * sub.count
                desc += list(sub.descriptions)
    dtype = np.result_type(*[d.dtype for d in datas])
    return Raster(np.concatenate([d.astype(dtype, copy=False) for d in datas]), nodata, desc, crs, transform, res)


def _select(raster: Raster, spec: ModalityFiles, path: Path) -> tuple[np.ndarray, list[float | None], tuple[str, ...]]:
    """Selected bands (C, H, W), their nodata and names."""
    from sgma_batch.scenes import MODALITY_BANDS

    n = raster.data.shape[0]
    if spec.select is not None:
        idx = []
        for s in spec.select:
            if isinstance(s, int):
                if not 1 <= s <= n:
                    raise ChipStoreError(f"{path}: band {s} asked for {spec.name}, the file has {n} (pages included)")
                idx.append(s - 1)
            else:
                if s not in raster.descriptions:
                    raise ChipStoreError(f"{path}: no band described {s!r} (it has {raster.descriptions})")
                idx.append(raster.descriptions.index(s))
    else:
        idx = list(range(n))
    names = spec.bands
    if names is None:
        canonical = MODALITY_BANDS.get(spec.name)
        if canonical is not None and len(canonical) == len(idx):
            names = tuple(canonical)
        elif all(raster.descriptions[i] for i in idx) and len({raster.descriptions[i] for i in idx}) == len(idx):
            names = tuple(str(raster.descriptions[i]).lower() for i in idx)
        else:
            names = tuple(f"b{i + 1}" for i in idx)
    if len(names) != len(idx):
        raise ChipStoreError(f"{path}: {len(idx)} bands selected for {spec.name}, {len(names)} names given "
                             f"({list(names)}); use --bands {spec.name}=NAME,... with one name per file band "
                             "(pages included) or NAME:BAND pairs")
    return raster.data[idx], [raster.nodata[i] for i in idx], tuple(names)


def read_modality_file(spec: ModalityFiles, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], Raster]:
    """(C, H, W) float32 physical values (0 where invalid), (H, W) validity, band names, the raster."""
    raster = read_raster(path)
    raw, nodata, names = _select(raster, spec, path)
    valid = np.ones(raw.shape[1:], bool)
    if raw.dtype.kind == "f":
        valid &= np.all(np.isfinite(raw), axis=0)
    for b in range(raw.shape[0]):
        nd = spec.nodata if spec.nodata is not None else nodata[b]
        if nd is not None and not math.isnan(nd):
            valid &= raw[b] != nd
    x = raw.astype(np.float64) * spec.scale + spec.offset  # float64, then one rounding to float32
    x = np.where(valid[None], x, 0.0).astype(np.float32)
    return x, valid, names, raster


# -- the importer ----------------------------------------------------------------------------------
@dataclass
class ImportReport:
    """What an import found: chips per split, chips per modality, skipped ids."""

    counts: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def import_chip_files(
    modalities: Sequence[ModalityFiles],
    labels: str,
    out: str | Path,
    *,
    label_map: LabelMap | str | None = None,
    label_nodata: float | None = None,
    resolution: float | None = None,
    chip_px: int = 64,
    split_by: str = "auto",
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    test_quadrant: int = 3,
    val_quadrant: int | None = None,
    guard_px: int = 16,
    seed: int = 0,
    collections: Mapping[str, str] | None = None,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a chip store from per-chip files (module docstring); returns its path."""
    from sgma_batch.chips import ChipWriter, assign_splits

    if not modalities:
        raise ChipStoreError("give at least one modality (--files MODALITY=PATTERN)")
    names = [m.name for m in modalities]
    if len(set(names)) != len(names):
        raise ChipStoreError(f"modality given twice in {names}")
    if split_by not in ("auto", "file", "quadrant"):
        raise ChipStoreError(f"split_by {split_by!r}: use auto, file or quadrant")
    if val_quadrant is not None and val_quadrant == test_quadrant:
        raise ChipStoreError("val_quadrant must differ from test_quadrant")
    label_files = resolve_files(labels)
    if not label_files:
        raise ChipStoreError(f"no label file matches {labels!r}")
    files = {m.name: resolve_files(m.pattern) for m in modalities}
    for m in modalities:
        if not files[m.name]:
            log.warning("no %s file matches %r: every chip lacks %s", m.name, m.pattern, m.name)
    ids = [i for i in label_files if any(i in files[n] for n in names)]
    orphans = sorted(set().union(*(set(f) for f in files.values())) - set(label_files))
    if orphans:
        log.warning("%d data files have no label and are not used (e.g. %s)", len(orphans), orphans[:3])
    if not ids:
        some = {n: sorted(f)[:2] for n, f in files.items()}
        raise ChipStoreError(
            f"no label id ({sorted(label_files)[:3]}...) has a data file (ids found: {some}); name the chip id "
            "in every pattern with {id}, e.g. --files s1=dir/{id}_S1Hand.tif --label-files dir/{id}_LabelHand.tif"
        )
    if isinstance(label_map, str):
        label_map = LabelMap.parse(label_map)
    if label_map is None:
        label_map = _identity_map(label_files, ids, label_nodata)
    mode = split_by if split_by != "auto" else ("file" if len(ids) >= 3 else "quadrant")
    file_splits = assign_splits(len(ids), fractions, seed) if mode == "file" else None

    # the first chip that holds a modality fixes its band names; later chips must agree
    band_names: dict[str, tuple[str, ...]] = {}
    for m in modalities:
        for cid in ids:
            if cid in files[m.name]:
                _, _, band_names[m.name], _ = read_modality_file(m, files[m.name][cid])
                break
        else:
            from sgma_batch.scenes import MODALITY_BANDS

            band_names[m.name] = m.bands or MODALITY_BANDS.get(m.name) or ()
            if not band_names[m.name]:
                raise ChipStoreError(f"no file of {m.name} and no --bands {m.name}=...: its bands are unknown")
    chips_meta: list[dict[str, Any]] = []
    from sgma_batch import storage

    existed = storage.exists(storage.location(out))  # a path or an s3:// gs:// az:// URL
    writer = ChipWriter(
        out, modalities=band_names, classes=list(label_map.classes), chip_px=chip_px, overwrite=overwrite,
        attrs={"source": {"kind": "files", "modalities": {m.name: m.pattern for m in modalities},
                          "labels": labels, "split_by": mode, "test_quadrant": test_quadrant,
                          "val_quadrant": val_quadrant, "resolution": resolution,
                          "label_map": {str(k): v for k, v in label_map.values.items()},
                          **(source or {})},
               "collections": dict(collections or {}), "block_px": None, "guard_px": guard_px,
               "seed": seed, "fractions": list(fractions)},
    )
    try:
        return _write_chips(writer, modalities, ids, files, label_files, band_names, label_map, label_nodata,
                            resolution, chip_px, mode, file_splits, test_quadrant, val_quadrant, guard_px,
                            chips_meta)
    except BaseException:
        if not existed:  # a failed import leaves nothing behind (an --overwrite target is gone either way)
            import shutil

            if storage.is_url(str(out)):
                storage.delete_tree(storage.location(out))
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _write_chips(writer: Any, modalities: Sequence[ModalityFiles], ids: Sequence[str], files: Mapping[str, Any],
                 label_files: Mapping[str, Path], band_names: Mapping[str, tuple[str, ...]], label_map: LabelMap,
                 label_nodata: float | None, resolution: float | None, chip_px: int, mode: str,
                 file_splits: np.ndarray | None, test_quadrant: int, val_quadrant: int | None, guard_px: int,
                 chips_meta: list[dict[str, Any]]) -> Path:
    from sgma_batch.chips import ChipSample, chip_windows, constant_modality

    names = [m.name for m in modalities]
    report = ImportReport(present={n: 0 for n in names})
    for fi, cid in enumerate(ids):
        lab_r = read_raster(label_files[cid])
        nd = [label_nodata if label_nodata is not None else lab_r.nodata[0]]
        label = label_map.apply(lab_r.data[0], nd, str(label_files[cid]))
        h, w = label.shape
        arrays, masks, present = {}, {}, {}
        georef = {"crs": lab_r.crs, "transform": lab_r.transform}
        for m in modalities:
            c = len(band_names[m.name])
            path = files[m.name].get(cid)
            if path is None:
                arrays[m.name], masks[m.name], present[m.name] = np.zeros((c, h, w), np.float32), np.zeros((h, w), bool), False
                continue
            x, valid, bnames, raster = read_modality_file(m, path)
            if constant_modality(x, valid):
                log.warning("%s: every valid pixel has the same value (zero-filled?): %s stored as absent", path, m)
                valid = np.zeros_like(valid)
                x = np.zeros_like(x)
            if bnames != band_names[m.name]:
                raise ChipStoreError(f"{path}: bands {list(bnames)} differ from the first {m.name} file's "
                                     f"{list(band_names[m.name])}")
            if x.shape[1:] != (h, w):
                raise ChipStoreError(f"{path} is {x.shape[1]}x{x.shape[2]} px, its label {label_files[cid]} "
                                     f"{h}x{w}; the files of a chip must share one grid")
            _check_grid(raster, georef, path, label_files[cid])
            if georef["crs"] is None and raster.crs is not None:
                georef = {"crs": raster.crs, "transform": raster.transform}
            arrays[m.name], masks[m.name], present[m.name] = x, valid, bool(valid.any())
            if not valid.any():
                log.warning("%s: no valid pixel, %s stored as absent for chip %s", path, m.name, cid)
        if not any(present.values()):
            log.warning("chip %s has no modality with a valid pixel: skipped", cid)
            report.skipped.append(cid)
            continue
        if georef["crs"] is None and resolution is None:
            raise ChipStoreError(
                f"{label_files[cid]} and its data files have no CRS; pass --resolution METRES (the pixel size) "
                "to import chips without georeferencing"
            )
        if min(h, w) < chip_px:
            raise ChipStoreError(f"chip {cid} is {h}x{w} px, smaller than --chip-px {chip_px}; lower --chip-px")
        if mode == "file":
            b = min(h, w)
            win = chip_windows(h, w, chip_px=chip_px, block_px=b, guard_px=0,
                               block_splits=np.full((h // b, w // b), file_splits[fi], np.uint8))
        else:
            block_px = min(h, w) // 2
            splits = np.zeros((2, 2), np.uint8)
            splits.flat[test_quadrant] = 2
            if val_quadrant is not None:
                splits.flat[val_quadrant] = 1
            win = chip_windows(h, w, chip_px=chip_px, block_px=block_px, guard_px=guard_px, block_splits=splits)
        samples = []
        for wdw in win:
            sl = (slice(wdw.row, wdw.row + chip_px), slice(wdw.col, wdw.col + chip_px))
            samples.append(ChipSample(
                wdw, {n: arrays[n][(slice(None), *sl)] for n in names}, {n: masks[n][sl] for n in names},
                label[sl], present={n: present[n] and bool(masks[n][sl].any()) for n in names}, source=len(chips_meta),
            ))
        writer.append(samples)
        chips_meta.append({"id": cid, "crs": georef["crs"], "transform": georef["transform"],
                           "present": [n for n in names if present[n]]})
        for n in names:
            report.present[n] += int(present[n])
    if not chips_meta:
        raise ChipStoreError("no chip holds any modality with a valid pixel; check the patterns and --nodata")
    writer.attrs["source"]["chips"] = chips_meta
    writer.attrs["source"]["skipped"] = report.skipped
    log.info("imported %d chips (%s hold each modality), %d skipped", len(chips_meta), report.present,
             len(report.skipped))
    return writer.close()


def _check_grid(raster: Raster, georef: Mapping[str, Any], path: Path, label: Path) -> None:
    if raster.crs is None or georef["crs"] is None:
        return
    from rasterio.crs import CRS

    if CRS.from_user_input(raster.crs) != CRS.from_user_input(georef["crs"]):
        raise ChipStoreError(f"{path} is in {raster.crs}, its label {label} in {georef['crs']}; reproject one")
    a, b = np.asarray(raster.transform), np.asarray(georef["transform"])
    tol = 1e-3 * max(abs(b[0]), abs(b[4]), 1e-12)
    if np.any(np.abs(a - b) > tol):
        raise ChipStoreError(f"{path} and its label {label} are not on the same pixel grid "
                             f"(transforms {tuple(a)} vs {tuple(b)})")


def _identity_map(label_files: Mapping[str, Path], ids: Sequence[str], label_nodata: float | None) -> LabelMap:
    """Without a class map: class ids 0..K-1 as stored (nodata and 255 ignored); anything else is an error."""
    seen: set[int] = set()
    for cid in ids:
        r = read_raster(label_files[cid])
        v = r.data[0]
        nd = label_nodata if label_nodata is not None else r.nodata[0]
        keep = np.isfinite(v) if v.dtype.kind == "f" else np.ones(v.shape, bool)
        if nd is not None and not math.isnan(nd):
            keep &= v != nd
        keep &= v != IGNORE_INDEX
        seen |= {int(x) for x in np.unique(v[keep])}
    if not seen:
        raise ChipStoreError("the label files hold no labelled pixel; check --label-nodata")
    bad = sorted(x for x in seen if x < 0 or x >= IGNORE_INDEX)
    if bad:
        raise ChipStoreError(f"label values {bad[:6]} are not class ids 0..254; give --label-map "
                             "VALUE:NAME,... (e.g. 0:dry,1:water,-1:nodata) or --label-nodata")
    k = max(seen) + 1
    lm = LabelMap.identity(k)
    return LabelMap({**lm.values, IGNORE_INDEX: IGNORE_INDEX}, lm.classes)
