"""Agreement of a store's class map with a label raster (per class, confusion matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sgma_batch.errors import StoreIncompatibleError
from sgma_batch.store.layout import CLASS_NODATA, _quiet_zarr


@_quiet_zarr
def label_agreement(path: str | Path, labels: str | Path, *, label_nodata: int = CLASS_NODATA) -> dict[str, Any]:
    """Per-class agreement of a store's ``class`` with a label raster (class ids, ``label_nodata`` = none).

    The labels are read onto each chunk's grid (a plain window when aligned, nearest-neighbour warping
    otherwise), so memory is O(chunk). Labelled pixels the store left unmapped (255) are counted apart.

    Returns:
        ``{"pixels", "unmapped", "overall", "confusion" (K x K, rows = truth), "per_class": {name:
        {"truth", "predicted", "correct", "producer", "user", "iou"}}}`` (ratios None where undefined).
    """
    import zarr
    from odc.geo.geobox import GeoBox, GeoboxTiles

    from sgma_batch.read import _read_band
    from sgma_batch.scenes import AssetRef

    root = zarr.open_group(str(path), mode="r")
    attrs = root.attrs.asdict()
    names = [c["name"] for c in attrs["sgma:classes"]]
    grid = attrs["sgma:grid"]
    k = len(names)
    from affine import Affine

    gbox = GeoBox(tuple(grid["shape"]), Affine(*grid["transform"]), grid["crs"] if grid["epsg"] is None
                  else f"EPSG:{grid['epsg']}")
    tiles = GeoboxTiles(gbox, (grid["tile_px"], grid["tile_px"]))
    ref = AssetRef(str(labels), "label", "label", nodata=float(label_nodata))
    confusion = np.zeros((k, k), np.int64)
    unmapped = 0
    arr = root["class"]
    for iy in range(tiles.shape.y):
        for ix in range(tiles.shape.x):
            ys, xs = tiles.roi[iy, ix]
            pred = np.asarray(arr[ys, xs])
            truth = _read_band(ref, tiles[iy, ix], categorical=True)
            labelled = (truth != label_nodata) & np.isfinite(truth)
            truth = np.where(labelled, truth, 0).astype(np.int64)
            if labelled.any() and truth[labelled].max() >= k:
                raise StoreIncompatibleError(
                    f"label {int(truth[labelled].max())} in {labels} is not one of the store's {k} classes; "
                    "give labels with the model's class ids"
                )
            mapped = labelled & (pred != CLASS_NODATA)
            unmapped += int((labelled & ~mapped).sum())
            confusion += np.bincount(truth[mapped] * k + pred[mapped].astype(np.int64),
                                     minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    truth_n, pred_n = confusion.sum(1), confusion.sum(0)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    total = int(confusion.sum())
    return {
        "pixels": total,
        "unmapped": unmapped,
        "overall": ratio(int(tp.sum()), total),
        "confusion": confusion.tolist(),
        "per_class": {
            name: {"truth": int(truth_n[i]), "predicted": int(pred_n[i]), "correct": int(tp[i]),
                   "producer": ratio(int(tp[i]), int(truth_n[i])), "user": ratio(int(tp[i]), int(pred_n[i])),
                   "iou": ratio(int(tp[i]), int(truth_n[i] + pred_n[i] - tp[i]))}
            for i, name in enumerate(names)
        },
    }
