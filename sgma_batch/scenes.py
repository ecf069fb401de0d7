"""Small frozen records that describe scenes; they cross process boundaries (Ray) cheaply.

A :class:`Scene` is what a STAC Item becomes after its sensor profile has read it: assets keyed by
canonical band name, the grid the assets sit on (where the catalogue says), and the few properties
later stages rank and harmonise by. Never ship pystac objects through Ray: ship these.

Canonical names (shared by sensor profiles, the synthetic archive, readers and model cards):

* modalities: ``s2`` (Sentinel-2 optical), ``s1`` (Sentinel-1 SAR backscatter), ``dem`` (elevation);
* ``s2`` bands: ``blue green red rededge1 rededge2 rededge3 nir nir08 swir16 swir22`` plus the
  categorical ``scl`` (L2A only) used for the availability mask;
* ``s1`` bands: ``vv vh`` (values in dB after harmonisation);
* ``dem`` bands: ``elevation`` (metres).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Mapping

MODALITIES: tuple[str, ...] = ("s2", "s1", "dem")

S2_BANDS: tuple[str, ...] = (
    "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22",
)
S1_BANDS: tuple[str, ...] = ("vv", "vh")
DEM_BANDS: tuple[str, ...] = ("elevation",)
MODALITY_BANDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"s2": S2_BANDS, "s1": S1_BANDS, "dem": DEM_BANDS}
)


@dataclass(frozen=True)
class AssetRef:
    """One readable raster asset of a scene, under its canonical band name."""

    href: str
    band: str
    key: str  # the asset key in the source catalogue ("B04", "red", "vv", "gamma0_vv", ...)
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    # Grid of this asset where the catalogue gives it per asset (PC S2: 10/20/60 m assets differ).
    epsg: int | None = None
    transform: tuple[float, ...] | None = None  # affine (a, b, c, d, e, f)
    shape: tuple[int, int] | None = None  # (rows, cols)
    # 1-based band of the file that holds this band: multi-band assets (Sen1Floods11, Earth Engine exports)
    # keep every band in one file; from eo:bands / raster:bands / bands, or the profile's file band order.
    index: int = 1


@dataclass(frozen=True)
class Scene:
    """A scene of one modality, normalised from a STAC Item by its sensor profile."""

    id: str
    collection: str
    modality: str  # one of MODALITIES
    sensor: str  # sensor profile name: "s2-l2a", "s2-l1c", "s1-rtc", "s1-grd", "dem-glo30", ...
    datetime: datetime  # timezone-aware UTC
    geometry: Mapping[str, Any]  # GeoJSON geometry in CRS84
    bbox: tuple[float, float, float, float]  # (min_lon, min_lat, max_lon, max_lat)
    assets: Mapping[str, AssetRef]  # canonical band name -> asset
    epsg: int | None = None  # item-level grid (proj:epsg / proj:code), if any
    transform: tuple[float, ...] | None = None
    shape: tuple[int, int] | None = None
    cloud_cover: float | None = None  # percent, eo:cloud_cover
    orbit_state: str | None = None  # "ascending" / "descending" (sat:orbit_state)
    updated: str | None = None  # the item's "updated" stamp (or its datetime when absent)
    # Profile-specific harmonisation facts, e.g. {"boa_offset": -1000.0} or {"linear": True}.
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def stamp(self) -> str:
        """What identifies this scene's content for content hashes: id plus updated stamp."""
        return f"{self.collection}/{self.id}@{self.updated or self.datetime.isoformat()}"
