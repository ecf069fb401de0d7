"""The output Zarr store, by job (see DESIGN.md "Output store"):

* :mod:`~sgma_batch.store.layout`: variables, nodata, georeferencing attributes, the template; create, open
  and check a store;
* :mod:`~sgma_batch.store.manifest`: chunk-aligned tile writes and the manifest (the commit point);
* :mod:`~sgma_batch.store.record`: :class:`TileRecord`, the typed manifest record (JSON, schema version);
* :mod:`~sgma_batch.store.overviews`: nearest-neighbour overviews;
* :mod:`~sgma_batch.store.render`: the quicklook PNGs;
* :mod:`~sgma_batch.store.stac`: the STAC Item;
* :mod:`~sgma_batch.store.finish`: the finish step that runs the last three.

The public names are re-exported here: ``from sgma_batch.store import X``.
"""

from sgma_batch.store.finish import finish_store
from sgma_batch.store.layout import (
    CLASS_NODATA,
    LAYOUT_VERSION,
    MANIFEST_DIR,
    NODATA,
    ROBUSTNESS_SCALE,
    StoreLayout,
    TileArrays,
    check_store,
    open_mosaic,
    open_or_create_store,
)
from sgma_batch.store.manifest import (
    commit_tile,
    encode_robustness,
    manifest_summary,
    read_manifest,
    tile_records_done,
    write_tile,
)
from sgma_batch.store.overviews import _OVERVIEW_FILL, _overview_levels  # noqa: F401 - tests check them
from sgma_batch.store.record import DONE_STATUSES, SCHEMA_VERSION, TileRecord, TileStatus, TileTiming
from sgma_batch.store.render import render_drivers, render_quicklook

__all__ = [
    "CLASS_NODATA",
    "DONE_STATUSES",
    "LAYOUT_VERSION",
    "MANIFEST_DIR",
    "NODATA",
    "ROBUSTNESS_SCALE",
    "SCHEMA_VERSION",
    "StoreLayout",
    "TileArrays",
    "TileRecord",
    "TileStatus",
    "TileTiming",
    "check_store",
    "commit_tile",
    "encode_robustness",
    "finish_store",
    "manifest_summary",
    "open_mosaic",
    "open_or_create_store",
    "read_manifest",
    "render_drivers",
    "render_quicklook",
    "tile_records_done",
    "write_tile",
]
