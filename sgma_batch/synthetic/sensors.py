"""What Sentinel-2 L2A, Sentinel-1 RTC and a DEM would record over a :class:`Ground` window.

Class spectra and backscatter are chosen so that some class pairs are separable only by one modality:

* ``built_up`` and ``bare`` share one optical spectrum and texture statistics; SAR tells them apart
  (double bounce makes built-up bright, smooth soil is dark);
* ``crops`` and ``grass`` share one backscatter; they differ in red-edge and NIR;
* ``water`` and ``wetland`` are optically nearly alike (dark, flooded); SAR (moderate return from
  emergent vegetation) and the DEM (wetland sits above the flat water level) tell them apart.

Optical values are BOA reflectance turned into L2A digital numbers with the +1000 offset of processing
baseline >= 04.00 (``DN = 10000 * reflectance + 1000``, 0 = nodata). SAR values are linear gamma0 with
multiplicative gamma speckle (nodata -32768).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from sgma_batch.synthetic.landscape import BARE, BUILT_UP, CROPS, GRASS, TREES, WATER, WETLAND, Ground
from sgma_batch.synthetic.noise import fbm, field_key, hash_uniform

S2_NODATA = 0
S1_NODATA = -32768.0
BOA_OFFSET_DN = 1000
S1_LOOKS = 4.4  # equivalent number of looks, as in the Planetary Computer RTC items

SCL_NODATA, SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER = 0, 3, 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10

#                  blue   green  red    re1    re2    re3    nir    nir08  swir16 swir22
_SOIL_URBAN = [0.110, 0.130, 0.150, 0.175, 0.195, 0.205, 0.220, 0.230, 0.290, 0.250]
SPECTRA = np.array(
    [
        [0.045, 0.058, 0.040, 0.030, 0.022, 0.020, 0.016, 0.014, 0.008, 0.005],  # water
        [0.025, 0.048, 0.028, 0.085, 0.210, 0.265, 0.300, 0.310, 0.150, 0.070],  # trees
        [0.040, 0.075, 0.055, 0.110, 0.230, 0.270, 0.290, 0.300, 0.230, 0.130],  # grass
        [0.040, 0.075, 0.050, 0.135, 0.320, 0.400, 0.430, 0.440, 0.235, 0.125],  # crops
        _SOIL_URBAN,  # built_up
        _SOIL_URBAN,  # bare
        [0.046, 0.060, 0.041, 0.034, 0.032, 0.032, 0.028, 0.025, 0.012, 0.007],  # wetland
    ],
    dtype=np.float32,
)  # (K, 10) BOA reflectance
_CLOUD = np.array([0.62, 0.60, 0.60, 0.60, 0.60, 0.59, 0.58, 0.57, 0.42, 0.30], dtype=np.float32)

#                     VV dB   VH dB
SIGMA0_DB = np.array(
    [
        [-21.0, -28.0],  # water
        [-7.5, -13.0],  # trees
        [-11.0, -17.5],  # grass
        [-11.0, -17.5],  # crops (identical to grass)
        [-2.0, -9.5],  # built_up: double bounce
        [-15.0, -24.0],  # bare: smooth soil
        [-9.5, -17.0],  # wetland: emergent vegetation over water
    ],
    dtype=np.float32,
)  # (K, 2)

_CLOUD_CELL_M = 1500.0
_CLOUD_SIGMA = 0.237  # measured standard deviation of the cloud fbm (6 octaves, gain 0.55)


@dataclass(frozen=True)
class HalfPlane:
    """Pixels with ``nx * x + ny * y > c`` (map metres) lie outside a swath: nodata."""

    nx: float
    ny: float
    c: float

    def outside(self, x_m: np.ndarray, y_m: np.ndarray) -> np.ndarray:
        """(H, W) bool, True outside the swath."""
        return (self.nx * x_m[None, :] + self.ny * y_m[:, None]) > self.c


@dataclass(frozen=True)
class OpticalPass:
    """One Sentinel-2 acquisition: its weather and geometry."""

    key: int  # field key for this date's clouds and noise
    cloud_fraction: float  # target cloud cover in [0, 1)
    shadow_shift_m: tuple[float, float]  # (dx, dy) from a cloud to its shadow
    growth: float  # crop phenology in [0, 1]
    edge: HalfPlane | None = None


@dataclass(frozen=True)
class RadarPass:
    """One Sentinel-1 acquisition."""

    key: int
    wind_db: float  # roughening of open water by wind
    soil_moisture_db: float  # bare soil wetness
    edge: HalfPlane | None = None


def cloud_alpha(x_m: np.ndarray, y_m: np.ndarray, key: int, fraction: float) -> np.ndarray:
    """Cloud opacity in [0, 1], (H, W); about ``fraction`` of the area is non-zero."""
    if fraction <= 0.0:
        return np.zeros((len(y_m), len(x_m)), dtype=np.float32)
    density = fbm(x_m, y_m, _CLOUD_CELL_M, key, octaves=6, gain=0.55)
    threshold = np.float32(_CLOUD_SIGMA * float(ndtri(1.0 - min(fraction, 0.999))))
    return np.clip((density - threshold) / np.float32(0.10), 0.0, 1.0)


def s2_window(
    g: Ground, x_m: np.ndarray, y_m: np.ndarray, p: OpticalPass, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sentinel-2 L2A digital numbers and SCL over a window.

    Returns:
        (10, H, W) uint16 DN in S2_BANDS order (offset +1000, 0 = nodata) and (H, W) uint8 SCL.
    """
    label = g.label
    refl = np.moveaxis(SPECTRA[label], -1, 0).copy()  # (10, H, W)
    crops = label == CROPS
    if crops.any():
        # Phenology: per-parcel sowing offsets around the date's growth stage; red-edge/NIR move most.
        stage = np.clip(np.float32(p.growth) + (g.parcel - np.float32(0.5)) * np.float32(0.4), 0.0, 1.0)
        boost = (np.float32(0.85) + np.float32(0.3) * stage)[crops]
        for b in (3, 4, 5, 6, 7):
            refl[b][crops] *= boost
    refl *= np.float32(1.0) + np.float32(0.08) * g.texture[None]
    refl *= (np.float32(1.0) + np.float32(0.03) * rng.standard_normal(refl.shape, dtype=np.float32))
    refl += np.float32(0.003) * rng.standard_normal(refl.shape, dtype=np.float32)

    nir, red = refl[6], refl[2]
    ndvi = (nir - red) / np.maximum(nir + red, np.float32(1e-3))
    scl = np.full(label.shape, SCL_NOT_VEGETATED, dtype=np.uint8)
    scl[ndvi > 0.35] = SCL_VEGETATION
    scl[(nir < 0.06) & (ndvi < 0.2)] = SCL_WATER

    alpha = cloud_alpha(x_m, y_m, p.key, p.cloud_fraction)
    dx, dy = p.shadow_shift_m
    shadow = cloud_alpha(x_m - dx, y_m - dy, p.key, p.cloud_fraction)
    shade = (shadow > 0.25) & (alpha == 0)
    refl[:, shade] *= np.float32(0.35)
    refl = refl * (1.0 - alpha)[None] + _CLOUD[:, None, None] * alpha[None]
    scl[shade] = SCL_SHADOW
    scl[(alpha > 0) & (alpha <= 0.15)] = SCL_CIRRUS
    scl[(alpha > 0.15) & (alpha <= 0.6)] = SCL_CLOUD_MEDIUM
    scl[alpha > 0.6] = SCL_CLOUD_HIGH

    dn = np.clip(np.rint(refl * np.float32(10000.0)) + BOA_OFFSET_DN, 1, 65535).astype(np.uint16)
    if p.edge is not None:
        out = p.edge.outside(x_m, y_m)
        dn[:, out] = S2_NODATA
        scl[out] = SCL_NODATA
    return dn, scl


