"""The procedural ground truth: land cover and terrain as pure functions of map coordinates and a seed.

Structure, from coarse to fine:

* terrain: fractal relief (~4 km features); lakes fill the low basins to a flat water level, rivers
  follow the zero lines of a meandering field and are carved into valleys;
* wetland: the flat, low shore belt of lakes and the wet parts of river floodplains;
* settlements: blobs around jittered centres of a ~2.5 km lattice (most cells hold one), with parks;
* forest on the higher ground;
* farmland elsewhere: rectangular parcels in a rotated, brick-like layout, each parcel crops, grass or
  bare (fallow), separated by grass margins; rock outcrops (bare) on the highest ground.

Everything is evaluated per window (O(window) memory) and is independent of how an extent is tiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgma_batch.synthetic.noise import fbm, field_key, hash_uniform, value_noise

WATER, TREES, GRASS, CROPS, BUILT_UP, BARE, WETLAND = range(7)
LABEL_NODATA = 255

_BASE_ELEVATION_M = 320.0
_RELIEF_M = 140.0
_LAKE_NOISE = -0.40  # terrain noise below this is a lake basin
_SHORE_NOISE = -0.35  # ... up to this, a flat, wet shore belt
_TOWN_CELL_M = 2500.0


@dataclass(frozen=True)
class Ground:
    """What the sensors see of one window: class ids plus the fields that vary within classes.

    Attributes:
        label: (H, W) uint8 class ids.
        elevation_m: (H, W) float32 terrain height.
        parcel: (H, W) float32 per-parcel random value in [0, 1) (crop type, sowing date, vigour).
        texture: (H, W) float32 smooth within-class variation, about [-1, 1].
    """

    label: np.ndarray
    elevation_m: np.ndarray
    parcel: np.ndarray
    texture: np.ndarray


def _terrain(x_m: np.ndarray, y_m: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Terrain noise, river distance proxy and elevation (before lake filling)."""
    relief = fbm(x_m, y_m, 4000.0, field_key(seed, "relief"), octaves=5)
    # Rivers: the zero lines of a smooth field, warped for meanders; |river| grows away from the bed.
    warp = value_noise(x_m, y_m, 900.0, field_key(seed, "meander"))
    river = fbm(x_m, y_m, 5000.0, field_key(seed, "river"), octaves=3) + np.float32(0.06) * warp
    river = np.abs(river)
    valley = np.exp(-((river / np.float32(0.09)) ** 2))
    elevation = (
        np.float32(_BASE_ELEVATION_M)
        + np.float32(_RELIEF_M) * relief
        - np.float32(18.0) * valley  # valleys
        - np.float32(4.0) * np.clip(1.0 - river / np.float32(0.02), 0.0, 1.0)  # the bed itself
    )
    return relief, river, elevation


def _settlements(x_m: np.ndarray, y_m: np.ndarray, seed: int) -> np.ndarray:
    """Boolean (H, W): built-up blobs around jittered lattice centres, ragged edges."""
    key = field_key(seed, "towns")
    cx = np.floor(x_m / _TOWN_CELL_M).astype(np.int64)
    cy = np.floor(y_m / _TOWN_CELL_M).astype(np.int64)
    out = np.zeros((len(y_m), len(x_m)), dtype=bool)
    ragged = value_noise(x_m, y_m, 180.0, field_key(seed, "town-edge")) * np.float32(0.35)
    # A pixel can belong to a town centred in its own lattice cell or a neighbour's.
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ix = np.arange(cx.min() + dx, cx.max() + dx + 1)
            iy = np.arange(cy.min() + dy, cy.max() + dy + 1)
            present = hash_uniform(ix[None, :], iy[:, None], key) < 0.75
            if not present.any():
                continue
            jx = hash_uniform(ix[None, :], iy[:, None], key + 1)
            jy = hash_uniform(ix[None, :], iy[:, None], key + 2)
            rad = 250.0 + 450.0 * hash_uniform(ix[None, :], iy[:, None], key + 3)
            centre_x = (ix[None, :] + 0.15 + 0.7 * jx) * _TOWN_CELL_M
            centre_y = (iy[:, None] + 0.15 + 0.7 * jy) * _TOWN_CELL_M
            col = cx + dx - (cx.min() + dx)
            row = cy + dy - (cy.min() + dy)
            px_cx = centre_x[row[:, None], col[None, :]]
            px_cy = centre_y[row[:, None], col[None, :]]
            px_r = rad[row[:, None], col[None, :]]
            px_on = present[row[:, None], col[None, :]]
            d = np.hypot(x_m[None, :] - px_cx, y_m[:, None] - px_cy) / px_r
            out |= px_on & (d.astype(np.float32) < 1.0 + ragged)
    return out


