"""The finish step: overviews, consolidated metadata, quicklooks and the STAC Item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgma_batch.store.layout import StoreLayout, _multiscales_attrs, _quiet_zarr
from sgma_batch.store.manifest import _atomic_write_json
from sgma_batch.store.overviews import _write_overviews
from sgma_batch.store.render import render_drivers, render_quicklook
from sgma_batch.store.stac import _stac_item


@_quiet_zarr
def finish_store(path: str | Path, layout: StoreLayout, *, footprint: Any = None) -> dict[str, Any]:
    """Overviews, consolidated metadata, quicklook PNGs (classes; drivers and confidence) and a STAC Item.

    Args:
        footprint: the AOI as an odc-geo Geometry in EPSG:4326 (default: the grid's extent).
    """
    import zarr

    path = Path(path)
    factors = _write_overviews(path, layout)
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    root.attrs.update({"sgma:overviews": factors, **_multiscales_attrs(layout, factors)})
    attrs = root.attrs.asdict()
    zarr.consolidate_metadata(str(path), zarr_format=layout.zarr_format)
    render_quicklook(path, path / "quicklook.png")
    render_drivers(path, path / "drivers.png")
    item = _stac_item(path, layout, attrs, footprint)
    _atomic_write_json(path / "item.json", item)
    return item
