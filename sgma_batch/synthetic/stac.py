"""STAC JSON for the synthetic archive, following the conventions of the catalogues it stands in for.

* ``sentinel-2-c1-l2a``: Earth Search c1 (asset keys ``blue`` .. ``swir22``, ``scl``; ``eo:bands`` with
  the ``B0x`` names and common names, per-asset ``proj:shape``/``proj:transform``, ``raster:bands`` with
  scale 0.0001 and offset -0.1, item-level ``proj:epsg``, ``s2:*`` statistics, created/updated stamps);
* ``sentinel-1-rtc``: Planetary Computer (``vv``/``vh`` linear gamma0 float32, nodata -32768,
  ``proj:*`` on the item, ``sar:*``/``sat:*`` properties);
* ``cop-dem-glo-30``: Planetary Computer (one ``data`` asset, float32 metres);
* ``sgma-labels``: the ground truth (``labels`` asset, uint8 class ids, 255 nodata).

Hrefs are relative (a self-contained static catalogue). Every stamp derives from the acquisition dates,
never from the wall clock, so the JSON bytes depend only on the generation parameters.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from odc.geo.geobox import GeoBox

STAC_VERSION = "1.0.0"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

S2_COLLECTION = "sentinel-2-c1-l2a"
S1_COLLECTION = "sentinel-1-rtc"
DEM_COLLECTION = "cop-dem-glo-30"
LABEL_COLLECTION = "sgma-labels"

# (asset key, file name, band name, common name, centre wavelength um, FWHM um, title) as Earth Search c1.
S2_ASSETS: tuple[tuple[str, str, str, str, float, float, str], ...] = (
    ("blue", "B02.tif", "B02", "blue", 0.49, 0.098, "Blue - 10m"),
    ("green", "B03.tif", "B03", "green", 0.56, 0.045, "Green - 10m"),
    ("red", "B04.tif", "B04", "red", 0.665, 0.038, "Red - 10m"),
    ("rededge1", "B05.tif", "B05", "rededge", 0.704, 0.019, "Red Edge 1 - 10m"),
    ("rededge2", "B06.tif", "B06", "rededge", 0.74, 0.018, "Red Edge 2 - 10m"),
    ("rededge3", "B07.tif", "B07", "rededge", 0.783, 0.028, "Red Edge 3 - 10m"),
    ("nir", "B08.tif", "B08", "nir", 0.842, 0.145, "NIR 1 - 10m"),
    ("nir08", "B8A.tif", "B8A", "nir08", 0.865, 0.033, "NIR 2 - 10m"),
    ("swir16", "B11.tif", "B11", "swir16", 1.61, 0.143, "SWIR 1.6\u03bcm - 10m"),
    ("swir22", "B12.tif", "B12", "swir22", 2.19, 0.242, "SWIR 2.2\u03bcm - 10m"),
)
S2_SCL_FILE = "SCL.tif"
S1_FILES = {"vv": "iw-vv.rtc.tiff", "vh": "iw-vh.rtc.tiff"}
DEM_FILE = "dem.tif"
LABEL_FILE = "labels.tif"

_EXT = "https://stac-extensions.github.io"


def stamp(t: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a Z, as Earth Search writes it."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write JSON with a stable layout (the same dict gives the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def grid_fields(geobox: GeoBox) -> dict[str, Any]:
    """``proj:shape`` and ``proj:transform`` (6 affine terms) of a grid."""
    a = geobox.affine
    return {
        "proj:shape": [int(geobox.shape[0]), int(geobox.shape[1])],
        "proj:transform": [float(a.a), float(a.b), float(a.c), float(a.d), float(a.e), float(a.f)],
    }


def _item_links(collection: str) -> list[dict[str, str]]:
    return [
        {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../collection.json", "type": "application/json",
         "title": collection},
        {"rel": "collection", "href": "../collection.json", "type": "application/json",
         "title": collection},
    ]


def item(
    *, item_id: str, collection: str, when: datetime, geometry: dict[str, Any], bbox: list[float],
    properties: dict[str, Any], assets: dict[str, Any], extensions: list[str],
) -> dict[str, Any]:
    """A STAC Item dict with relative links into the static catalogue."""
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions,
        "id": item_id,
        "collection": collection,
        "bbox": bbox,
        "geometry": geometry,
        "properties": {"datetime": stamp(when), **properties},
        "links": _item_links(collection),
        "assets": assets,
    }


def collection(
    *, collection_id: str, title: str, description: str, bbox: list[float], start: datetime,
    end: datetime | None, item_ids: list[str], extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A STAC Collection dict listing its items by relative href."""
    links = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
    ]
    links += [{"rel": "item", "href": f"./{i}/{i}.json", "type": "application/geo+json"} for i in item_ids]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": collection_id,
        "title": title,
        "description": description,
        "license": "CC-BY-4.0",
        "keywords": ["synthetic", "sgma-batch"],
        "providers": [{"name": "sgma-batch synthetic archive", "roles": ["producer", "processor", "host"]}],
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[stamp(start), stamp(end) if end else None]]},
        },
        **(extra or {}),
        "links": links,
    }


def catalog(*, catalog_id: str, description: str, collection_ids: list[str]) -> dict[str, Any]:
    """The root static Catalog."""
    links = [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
    links += [
        {"rel": "child", "href": f"./{c}/collection.json", "type": "application/json", "title": c}
        for c in collection_ids
    ]
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": catalog_id,
        "title": "sgma-batch synthetic archive",
        "description": description,
        "links": links,
    }


def s2_extensions() -> list[str]:
    return [
        f"{_EXT}/eo/v1.1.0/schema.json", f"{_EXT}/file/v2.1.0/schema.json",
        f"{_EXT}/grid/v1.1.0/schema.json", f"{_EXT}/mgrs/v1.0.0/schema.json",
        f"{_EXT}/processing/v1.1.0/schema.json", f"{_EXT}/projection/v1.1.0/schema.json",
        f"{_EXT}/raster/v1.1.0/schema.json", f"{_EXT}/sentinel-2/v1.0.0/schema.json",
        f"{_EXT}/view/v1.0.0/schema.json",
    ]


def s1_extensions() -> list[str]:
    return [
        f"{_EXT}/sar/v1.0.0/schema.json", f"{_EXT}/sat/v1.0.0/schema.json",
        f"{_EXT}/projection/v1.1.0/schema.json", f"{_EXT}/file/v2.0.0/schema.json",
        f"{_EXT}/raster/v1.1.0/schema.json",
    ]


def raster_extensions() -> list[str]:
    return [f"{_EXT}/projection/v1.1.0/schema.json", f"{_EXT}/raster/v1.1.0/schema.json",
            f"{_EXT}/file/v2.1.0/schema.json"]


def label_extensions() -> list[str]:
    return raster_extensions() + [f"{_EXT}/label/v1.0.1/schema.json",
                                  f"{_EXT}/classification/v1.1.0/schema.json"]


def processing_time(when: datetime, hours: float) -> datetime:
    """A deterministic processing stamp some hours after the acquisition."""
    return when + timedelta(hours=hours)
