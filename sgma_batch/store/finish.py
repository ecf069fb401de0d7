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
    from sgma_batch import storage

    path = storage.location(path)  # a path or an s3:// gs:// az:// URL: everything below goes to the store
    with storage.write_errors(path):  # a failed object-store request: one line, exit 41
        return _finish(path, layout, footprint)


def _finish(path: Path | str, layout: StoreLayout, footprint: Any) -> dict[str, Any]:
    import zarr

    from sgma_batch import storage

    factors = _write_overviews(path, layout)
    store = storage.zarr_store(path)
    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    root.attrs.update({"sgma:overviews": factors, **_multiscales_attrs(layout, factors)})
    attrs = root.attrs.asdict()
    zarr.consolidate_metadata(store, zarr_format=layout.zarr_format)
    render_quicklook(path, storage.join(path, "quicklook.png"))
    render_drivers(path, storage.join(path, "drivers.png"))
    item = _stac_item(path, layout, attrs, footprint)
    _atomic_write_json(storage.join(path, "item.json"), item)
    return item
