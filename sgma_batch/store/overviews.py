"""Nearest-neighbour overviews of the map variables under ``overviews/<f>``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgma_batch.grid import morton_key
from sgma_batch.store.layout import NODATA, StoreLayout, _geozarr_attrs, _quiet_zarr, _write_template


def _overview_levels(layout: StoreLayout) -> list[int]:
    h, w = layout.geobox.shape.yx
    levels, f = [], 2
    while max(h, w) / (f // 2) > layout.tile_px:
        levels.append(f)
        f *= 2
    return levels


#: Chunks per side read at once when building overviews (a 4 x 4 block of 256 px chunks: 6 MiB of maps).
_OVERVIEW_UNIT = 4

#: Variables with overviews (nearest, centre pixel), and the fill of an overview pixel beyond the grid: nodata.
_OVERVIEW_FILL = {name: int(NODATA[name]) for name in ("class", "confidence", "modality_mask", "robustness")}


def _morton(n: int) -> list[tuple[int, int]]:
    """(row, col) of an n x n grid (n a power of two) in Z order: every aligned 2^k x 2^k block is contiguous."""
    return sorted(((r, c) for r in range(n) for c in range(n)), key=lambda rc: morton_key(*rc))


@_quiet_zarr
def _write_overviews(path: Path | str, layout: StoreLayout) -> list[int]:
    """Nearest-neighbour (centre pixel) overviews of the map variables under overviews/<f>.

    Level ``f`` holds the full-resolution pixel ``f * i + f // 2`` at index ``i``. One pass over blocks of
    ``_OVERVIEW_UNIT`` x ``_OVERVIEW_UNIT`` full-resolution chunks in Z order: an overview chunk of level ``f``
    covers ``f x f`` chunks, which Z order visits one after another, so each level keeps only the overview
    block being filled (memory O(tile) per level), every full-resolution chunk is decoded once whatever the
    number of levels, and every overview chunk is written once (timings: docs/performance.md).
    ``probability`` has none: the quicklooks need class, confidence and robustness only.
    """
    import zarr

    from sgma_batch import storage

    path = storage.location(path)
    store = storage.zarr_store(path)  # a path, or zarr's ObjectStore for s3:// gs:// az://
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    src = {name: root[name] for name in _OVERVIEW_FILL}
    h, w = src["class"].shape
    t = layout.tile_px  # the chunk size of every map variable
    factors = _overview_levels(layout)
    storage.delete_tree(storage.join(path, "overviews"))
    dst, shapes = {}, {}
    for f in factors:
        gb = layout.geobox.zoom_out(f)
        sub = StoreLayout(gb, layout.tile_px, layout.classes, layout.modalities, False, layout.zarr_format)
        _write_template(store, sub, {"sgma:overview_factor": f, "sgma:nodata": {k: int(NODATA[k]) for k in _OVERVIEW_FILL},
                                     **_geozarr_attrs(gb)}, group=f"overviews/{f}", only=list(_OVERVIEW_FILL))
        dst[f] = zarr.open_group(store, path=f"overviews/{f}", mode="r+", use_consolidated=False)
        shapes[f] = gb.shape.yx
    lead = {name: src[name].shape[:-2] for name in _OVERVIEW_FILL}
    u = _OVERVIEW_UNIT
    side = {f: max(u // f, 1) * t for f in factors}  # overview pixels per side that a level's buffer holds
    span = {f: max(f // u, 1) for f in factors}  # units per side that one buffer covers
    filling: dict[int, tuple[tuple[int, int], dict[str, np.ndarray]]] = {}  # f -> (its buffer's key, buffers)

    def flush(f: int) -> None:
        (by, bx), bufs = filling.pop(f)
        oh, ow = shapes[f]
        y0, x0 = by * side[f], bx * side[f]
        y1, x1 = min(y0 + side[f], oh), min(x0 + side[f], ow)
        for name, buf in bufs.items():
            dst[f][name][..., y0:y1, x0:x1] = buf[..., : y1 - y0, : x1 - x0]

    ny, nx = -(-h // (u * t)), -(-w // (u * t))
    for uy, ux in _morton(1 << max(ny - 1, nx - 1, 0).bit_length()):
        if uy >= ny or ux >= nx:
            continue
        r0, r1, c0, c1 = uy * u * t, min((uy + 1) * u * t, h), ux * u * t, min((ux + 1) * u * t, w)
        block = {name: a[..., r0:r1, c0:c1] for name, a in src.items()}  # u x u aligned chunks each
        for f in factors:
            key = (uy // span[f], ux // span[f])
            if f in filling and filling[f][0] != key:
                flush(f)
            if f not in filling:
                n = side[f]
                filling[f] = (key, {k: np.full((*lead[k], n, n), fill, np.uint8) for k, fill in _OVERVIEW_FILL.items()})
            bufs = filling[f][1]
            # overview indices i with f * i + f // 2 inside this unit's rows / columns
            i0, i1 = -(-(r0 - f // 2) // f), -(-(r1 - f // 2) // f)
            j0, j1 = -(-(c0 - f // 2) // f), -(-(c1 - f // 2) // f)
            if i0 >= i1 or j0 >= j1:
                continue
            ys, xs = slice(f * i0 + f // 2 - r0, None, f), slice(f * j0 + f // 2 - c0, None, f)
            oy, ox = i0 - key[0] * side[f], j0 - key[1] * side[f]
            for name, data in block.items():
                bufs[name][..., oy : oy + i1 - i0, ox : ox + j1 - j0] = data[..., ys, xs]
    for f in list(filling):
        flush(f)
    return factors
