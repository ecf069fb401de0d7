"""The STAC Item that describes a finished store (``item.json`` at the store's root).

STAC 1.1.0 with the projection (v2.0.0), raster (v2.0.0: ``bands`` with ``nodata``/``data_type`` and
``raster:scale``) and classification (v1.1.0, the version the MLM extension references) extensions. One asset
per map variable (its Zarr array, ``./class`` ...), one for the whole store and the two quicklook PNGs;
hrefs are relative to the item, which sits inside the store, so the store can be moved or copied to object
storage as a whole. The tests validate it against the vendored schemas (tests/schemas/stac).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from sgma_batch.store.layout import NODATA, ROBUSTNESS_SCALE, StoreLayout

STAC_VERSION = "1.1.0"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v2.0.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"


def rfc3339(value: str | datetime | date, *, end_of_day: bool = False) -> str:
    """An RFC 3339 UTC date-time (``...Z``): a date becomes its first second (its last with ``end_of_day``),
    a naive date-time is taken as UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value) if "T" in value or " " in value else date.fromisoformat(value)
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(23, 59, 59) if end_of_day else time(0, 0, 0))
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def item_id(attrs: Mapping[str, Any], layout: StoreLayout) -> str:
    """``sgma-<start>_<end>-<12 hex>``: the hash covers the AOI, the window and every output knob (the run's
    config, whose hash is ``sgma:config_hash``), the model and the grid, so two stores share an id only
    when they hold the same map; the dates keep it readable. Not the store's folder name: every monthly
    reprocessing store of every AOI may be called ``2024-01.zarr``."""
    key = {k: attrs.get(f"sgma:{k}") for k in ("config", "config_hash", "model_hash", "window")}
    key["grid"] = layout.grid_record()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    window = attrs.get("sgma:window") or []
    dates = "_".join(str(w)[:10] for w in window if w)
    return f"sgma-{dates}-{digest}" if dates else f"sgma-{digest}"


def lonlat_bbox(geom: Any) -> list[float]:
    """``[west, south, east, north]`` of a lon/lat (Multi)Polygon. Longitudes are a circle: the bbox is the
    circle minus the widest gap between the parts, so an AOI across the antimeridian (split at ±180 as RFC
    7946 asks, or islands on both sides) gets ``west > east``, as the STAC spec asks."""
    parts = list(getattr(geom, "geoms", [geom]))
    bounds = [p.bounds for p in parts]  # (minx, miny, maxx, maxy)
    south, north = min(b[1] for b in bounds), max(b[3] for b in bounds)
    merged: list[list[float]] = []
    for lo, hi in sorted((b[0], b[2]) for b in bounds):
        if merged and lo <= merged[-1][1] + 1e-9:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    wrap = merged[0][0] + 360.0 - merged[-1][1]  # the gap across ±180
    gap, i = max([(merged[k + 1][0] - merged[k][1], k) for k in range(len(merged) - 1)], default=(-1.0, -1))
    if gap > wrap:
        return [merged[i + 1][0], south, merged[i][1], north]
    return [merged[0][0], south, merged[-1][1], north]


def _classes(layout: StoreLayout) -> list[dict[str, Any]]:
    """Classification class objects: ``name`` as the v2.0.0 pattern allows, ``description`` (required by
    v1.1.0) the class name as the checkpoint's card gives it, and the nodata value."""
    out: list[dict[str, Any]] = [
        {"value": i, "name": re.sub(r"[^0-9A-Za-z_-]", "_", n), "description": n, "color_hint": c.lstrip("#").upper()}
        for i, (n, c) in enumerate(layout.classes)
    ]
    out.append({"value": int(NODATA["class"]), "name": "nodata", "nodata": True,
                "description": "no data: outside the AOI, or no input at that pixel"})
    return out