def s1_window(
    g: Ground, x_m: np.ndarray, y_m: np.ndarray, p: RadarPass, seed: int, rng: np.random.Generator
) -> np.ndarray:
    """Sentinel-1 RTC linear gamma0 over a window.

    Returns:
        (2, H, W) float32 (VV, VH), nodata -32768 outside the swath.
    """
    label = g.label
    db = np.moveaxis(SIGMA0_DB[label], -1, 0).copy()  # (2, H, W)
    db += np.float32(1.2) * g.texture[None]
    db[:, label == WATER] += np.float32(p.wind_db)
    db[:, label == BARE] += np.float32(p.soil_moisture_db)
    built = label == BUILT_UP
    if built.any():
        # Strong point scatterers: ~20 m building facets facing the sensor.
        ix = np.floor(x_m / 20.0).astype(np.int64)[None, :]
        iy = np.floor(y_m / 20.0).astype(np.int64)[:, None]
        facets = hash_uniform(ix, iy, field_key(seed, "facets")) < 0.18
        db[:, built & facets] += np.float32(7.0)
    gamma0 = np.power(np.float32(10.0), db / np.float32(10.0))
    gamma0 *= rng.gamma(S1_LOOKS, 1.0 / S1_LOOKS, size=gamma0.shape).astype(np.float32)
    if p.edge is not None:
        gamma0[:, p.edge.outside(x_m, y_m)] = S1_NODATA
    return gamma0.astype(np.float32, copy=False)


__all__ = [
    "BARE",
    "BUILT_UP",
    "CROPS",
    "GRASS",
    "SIGMA0_DB",
    "SPECTRA",
    "TREES",
    "WATER",
    "WETLAND",
    "HalfPlane",
    "OpticalPass",
    "RadarPass",
    "cloud_alpha",
    "s1_window",
    "s2_window",
]