def _parcels(x_m: np.ndarray, y_m: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular field parcels in a rotated brick layout.

    Returns:
        (parcel value in [0, 1), margin mask) both (H, W).
    """
    angle = np.deg2rad(-25.0 + 50.0 * float(hash_uniform(np.array(0), np.array(0), field_key(seed, "angle"))))
    # float64 map coordinates: the layout must not depend on where a window starts.
    x = np.asarray(x_m, dtype=np.float64)[None, :]
    y = np.asarray(y_m, dtype=np.float64)[:, None]
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    key = field_key(seed, "parcels")
    col_w = 260.0
    col = np.floor(u / col_w).astype(np.int64)
    shift = hash_uniform(col, np.zeros_like(col), key) * 900.0
    length = 140.0 + hash_uniform(col, np.ones_like(col), key) * 320.0
    vv = v + shift
    row = np.floor(vv / length).astype(np.int64)
    parcel = hash_uniform(col, row, key + 5).astype(np.float32)
    # Field margins (tracks, hedges): the outer ~10 m of every parcel.
    margin = ((u - col * col_w) < 8.0) | ((vv - row * length) < 8.0)
    return parcel, margin


def ground(x_m: np.ndarray, y_m: np.ndarray, seed: int) -> Ground:
    """Land cover, terrain and within-class fields on the grid of pixel-centre coordinates.

    Args:
        x_m: (W,) x of pixel centres (metres, projected CRS).
        y_m: (H,) y of pixel centres.
        seed: world seed.
    """
    relief, river, elevation = _terrain(x_m, y_m, seed)
    moisture = fbm(x_m, y_m, 700.0, field_key(seed, "moisture"), octaves=3)
    forest = fbm(x_m, y_m, 1800.0, field_key(seed, "forest"), octaves=4) + np.float32(0.35) * relief
    parcel, margin = _parcels(x_m, y_m, seed)
    texture = fbm(x_m, y_m, 160.0, field_key(seed, "texture"), octaves=3)
    towns = _settlements(x_m, y_m, seed)

    label = np.full(relief.shape, CROPS, dtype=np.uint8)
    label[parcel < 0.33] = GRASS
    label[(parcel >= 0.33) & (parcel < 0.45)] = BARE  # fallow / ploughed
    label[margin] = GRASS
    label[relief > 0.42] = BARE  # rock on the highest ground
    label[forest > 0.2] = TREES
    label[relief > 0.55] = BARE
    parks = towns & (fbm(x_m, y_m, 260.0, field_key(seed, "parks"), octaves=2) > 0.45)
    label[towns] = BUILT_UP
    label[parks] = GRASS

    lake = relief < _LAKE_NOISE
    lake_level = np.float32(_BASE_ELEVATION_M + _RELIEF_M * _LAKE_NOISE)
    shore = (relief >= _LAKE_NOISE) & (relief < _SHORE_NOISE) & (moisture > -0.15)
    river_bed = river < 0.012
    floodplain = (river < 0.035) & (moisture > 0.3) & ~towns
    label[shore | floodplain] = WETLAND
    label[lake | river_bed] = WATER

    # Water surfaces are flat and lowest; wetlands sit just above them.
    elevation = np.where(lake, lake_level, elevation)
    elevation = np.where(shore, np.minimum(elevation, lake_level + 0.8 + np.float32(0.4) * moisture), elevation)
    elevation = np.where(floodplain, elevation - np.float32(1.0), elevation)
    return Ground(label=label, elevation_m=elevation.astype(np.float32), parcel=parcel, texture=texture)


def elevation(x_m: np.ndarray, y_m: np.ndarray, seed: int) -> np.ndarray:
    """Terrain height (float32 metres) at pixel centres, consistent with :func:`ground`'s water."""
    return ground(x_m, y_m, seed).elevation_m
