"""Agreement of a store's class map with a label raster (per class, confusion matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sgma_batch.errors import StoreIncompatibleError
from sgma_batch.store.layout import CLASS_NODATA, _quiet_zarr


def _raster_nodata(labels: str | Path) -> float | None:
    """The label raster's own nodata tag (None: untagged or unreadable here; the read reports the latter)."""
    import rasterio

    try:
        with rasterio.open(str(labels)) as src:
            return None if src.nodata is None else float(src.nodata)
    except Exception:  # noqa: BLE001 - the agreement read below raises the real error
        return None


@_quiet_zarr
def label_agreement(
    path: str | Path,
    labels: str | Path,
    *,
    label_nodata: float | None = None,
    label_map: str | Any | None = None,
) -> dict[str, Any]:
    """Per-class agreement of a store's ``class`` with a label raster.

    Args:
        label_nodata: label value meaning "no label"; default the raster's nodata tag, else 255.
        label_map: ``"0:dry,1:water,-1:nodata"`` (or a :class:`sgma_batch.chip_files.LabelMap`): label values
            -> class names; names that are store classes are scored as those classes (by name), ``nodata`` /
            ``ignore`` are not scored, other names are truth "other" (their pixels count against the store
            classes predicted there). Without a map the label values must be the store's class ids.

    The labels are read onto each chunk's grid (a plain window when aligned, nearest-neighbour warping
    otherwise), so memory is O(chunk). Labelled pixels the store left unmapped (255) are counted apart.
    A label value neither in the map nor a class id is a :class:`StoreIncompatibleError` naming it.

    Returns:
        ``{"pixels", "unmapped", "overall", "confusion" (K x K, rows = truth), "per_class": {name:
        {"truth", "predicted", "correct", "producer", "user", "iou"}}}`` (ratios None where undefined).
    """
    import zarr
    from odc.geo.geobox import GeoBox, GeoboxTiles

    from sgma_batch import storage
    from sgma_batch.read import _read_band
    from sgma_batch.scenes import AssetRef

    root = zarr.open_group(storage.zarr_store(storage.location(path), read_only=True), mode="r")  # path or URL
    attrs = root.attrs.asdict()
    names = [c["name"] for c in attrs["sgma:classes"]]
    grid = attrs["sgma:grid"]
    k = len(names)
    from affine import Affine

    gbox = GeoBox(tuple(grid["shape"]), Affine(*grid["transform"]), grid["crs"] if grid["epsg"] is None
                  else f"EPSG:{grid['epsg']}")
    tiles = GeoboxTiles(gbox, (grid["tile_px"], grid["tile_px"]))
    nodata = float(label_nodata) if label_nodata is not None else _raster_nodata(labels)
    nodata = float(CLASS_NODATA) if nodata is None else nodata
    lut = _value_lut(label_map, names)  # label value -> store class id, -1 = other, None = not scored
    ref = AssetRef(str(labels), "label", "label", nodata=nodata)
    confusion = np.zeros((k + 1, k), np.int64)  # last row: truth "other" (map classes the store lacks)
    unmapped = 0
    arr = root["class"]
    for iy in range(tiles.shape.y):
        for ix in range(tiles.shape.x):
            ys, xs = tiles.roi[iy, ix]
            pred = np.asarray(arr[ys, xs])
            raw = _read_band(ref, tiles[iy, ix], categorical=True)
            labelled = np.isfinite(raw) & (raw != np.float32(nodata))
            truth = np.full(raw.shape, -2, np.int64)  # -2: not scored
            if lut is None:
                values = raw[labelled]
                bad = values[(values < 0) | (values >= k) | (values != np.round(values))]
                if bad.size:
                    raise StoreIncompatibleError(
                        f"label value {_num(bad[0])} in {labels} is not one of the store's class ids 0..{k - 1} "
                        f"({', '.join(names)}); give --label-map VALUE:NAME,... (e.g. 0:dry,1:water,-1:nodata) "
                        "or --label-nodata VALUE"
                    )
                truth[labelled] = values.astype(np.int64)
            else:
                for value, cls in lut.items():
                    hit = labelled & (raw == np.float32(value))
                    truth[hit] = -2 if cls is None else (k if cls == -1 else cls)
                    labelled &= ~(hit & (cls is None))
                known = np.isin(raw, np.asarray(list(lut), np.float32))
                if (labelled & ~known).any():
                    v = raw[labelled & ~known]
                    raise StoreIncompatibleError(
                        f"label values {sorted({_num(x) for x in v[:10000]})[:6]} in {labels} are not in --label-map "
                        f"({', '.join(str(x) for x in sorted(lut))}); add them (NAME 'nodata' = not scored)"
                    )
            scored = labelled & (truth >= 0)
            mapped = scored & (pred != CLASS_NODATA)
            unmapped += int((scored & ~mapped).sum())
            confusion += np.bincount(truth[mapped] * k + pred[mapped].astype(np.int64),
                                     minlength=(k + 1) * k).reshape(k + 1, k)
    other = confusion[k]
    confusion = confusion[:k]
    tp = np.diag(confusion)
    truth_n, pred_n = confusion.sum(1), confusion.sum(0) + other

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    total = int(confusion.sum() + other.sum())
    return {
        "pixels": total,
        "unmapped": unmapped,
        "label_nodata": _num(nodata),
        "other": {"pixels": int(other.sum()), "predicted_as": {n: int(other[i]) for i, n in enumerate(names)}},
        "overall": ratio(int(tp.sum()), total),
        "confusion": confusion.tolist(),
        "per_class": {
            name: {"truth": int(truth_n[i]), "predicted": int(pred_n[i]), "correct": int(tp[i]),
                   "producer": ratio(int(tp[i]), int(truth_n[i])), "user": ratio(int(tp[i]), int(pred_n[i])),
                   "iou": ratio(int(tp[i]), int(truth_n[i] + pred_n[i] - tp[i]))}
            for i, name in enumerate(names)
        },
    }


def _num(v: Any) -> float | int:
    f = float(v)
    return int(f) if f.is_integer() else f


def _value_lut(label_map: Any, names: list[str]) -> dict[float, int | None] | None:
    """Label value -> store class id (by class name, case-insensitive), -1 = other, None = not scored."""
    if label_map is None:
        return None
    from sgma_batch.chip_files import IGNORE_INDEX, LabelMap
    from sgma_batch.errors import ChipStoreError

    try:
        lm = label_map if isinstance(label_map, LabelMap) else LabelMap.parse(str(label_map))
    except ChipStoreError as exc:
        raise StoreIncompatibleError(str(exc)) from None
    index = {n.lower(): i for i, n in enumerate(names)}
    out: dict[float, int | None] = {}
    for value, cls in lm.values.items():
        if cls == IGNORE_INDEX:
            out[float(value)] = None
        else:
            out[float(value)] = index.get(str(lm.classes[cls]["name"]).lower(), -1)
    if all(v is None or v == -1 for v in out.values()):
        raise StoreIncompatibleError(f"no --label-map class is one of the store's classes ({', '.join(names)}); "
                                     "name them as the store does")
    return out