def _assets(layout: StoreLayout) -> dict[str, dict[str, Any]]:
    res = abs(layout.geobox.resolution.x)
    fmt = f"Zarr v{layout.zarr_format}"

    def band(name: str, nodata: Any, dtype: str, **more: Any) -> dict[str, Any]:
        return {"name": name, "nodata": nodata, "data_type": dtype, "raster:spatial_resolution": res, **more}

    def zarr_asset(var: str, title: str, bands: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
        return {"href": f"./{var}", "type": ZARR_MEDIA_TYPE, "roles": ["data"], "title": title, "bands": bands,
                **more}

    assets: dict[str, dict[str, Any]] = {
        "zarr": {"href": "./", "type": ZARR_MEDIA_TYPE, "roles": ["data"],
                 "title": f"{fmt} mosaic (all variables, overviews/<f>, manifest/)"},
        "class": zarr_asset(
            "class", "land-cover class id", [band("class", int(NODATA["class"]), "uint8")],
            **{"classification:classes": _classes(layout)}),
        "confidence": zarr_asset(
            "confidence", "max blended class probability",
            [band("confidence", int(NODATA["confidence"]), "uint8", **{"raster:scale": 1 / 255, "raster:offset": 0})]),
        "modality_mask": zarr_asset(
            "modality_mask", "modalities present per pixel (bit m = modality m)",
            [band("modality_mask", int(NODATA["modality_mask"]), "uint8")],
            **{"classification:bitfields": [
                {"name": m, "offset": i, "length": 1, "description": f"{m} present",
                 "classes": [{"value": 0, "name": "absent", "description": f"no {m} input"},
                             {"value": 1, "name": "present", "description": f"{m} input present"}]}
                for i, m in enumerate(layout.modalities)]}),
        "robustness": zarr_asset(
            "robustness", "SGF fusion weight per modality (robustness map)",
            [band(m, int(NODATA["robustness"]), "uint8", **{"raster:scale": 1 / ROBUSTNESS_SCALE, "raster:offset": 0},
                  description=f"fusion weight of {m}, stored x {ROBUSTNESS_SCALE}") for m in layout.modalities]),
    }
    if layout.write_probability:
        assets["probability"] = zarr_asset(
            "probability", "blended class probability",
            [band(n, "nan", "float16") for n, _ in layout.classes])
    assets["quicklook"] = {"href": "./quicklook.png", "type": "image/png", "roles": ["overview"],
                           "title": "class map with legend"}
    assets["drivers"] = {"href": "./drivers.png", "type": "image/png", "roles": ["overview"],
                         "title": "robustness RGB (S2 red, S1 green, DEM blue) and confidence"}
    return assets


def _self_href(path: Path | str) -> str:
    if isinstance(path, Path):
        return (path.resolve() / "item.json").as_uri()
    return path.rstrip("/") + "/item.json"


def _stac_item(path: Path | str, layout: StoreLayout, attrs: Mapping[str, Any], footprint: Any) -> dict[str, Any]:
    """The item of the store at ``path`` from its root attributes; ``footprint`` is the AOI in EPSG:4326 (an
    odc-geo Geometry, split at ±180 when it crosses the antimeridian); default: the grid's extent."""
    g = layout.geobox
    ll = footprint if footprint is not None else g.extent.to_crs("EPSG:4326")
    geometry = json.loads(json.dumps(ll.json if hasattr(ll, "json") else ll))  # plain lists, as in item.json
    shape = ll.geom if hasattr(ll, "geom") else _shapely(geometry)
    window: Sequence[Any] = attrs.get("sgma:window") or [None, None]
    created = rfc3339(attrs.get("sgma:created") or datetime.now(UTC))
    times: dict[str, Any]
    if window[0] and window[1]:
        times = {"datetime": None, "start_datetime": rfc3339(window[0]),
                 "end_datetime": rfc3339(window[1], end_of_day=True)}
    else:
        times = {"datetime": created}
    extent = g.extent.boundingbox
    proj: dict[str, Any] = {
        "proj:code": f"EPSG:{g.crs.epsg}" if g.crs.epsg else None,
        "proj:shape": [g.shape.y, g.shape.x],
        "proj:transform": list(g.transform)[:6],
        "proj:bbox": [extent.left, extent.bottom, extent.right, extent.top],
    }
    if g.crs.epsg is None:
        proj["proj:wkt2"] = g.crs.to_wkt()
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION, RASTER, CLASSIFICATION],
        "id": item_id(attrs, layout),
        "geometry": geometry,
        "bbox": lonlat_bbox(shape),
        "properties": {
            "title": "sgma-batch land-cover mosaic",
            **times,
            "created": created,
            **proj,
            "sgma:model": attrs.get("sgma:model"),
            "sgma:model_hash": attrs.get("sgma:model_hash"),
            "sgma:config_hash": attrs.get("sgma:config_hash"),
            "sgma:modalities": list(layout.modalities),
            "sgma:software": attrs.get("sgma:software"),
        },
        "links": [{"rel": "self", "href": _self_href(path), "type": "application/geo+json"}],
        "assets": _assets(layout),
    }


def _shapely(geometry: Mapping[str, Any]) -> Any:
    from shapely.geometry import shape

    return shape(geometry)
