"""The naive sequential baseline that sgma-batch is measured against.

What a first script does: per tile, read every modality with rasterio (the same ranked scenes, harmonised
and normalised with the model card), forward the whole halo tile once, and add the probabilities into a
whole-mosaic accumulator held in memory (K x H x W float32); at the end, argmax and write one GeoTIFF.
No Ray, no sliding windows, no chunked store, no manifest (a crash loses everything), memory O(area).

    python benchmarks/naive_baseline.py --catalog CAT --aoi min_lon,min_lat,max_lon,max_lat \
        --start 2024-05-01 --end 2024-06-30 --out naive.tif --json

The tile plan (grid, halo, scenes per tile) is sgma-batch's, so both do the same reads over the same tiles.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

try:
    from peer_adapter import forward_probs, model_input  # run as a script from benchmarks/
except ImportError:
    from benchmarks.peer_adapter import forward_probs, model_input


def _crop(task) -> tuple[slice, slice]:
    """(rows, cols) of the core inside the halo tile; a halo clipped to the grid is not centred."""
    if hasattr(task, "crop"):
        return task.crop
    ys, xs = task.region
    py = (task.halo.shape.y - (ys.stop - ys.start)) // 2
    px = (task.halo.shape.x - (xs.stop - xs.start)) // 2
    return slice(py, py + ys.stop - ys.start), slice(px, px + xs.stop - xs.start)


def run_naive(catalog: str, aoi: str, start: str, end: str, out: str, *, model: str | None = None,
              tile_px: int = 256, halo_px: int = 32, threads: int = 2) -> dict:
    import rasterio
    import torch

    from sgma_batch.read import read_modality
    from sgma_batch.run import RunSpec, _prepare
    from sgma_batch.sensors import get_profile

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    spec = RunSpec(aoi=aoi, out=out + ".unused", start=start, end=end, catalog=catalog, model=model,
                   tile_px=tile_px, halo_px=halo_px)
    prep = _prepare(spec)
    net, card = prep.loaded.result()  # loaded by _prepare while it searched (as sgma-batch does)
    net.eval()
    h, w = prep.geobox.shape.yx
    k = len(card.classes)
    acc = np.zeros((k, h, w), np.float32)  # the whole-mosaic accumulator: O(area)
    t_read = t_fwd = 0.0
    forwarded = 0
    for task in prep.tasks:
        t1 = time.perf_counter()
        inputs, masks = {}, {}
        for m in card.modality_names:
            scenes = task.scenes.get(m, ())
            if not scenes:
                continue
            data, valid = read_modality(scenes, task.halo, get_profile(scenes[0].sensor))
            if valid.any():
                inputs[m], masks[m] = model_input(card, m, data, valid), valid  # (C, H, W), (H, W)
        t2 = time.perf_counter()
        t_read += t2 - t1
        if not inputs:
            continue
        probs = forward_probs(net, inputs, masks)  # (K, Hh, Wh)
        forwarded += task.halo.shape.y * task.halo.shape.x
        t_fwd += time.perf_counter() - t2
        ys, xs = task.region
        acc[:, ys, xs] += probs[(slice(None), *_crop(task))]
    cls = np.where(acc.sum(0) > 0, acc.argmax(0), 255).astype(np.uint8)
    with rasterio.open(out, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", nodata=255,
                       crs=prep.geobox.crs.wkt, transform=prep.geobox.transform, compress="deflate",
                       tiled=True) as dst:
        dst.write(cls, 1)
    seconds = time.perf_counter() - t0
    return {"tiles": len(prep.tasks), "pixels": int(h * w), "seconds": round(seconds, 3),
            "read_s": round(t_read, 3), "forward_s": round(t_fwd, 3), "forwarded_px": forwarded,
            "tile_px": tile_px, "halo_px": halo_px, "mapped": float((cls != 255).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--aoi", required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--end", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--halo-px", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run_naive(a.catalog, a.aoi, a.start, a.end, a.out, model=a.model, tile_px=a.tile_px,
                    halo_px=a.halo_px, threads=a.threads)
    print(json.dumps(res) if a.json else res)


if __name__ == "__main__":
    main()
