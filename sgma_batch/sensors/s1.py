"""Sentinel-1 profiles: RTC (linear gamma0 -> dB), already-dB backscatter, and GRD (radar geometry: refused)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from sgma_batch.errors import UnsupportedSceneError
from sgma_batch.scenes import S1_BANDS, Scene
from sgma_batch.sensors import _items as it
from sgma_batch.sensors.base import SensorProfile

log = logging.getLogger(__name__)


def s1_band_of_asset(key: str, asset: Mapping[str, Any]) -> str | None:
    """``vv``/``vh`` from keys ``vv``, ``gamma0_vv``, ``VV`` ... or a single ``eo:bands`` name."""
    bands = asset.get("eo:bands") or asset.get("bands")
    if isinstance(bands, list) and len(bands) == 1 and isinstance(bands[0], dict):
        name = str(bands[0].get("name", "")).lower()
        if name in S1_BANDS:
            return name
    k = key.lower()
    for pol in S1_BANDS:
        if k == pol or k.endswith((f"_{pol}", f"-{pol}")):
            return pol
    return None


class _S1Base(SensorProfile):
    modality = "s1"
    bands = S1_BANDS
    file_band_orders = MappingProxyType({2: ("vv", "vh")})

    def asset_keys(self, item: Mapping[str, Any]) -> dict[str, str]:
        """Band -> asset key; single-band assets first, then multi-band ones (VV and VH in one file)."""
        found: dict[str, str] = {}
        multi: dict[str, str] = {}
        for key in sorted(item.get("assets") or {}):
            asset = item["assets"][key]
            roles = asset.get("roles") or ["data"]
            if "data" not in roles:
                continue
            band = s1_band_of_asset(key, asset)
            if band is not None and band not in found:
                found[band] = key
            entries = it.band_entries(asset)
            if band is None and len(entries) > 1:
                names = [self.canonical_band(n) for e in entries for n in it.band_names(e)[:1]]
                held = [b for b in names if b] or list(self.file_band_orders.get(len(entries), ()))
                for b in held:
                    multi.setdefault(b, key)
        return {**multi, **found}


class S1RTCProfile(_S1Base):
    """Radiometrically terrain-corrected gamma0 in linear power (PC ``sentinel-1-rtc``, AWS RTC)."""

    name = "s1-rtc"
    collections = ("sentinel-1-rtc", "sentinel1-rtc-aws", "sentinel-1-c1-rtc")
    product = "RTC"

    def extra(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {"linear": True}

    def harmonise(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Linear gamma0 -> dB (10·log10); nodata, non-finite and values <= 0 are invalid."""
        data, valid = self._stack(scene, arrays)  # (C, H, W), (H, W)
        valid &= (data > 0).all(axis=0)
        if scene.extra.get("linear", True):
            safe = np.where(data > 0, data, 1.0)
            db = 10.0 * np.log10(safe)
        else:
            db = data
        return self._zero_invalid(db.astype(np.float32), valid), valid  # (C, H, W) dB


class S1DbProfile(_S1Base):
    """Backscatter already in dB on a map grid (e.g. the Sen1Floods11 S1Hand chip, pyroSAR outputs)."""

    name = "s1-db"
    collections = ()
    auto_select = False
    product = ""  # dB says nothing about terrain correction: the item's sar:product_type, if any, does

    def extra(self, item: Mapping[str, Any]) -> dict[str, Any]:
        kind = (item.get("properties") or {}).get("sar:product_type")
        return {"linear": False, **({"level": str(kind).upper()} if isinstance(kind, str) and kind else {})}

    def harmonise(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Pass dB through; nodata and non-finite values are invalid."""
        data, valid = self._stack(scene, arrays, np.float32)
        return self._zero_invalid(data, valid), valid


class S1GRDProfile(_S1Base):
    """Sentinel-1 GRD: parsed, but refused for map-grid use while in radar geometry (GCPs, no map CRS)."""

    name = "s1-grd"
    collections = ("sentinel-1-grd", "sentinel1-grd")
    auto_select = False
    product = "GRD"

    def extra(self, item: Mapping[str, Any]) -> dict[str, Any]:
        props = item.get("properties") or {}
        epsg = it.epsg_of(props)
        # A GRD's proj:epsg 4326 and transform only describe its footprint (GCP georeferencing), not a map grid.
        radar = not (epsg is not None and epsg != 4326 and it.transform_of(props) is not None)
        # the units its metadata names (raster:bands unit "dB" or "linear"/"power"); linear when none does
        units = {str(it.raster_band0(a).get("unit", "")).lower() for a in (item.get("assets") or {}).values()
                 if "data" in (a.get("roles") or ["data"])} - {""}
        return {"radar_geometry": radar, "linear": not (units and units <= {"db", "decibel", "decibels"})}

    def check_map_grid(self, scene: Scene) -> None:
        if scene.extra.get("radar_geometry", True):
            raise UnsupportedSceneError(
                f"scene {scene.id} ({scene.collection}) is Sentinel-1 GRD in radar geometry and cannot be put on a "
                f"map grid; use a terrain-corrected collection (--collections s1=sentinel-1-rtc), or, if its files "
                f"are map-projected (any CRS), name their units: --collections s1={scene.collection}:s1-db (dB) or "
                f"s1={scene.collection}:s1-rtc (linear)"
            )

    def harmonise(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """A map-projected GRD: linear -> dB as RTC, or dB passed through when its metadata says dB."""
        self.check_map_grid(scene)
        if scene.extra.get("linear", True):
            return S1RTCProfile().harmonise(scene, arrays)
        return S1DbProfile().harmonise(scene, arrays)
