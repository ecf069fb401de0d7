"""Sentinel-2 L2A and L1C profiles (Earth Search v0/v1/c1 and Planetary Computer asset schemes)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import numpy as np

from sgma_batch.scenes import S2_BANDS, Scene
from sgma_batch.sensors._items import band_entries, band_names, item_datetime
from sgma_batch.sensors.base import SensorProfile

log = logging.getLogger(__name__)

#: ESA band names -> canonical names (B8A is nir08; PC labels its common_name "rededge", so names win).
S2_NAME_TO_BAND: dict[str, str] = {
    "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
    "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
#: The 13 L1C bands in file order (the Sen1Floods11 S2Hand chip stores them as bands 1..13).
S2_L1C_FILE_ORDER: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
#: SCL classes that make an optical pixel invalid: no data, saturated, cloud shadow, cloud medium/high, cirrus.
SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
DN_SCALE = 1e-4
BOA_OFFSET_DN = -1000.0
BASELINE_04_START = datetime(2022, 1, 25, tzinfo=UTC)
_BASELINE_IN_URI = re.compile(r"_N(\d{2})(\d{2})_")


def _norm_name(name: str) -> str:
    name = name.strip().upper()
    m = re.fullmatch(r"B0?(\d{1,2}A?)", name)
    if m:
        digits = m.group(1)
        return "B8A" if digits == "8A" else f"B{int(digits):02d}"
    return name


def s2_band_of_asset(key: str, asset: Mapping[str, Any]) -> str | None:
    """Canonical band of a single-band S2 asset via ``eo:bands`` name/common_name, else its key."""
    canon = set(S2_BANDS) | {"scl"}
    bands = asset.get("eo:bands") or asset.get("bands")
    if isinstance(bands, list) and len(bands) > 1:
        return None  # visual / preview composites
    if isinstance(bands, list) and len(bands) == 1 and isinstance(bands[0], dict):
        name = bands[0].get("name")
        if isinstance(name, str) and _norm_name(name) in S2_NAME_TO_BAND:
            return S2_NAME_TO_BAND[_norm_name(name)]
        common = bands[0].get("common_name") or bands[0].get("eo:common_name")
        if isinstance(common, str) and common in canon:
            return common
    if key.lower() in canon:
        return key.lower()
    if _norm_name(key) in S2_NAME_TO_BAND:
        return S2_NAME_TO_BAND[_norm_name(key)]
    return None


#: Assets that hold several bands but are pictures, not data (8-bit true-colour composites, previews).
_PICTURE_KEYS = ("visual", "tci", "overview", "thumbnail", "preview", "rendered")


def s2_bands_of_multiband_asset(key: str, asset: Mapping[str, Any], orders: Mapping[int, tuple[str, ...]]) -> list[str]:
    """Canonical bands held by a multi-band S2 data asset (named in its band entries, else by file band order)."""
    entries = band_entries(asset)
    roles = asset.get("roles") or ["data"]
    if len(entries) <= 1 or "data" not in roles or any(p in key.lower() for p in _PICTURE_KEYS):
        return []
    canon = set(S2_BANDS) | {"scl"}
    found = []
    for entry in entries:
        for name in band_names(entry):
            band = S2_NAME_TO_BAND.get(_norm_name(name)) or (name if name in canon else None)
            if band is not None:
                found.append(band)
                break
    if not found:
        found = [b for b in orders.get(len(entries), ()) if b]
    return found


def _asset_rank(key: str, band: str, asset: Mapping[str, Any]) -> tuple[int, int, str]:
    media = str(asset.get("type", "")).lower()
    is_cog = 0 if ("tiff" in media or media == "") else 1  # jp2 copies rank after COGs
    exact = 0 if key.lower() == band or _norm_name(key) in S2_NAME_TO_BAND else 1
    return is_cog, exact, key


def processing_baseline(item: Mapping[str, Any]) -> tuple[int, int] | None:
    """(major, minor) processing baseline from ``s2:processing_baseline``, ``processing:version`` or the product URI."""
    props = item.get("properties") or {}
    for field in ("s2:processing_baseline", "processing:version"):
        value = props.get(field)
        if isinstance(value, str) and re.fullmatch(r"\d{1,2}\.\d{1,2}", value.strip()):
            major, minor = value.strip().split(".")
            return int(major), int(minor)
    for field in ("s2:product_uri", "s2:granule_id", "s2:datatake_id"):
        value = props.get(field)
        if isinstance(value, str):
            m = _BASELINE_IN_URI.search(value + "_") or re.search(r"_N(\d{2})\.?(\d{2})$", value)
            if m:
                return int(m.group(1)), int(m.group(2))
    return None


#: Canonical band per file band of unlabelled multi-band S2 files: all 13 L1C bands, or the 12 of L2A (no B10).
_L1C_ORDER = tuple(S2_NAME_TO_BAND.get(n, "") for n in S2_L1C_FILE_ORDER)
_L2A_ORDER = tuple(S2_NAME_TO_BAND.get(n, "") for n in S2_L1C_FILE_ORDER if n != "B10")


class _S2Base(SensorProfile):
    modality = "s2"
    bands = S2_BANDS
    file_band_orders = MappingProxyType({13: _L1C_ORDER, 12: _L2A_ORDER})

    def canonical_band(self, name: str) -> str | None:
        band = S2_NAME_TO_BAND.get(_norm_name(name))
        if band is None and name.strip().lower() in (*self.bands, *self.mask_bands):
            band = name.strip().lower()
        return band if band in (*self.bands, *self.mask_bands) else None

    def asset_keys(self, item: Mapping[str, Any]) -> dict[str, str]:
        """Band -> asset key; a single-band asset of a band wins over a multi-band asset that holds it."""
        wanted = set(self.bands) | set(self.mask_bands)
        best: dict[str, tuple[tuple[int, int, str], str]] = {}
        for key, asset in (item.get("assets") or {}).items():
            band = s2_band_of_asset(key, asset)
            if band is not None:
                candidates = [(band, _asset_rank(key, band, asset))]
            else:
                media = str(asset.get("type", "")).lower()
                rank = (0 if ("tiff" in media or media == "") else 1, 2, key)
                candidates = [(b, rank) for b in s2_bands_of_multiband_asset(key, asset, self.file_band_orders)]
            for b, rank in candidates:
                if b in wanted and (b not in best or rank < best[b][0]):
                    best[b] = (rank, key)
        return {band: key for band, (_, key) in sorted(best.items())}

    def extra(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Record the DN offset to add before scaling (applied once, in :meth:`harmonise`)."""
        props = item.get("properties") or {}
        baseline = processing_baseline(item)
        applied = props.get("earthsearch:boa_offset_applied")
        if applied is True:
            offset, reason = 0.0, "earthsearch:boa_offset_applied"
        elif baseline is not None:
            offset = BOA_OFFSET_DN if baseline >= (4, 0) else 0.0
            reason = f"baseline {baseline[0]:02d}.{baseline[1]:02d}"
        else:
            offset = BOA_OFFSET_DN if item_datetime(item) >= BASELINE_04_START else 0.0
            reason = "acquisition date (no baseline in item)"
            log.debug("item %s: no processing baseline, BOA offset %s by %s", item.get("id"), offset, reason)
        out: dict[str, Any] = {"dn_offset": offset, "dn_scale": DN_SCALE, "offset_reason": reason}
        # the processing level the item itself states (s2:product_type S2MSI1C / S2MSI2A, processing:level),
        # checked against the model card by the preflight whatever profile reads it
        kind = str(props.get("s2:product_type") or props.get("processing:level") or "").upper()
        level = "L1C" if kind.endswith(("1C", "L1C")) else "L2A" if kind.endswith(("2A", "L2A")) else None
        if level:
            out["level"] = level
        if baseline is not None:
            out["processing_baseline"] = f"{baseline[0]:02d}.{baseline[1]:02d}"
        return out

    def _reflectance(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """DN -> reflectance (C, H, W) float32 and validity (H, W); invalid pixels not zeroed yet."""
        raw = self._raw_bands(scene, arrays)
        offset, scale = float(scene.extra.get("dn_offset", 0.0)), float(scene.extra.get("dn_scale", DN_SCALE))
        out = np.empty((len(raw), *raw[0].shape), np.float32)  # (C, H, W)
        valid = np.ones(raw[0].shape, bool)  # (H, W)
        buf = np.empty(raw[0].shape, np.float64)  # one band at a time: cache-sized, not a (C, H, W) float64
        for i, (band, a) in enumerate(zip(self.bands, raw, strict=True)):
            self._band_valid(scene, band, a, valid)
            valid &= a != 0  # raw DN 0 is no data in every S2 product, whatever the catalogue records
            np.add(a, offset, out=buf, dtype=np.float64)  # (DN + offset) * scale in float64, then float32:
            buf *= scale  # the same roundings as the whole-stack computation
            out[i] = buf
        return out, valid


class S2L2AProfile(_S2Base):
    """Sentinel-2 L2A surface reflectance; SCL classes 0,1,3,8,9,10 mask pixels out."""

    name = "s2-l2a"
    product = "L2A"
    mask_bands = ("scl",)
    collections = ("sentinel-2-c1-l2a", "sentinel-2-l2a", "sentinel-s2-l2a-cogs", "sentinel-s2-l2a")

    def harmonise(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """DN -> BOA reflectance with the baseline offset applied exactly once, and the SCL mask."""
        out, valid = self._reflectance(scene, arrays)
        scl = arrays.get("scl")
        if scl is not None:
            scl = np.asarray(scl)
            valid &= np.isfinite(scl) & ~np.isin(scl, SCL_INVALID)
        else:
            log.debug("scene %s: no SCL array, masking by nodata only", scene.id)
        return self._zero_invalid(out, valid), valid


class S2L1CProfile(_S2Base):
    """Sentinel-2 L1C top-of-atmosphere reflectance (TOA x 10000), e.g. the Sen1Floods11 S2Hand chip."""

    name = "s2-l1c"
    product = "L1C"
    collections = ("sentinel-2-c1-l1c", "sentinel-2-l1c", "sentinel-s2-l1c")
    auto_select = False  # the demo models are trained on L2A; L1C only when asked

    def harmonise(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """DN -> TOA reflectance (offset only for baseline >= 04.00)."""
        out, valid = self._reflectance(scene, arrays)
        return self._zero_invalid(out, valid), valid

    @staticmethod
    def arrays_from_file_order(stack: np.ndarray) -> dict[str, np.ndarray]:
        """Split a 13-band (13, H, W) L1C stack in ESA file order into canonical band arrays."""
        if stack.ndim != 3 or stack.shape[0] != len(S2_L1C_FILE_ORDER):
            raise ValueError(f"expected a (13, H, W) L1C stack, got shape {stack.shape}")
        out = {}
        for i, name in enumerate(S2_L1C_FILE_ORDER):
            band = S2_NAME_TO_BAND.get(name)
            if band is not None and band in S2_BANDS:
                out[band] = stack[i]
        return out
