"""Seeded procedural noise evaluated on any window of a global grid.

Every smooth field of the synthetic world is a function of map coordinates (metres) and a seed only,
never of the window it is evaluated on: a lattice of hashed random values, interpolated with a
smoothstep. So a tile computed alone is bit-identical to the same pixels of a larger window, and a
whole extent never has to be held in memory.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PX = np.uint64(0x9E3779B97F4A7C15)
_PY = np.uint64(0xC2B2AE3D27D4EB4F)
_PK = np.uint64(0x165667B19E3779F9)


def _mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective avalanche on uint64."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def hash_uniform(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """Uniform values in [0, 1) from integer lattice coordinates and a key (broadcasting).

    Args:
        ix: integer column coordinates (any signed integer dtype).
        iy: integer row coordinates, broadcastable against ``ix``.
        key: a non-negative integer that names the field (seed and field id combined).

    Returns:
        float64 array of the broadcast shape.
    """
    with np.errstate(over="ignore"):
        hx = np.asarray(ix).astype(np.int64).view(np.uint64) * _PX
        hy = np.asarray(iy).astype(np.int64).view(np.uint64) * _PY
        h = _mix(hx ^ _mix(hy ^ (np.uint64(key & 0xFFFFFFFFFFFFFFFF) * _PK)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def field_key(seed: int, name: str) -> int:
    """A stable 63-bit key for a named field of a seed (independent of Python's hash salt)."""
    h = 1469598103934665603
    for byte in f"{seed}:{name}".encode():
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def _axis_weights(coord_m: np.ndarray, cell_m: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Lattice index and smoothstep weight along one axis; returns (index-i0, weight, i0, count)."""
    u = coord_m / cell_m
    i = np.floor(u)
    t = u - i
    t = t * t * (3.0 - 2.0 * t)
    i = i.astype(np.int64)
    i0 = int(i.min())
    n = int(i.max()) - i0 + 2
    return i - i0, t, i0, n


def value_noise(x_m: np.ndarray, y_m: np.ndarray, cell_m: float, key: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the grid spanned by 1-d coordinate vectors.

    Args:
        x_m: (W,) x coordinates of pixel centres in metres.
        y_m: (H,) y coordinates of pixel centres in metres.
        cell_m: lattice spacing in metres (the feature size).
        key: field key (see :func:`field_key`).

    Returns:
        (H, W) float32 array.
    """
    jx, tx, ix0, nx = _axis_weights(np.asarray(x_m, dtype=np.float64), cell_m)
    jy, ty, iy0, ny = _axis_weights(np.asarray(y_m, dtype=np.float64), cell_m)
    lat = hash_uniform(
        np.arange(ix0, ix0 + nx)[None, :], np.arange(iy0, iy0 + ny)[:, None], key
    ).astype(np.float32) * 2.0 - 1.0  # (ny, nx)
    # Separable interpolation: first along x for every lattice row, then along y.
    tx32 = tx.astype(np.float32)
    rows = lat[:, jx] * (1.0 - tx32) + lat[:, jx + 1] * tx32  # (ny, W)
    ty32 = ty.astype(np.float32)[:, None]
    return rows[jy] * (1.0 - ty32) + rows[jy + 1] * ty32  # (H, W)


def fbm(
    x_m: np.ndarray, y_m: np.ndarray, cell_m: float, key: int, *, octaves: int = 4, gain: float = 0.5
) -> np.ndarray:
    """Fractal sum of value noise (largest feature ``cell_m``), rescaled to roughly unit range.

    Returns:
        (H, W) float32, about [-1, 1] with a standard deviation near 0.3.
    """
    total = np.zeros((len(y_m), len(x_m)), dtype=np.float32)
    amp, norm, cell = 1.0, 0.0, float(cell_m)
    for octave in range(octaves):
        total += np.float32(amp) * value_noise(x_m, y_m, cell, key + 7919 * (octave + 1))
        norm += amp
        amp *= gain
        cell /= 2.0
    return total / np.float32(norm)
