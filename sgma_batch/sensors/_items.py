"""Helpers that read the common STAC fields every sensor profile needs (datetime, bbox, proj:*)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from shapely.geometry import shape

from sgma_batch.errors import UnsupportedSceneError


def parse_datetime(value: str) -> datetime:
    """Parse an RFC 3339 timestamp (also the ``"2024-04-19 04:59:16+00:00"`` form PC writes) to UTC."""
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.11 accepts up to 6 fractional digits; trim longer ones (nanoseconds).
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        rest = tail[len(digits):]
        text = f"{head}.{digits[:6]}{rest}" if digits else head + rest
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def item_time_range(item: Mapping[str, Any]) -> tuple[datetime, datetime]:
    """(start, end) of an item: start/end_datetime when given, else its datetime for both."""
    props = item.get("properties") or {}
    dt = props.get("datetime")
    start = props.get("start_datetime") or dt
    end = props.get("end_datetime") or dt
    if start is None or end is None:
        raise UnsupportedSceneError(f"STAC item {item.get('id')} has neither datetime nor start/end_datetime; fix the catalogue")
    return parse_datetime(start), parse_datetime(end)


def item_datetime(item: Mapping[str, Any]) -> datetime:
    """The nominal acquisition time: ``datetime``, else the middle of start/end."""
    props = item.get("properties") or {}
    if props.get("datetime"):
        return parse_datetime(props["datetime"])
    start, end = item_time_range(item)
    return start + (end - start) / 2


def epsg_of(fields: Mapping[str, Any]) -> int | None:
    """EPSG code from ``proj:epsg`` or ``proj:code`` ("EPSG:32633")."""
    epsg = fields.get("proj:epsg")
    if isinstance(epsg, int):
        return epsg
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def transform_of(fields: Mapping[str, Any]) -> tuple[float, ...] | None:
    t = fields.get("proj:transform")
    if isinstance(t, (list, tuple)) and len(t) >= 6:
        return tuple(float(v) for v in t[:6])
    return None


def shape_of(fields: Mapping[str, Any]) -> tuple[int, int] | None:
    s = fields.get("proj:shape")
    if isinstance(s, (list, tuple)) and len(s) == 2:
        return int(s[0]), int(s[1])
    return None


def bbox_of(item: Mapping[str, Any]) -> tuple[float, float, float, float]:
    bbox = item.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) >= 4:
        if len(bbox) == 6:
            return float(bbox[0]), float(bbox[1]), float(bbox[3]), float(bbox[4])
        return float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])
    minx, miny, maxx, maxy = shape(item["geometry"]).bounds
    return minx, miny, maxx, maxy


def raster_band0(asset: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first ``raster:bands`` entry of an asset (or ``bands`` in STAC 1.1), or an empty mapping."""
    for key in ("raster:bands", "bands"):
        bands = asset.get(key)
        if isinstance(bands, list) and bands and isinstance(bands[0], dict):
            return bands[0]
    return {}


def band_entries(asset: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The per-band entries of an asset, one per band of its file: ``bands`` (STAC 1.1), else ``eo:bands``,
    else ``raster:bands`` (all three, when several are given, describe the same file bands in order)."""
    for key in ("bands", "eo:bands", "raster:bands"):
        bands = asset.get(key)
        if isinstance(bands, list) and bands and all(isinstance(b, dict) for b in bands):
            return list(bands)
    return []


def band_names(entry: Mapping[str, Any]) -> list[str]:
    """The names a band entry is known by: ``name``, then ``common_name`` / ``eo:common_name``."""
    return [v for k in ("name", "common_name", "eo:common_name") if isinstance(v := entry.get(k), str)]


def nodata_of(asset: Mapping[str, Any], index: int = 1) -> float | None:
    """Nodata of band ``index`` (1-based) of an asset: its ``raster:bands`` / ``bands`` entry, else the asset's."""
    entry: Mapping[str, Any] = {}
    for key in ("raster:bands", "bands"):
        bands = asset.get(key)
        if isinstance(bands, list) and len(bands) >= index and isinstance(bands[index - 1], dict):
            entry = bands[index - 1]
            if "nodata" in entry:
                break
    nodata = entry.get("nodata", asset.get("nodata"))
    if nodata is None:
        return None
    if isinstance(nodata, str):  # "nan", "inf", "-inf" per the raster extension
        return float(nodata)
    return float(nodata)


def freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))
