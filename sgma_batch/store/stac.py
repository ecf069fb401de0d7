"""The STAC Item that describes a finished store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sgma_batch.store.layout import StoreLayout


def _stac_item(path: Path | str, layout: StoreLayout, attrs: Mapping[str, Any], footprint: Any) -> dict[str, Any]:
    g = layout.geobox
    ll = footprint if footprint is not None else g.extent.to_crs("EPSG:4326")
    geometry = ll.json if hasattr(ll, "json") else ll
    bbox = list(ll.boundingbox) if hasattr(ll, "boundingbox") else None
    window = attrs.get("sgma:window") or [None, None]
    created = attrs.get("sgma:created", datetime.now(UTC).isoformat())
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
        ],
        "id": path.name if isinstance(path, Path) else path.rstrip("/").rsplit("/", 1)[-1],
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": None,
            "start_datetime": window[0],
            "end_datetime": window[1],
            "created": created,
            "proj:code": f"EPSG:{g.crs.epsg}" if g.crs.epsg else None,
            "proj:shape": [g.shape.y, g.shape.x],
            "proj:transform": list(g.transform)[:6],
            "sgma:model": attrs.get("sgma:model"),
            "sgma:model_hash": attrs.get("sgma:model_hash"),
            "sgma:config_hash": attrs.get("sgma:config_hash"),
            "sgma:modalities": list(layout.modalities),
            "classification:classes": [
                {"value": i, "name": n, "color_hint": c.lstrip("#").upper()} for i, (n, c) in enumerate(layout.classes)
            ],
        },
        "links": [],
        "assets": {
            "data": {"href": "./", "type": "application/vnd+zarr", "roles": ["data"],
                     "title": f"Zarr v{layout.zarr_format} mosaic"},
            "quicklook": {"href": "./quicklook.png", "type": "image/png", "roles": ["overview"],
                          "title": "class map with legend"},
            "drivers": {"href": "./drivers.png", "type": "image/png", "roles": ["overview"],
                        "title": "robustness RGB (S2 red, S1 green, DEM blue) and confidence"},
        },
    }
