"""The Pangeo peer: what a user writes with odc-stac and dask instead of sgma-batch.

1. Grid and scenes from sgma-batch's own planning (``sgma_batch.run._prepare``), so the peer maps the same
   GeoBox from the same search results; the scenes of each modality are ranked once over the whole AOI
   (``colocate.plan_cell``), not per tile.
2. ``odc.stac.load`` of every ranked scene, lazily, on that GeoBox, in dask chunks of ``tile_px`` (the
   chunks are sgma-batch's tile cores); data bands bilinear, mask bands (SCL) nearest.
3. Per chunk (``map_blocks``): each scene harmonised with sgma-batch's sensor profile (S2 DN offset and
   scale, SCL cloud mask, S1 linear -> dB, DEM nodata), a per-pixel first-valid composite over the ranked
   scenes (as ``read.read_modality``, but every scene is read: a lazy graph cannot stop early), then the
   model card's normalisation (``peer_adapter.model_input``).
4. ``dask.array.map_overlap`` with ``depth=halo_px`` and ``boundary="none"``: each block plus its halo is
   forwarded once through the model (``peer_adapter.forward_probs``) and the argmax (uint8, 255 where no
   modality has data) is trimmed back to the block. ``"none"`` because a block on the grid's edge then
   sees exactly the context sgma-batch's tiles see (their halo is clipped to the grid); ``"reflect"``
   would feed the model mirrored pixels the other peers never see.
5. ``to_zarr`` of the class array with dask's threaded scheduler (``--threads`` workers); each block
   sets ``torch.set_num_threads(1)`` in its worker thread, so ``threads`` forwards run side by side on
   one core each (the fair setting on a machine with ``threads`` cores).

    python benchmarks/peer_dask.py --catalog CAT --aoi min_lon,min_lat,max_lon,max_lat \
        --start 2024-05-03 --end 2024-05-08 --out dask.zarr --json

odc-stac is not a dependency of sgma-batch: install the benchmark extra first (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    from peer_adapter import forward_probs, model_input  # run as a script from benchmarks/
except ImportError:
    from benchmarks.peer_adapter import forward_probs, model_input

CLASS_NODATA = 255


def _harmonised_block(*blocks: np.ndarray, scenes: Sequence[Any], bands: Sequence[Sequence[str]], profile: Any,
                      card: Any, modality: str) -> np.ndarray:
    """One chunk of one modality: raw bands of every ranked scene (in ``bands`` order, scene after scene)
    -> (C + 1, h, w) float32: the normalised first-valid composite, then the validity (0/1) channel."""
    h, w = blocks[0].shape
    data = np.zeros((len(profile.bands), h, w), np.float32)  # (C, h, w) physical units
    valid = np.zeros((h, w), bool)
    it = iter(blocks)
    for scene, names in zip(scenes, bands, strict=True):
        arrays = {b: next(it) for b in names}
        if valid.all():
            continue  # read anyway (the graph is lazy), but not needed
        sdata, svalid = profile.harmonise(scene, arrays)  # (C, h, w), (h, w)
        svalid = np.asarray(svalid, bool) & np.isfinite(sdata).all(axis=0)
        take = svalid & ~valid
        np.copyto(data, np.asarray(sdata, np.float32), where=take)
        valid |= take
    return np.concatenate([model_input(card, modality, data, valid), valid[None].astype(np.float32)])


def _class_block(block: np.ndarray, *, model: Any, parts: Sequence[tuple[str, int, int]],
                 forwarded: list[int]) -> np.ndarray:
    """A block plus its halo (C_all, H, W) -> class ids (H, W) uint8 from one forward of the whole box."""
    import torch

    torch.set_num_threads(1)  # this worker thread's intra-op pool
    inputs, masks = {}, {}
    for m, c0, c in parts:
        valid = block[c0 + c] > 0.5
        if valid.any():
            inputs[m], masks[m] = block[c0 : c0 + c], valid
    h, w = block.shape[1:]
    if not inputs:
        return np.full((h, w), CLASS_NODATA, np.uint8)
    probs = forward_probs(model, inputs, masks)  # (K, H, W)
    forwarded.append(h * w)
    return probs.argmax(0).astype(np.uint8)


def _stac_items(catalog: str, ids: set[str]) -> dict[str, Any]:
    import pystac

    cat = pystac.Catalog.from_file(catalog)
    cat.make_all_asset_hrefs_absolute()
    return {item.id: item for item in cat.get_items(recursive=True) if item.id in ids}


def run_dask(catalog: str, aoi: str, start: str, end: str, out: str, *, model: str | None = None,
             tile_px: int = 512, halo_px: int = 32, threads: int = 2) -> dict:
    import dask
    import dask.array as da
    import odc.stac

    from sgma_batch.colocate import plan_cell
    from sgma_batch.run import RunSpec, _prepare
    from sgma_batch.sensors import get_profile

    t0 = time.perf_counter()
    spec = RunSpec(aoi=aoi, out=out + ".unused", start=start, end=end, catalog=catalog, model=model,
                   tile_px=tile_px, halo_px=halo_px)
    prep = _prepare(spec)
    ranked = plan_cell(prep.aoi.geometry, prep.scenes, prep.start, prep.end).candidates
    reranked = sum(_ranked_differently(t.scenes, ranked) for t in prep.tasks)
    net, card = prep.loaded.result()  # loaded by _prepare while it searched (as sgma-batch does)
    net.eval()
    items = _stac_items(prep.catalog, {s.id for v in ranked.values() for s in v})
    chunks = {"x": tile_px, "y": tile_px}

    stacks, parts, c0 = [], [], 0
    for m in card.modality_names:
        scenes = ranked.get(m, ())
        if not scenes:
            continue
        profile = get_profile(scenes[0].sensor)
        layers, bands = [], []
        for s in scenes:
            names = [b for b in (*profile.bands, *profile.mask_bands) if b in s.assets]
            keys = {b: s.assets[b].key for b in names}
            ds = odc.stac.load([items[s.id]], bands=list(keys.values()), geobox=prep.geobox, chunks=chunks,
                               resampling={k: "nearest" if b in profile.mask_bands else "bilinear"
                                           for b, k in keys.items()})
            layers += [ds[keys[b]].isel(time=0).data for b in names]  # each (H, W), chunked tile_px
            bands.append(names)
        c = len(profile.bands)
        fn = functools.partial(_harmonised_block, scenes=scenes, bands=bands, profile=profile, card=card, modality=m)
        stacks.append(da.map_blocks(fn, *layers, new_axis=0, chunks=((c + 1,), *layers[0].chunks),
                                    dtype=np.float32, meta=np.empty((0, 0, 0), np.float32)))
        parts.append((m, c0, c))
        c0 += c + 1
    x = da.concatenate(stacks, axis=0).rechunk({0: -1})  # (C_all, H, W), one chunk per tile core

    forwarded: list[int] = []
    fn = functools.partial(_class_block, model=net, parts=parts, forwarded=forwarded)
    cls = da.map_overlap(fn, x, depth={0: 0, 1: halo_px, 2: halo_px}, boundary="none", trim=True,
                         drop_axis=0, dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
    # A last chunk thinner than the halo makes dask merge it into its neighbour before the overlap: that
    # block then differs from sgma-batch's tile (recorded; the store keeps tile_px chunks either way).
    merged = cls.chunks != x.chunks[1:]
    t1 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=threads):
        da.to_zarr(cls.rechunk((tile_px, tile_px)), out, overwrite=True)
    seconds = time.perf_counter() - t0
    return _summary(out, prep, cls, forwarded, seconds, t1 - t0, reranked, merged, tile_px, halo_px, threads)


def _ranked_differently(tile_scenes: Any, ranked: Any) -> bool:
    """Whether a tile's own ranking orders its candidates otherwise than the AOI-wide ranking."""
    for m, scenes in tile_scenes.items():
        ids = [s.id for s in scenes]
        if [s.id for s in ranked.get(m, ()) if s.id in set(ids)] != ids:
            return True
    return False


def _summary(out: str, prep: Any, cls: Any, forwarded: list[int], seconds: float, plan_s: float, reranked: int,
             merged: bool, tile_px: int, halo_px: int, threads: int) -> dict:
    import zarr

    h, w = prep.geobox.shape.yx
    done = np.asarray(zarr.open_array(out, mode="r")[:])
    return {"peer": "dask", "blocks": int(np.prod(cls.numblocks)), "pixels": int(h * w),
            "seconds": round(seconds, 3), "plan_s": round(plan_s, 3), "forwarded_px": int(sum(forwarded)),
            "forwards": len(forwarded), "mapped": float((done != CLASS_NODATA).mean()),
            "tiles_ranked_differently": reranked, "edge_chunk_merged": bool(merged), "tile_px": tile_px,
            "halo_px": halo_px, "boundary": "none", "scheduler": "threads", "threads": threads,
            "torch_threads_per_worker": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--aoi", required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--end", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tile-px", type=int, default=512)
    ap.add_argument("--halo-px", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run_dask(a.catalog, a.aoi, a.start, a.end, a.out, model=a.model, tile_px=a.tile_px,
                   halo_px=a.halo_px, threads=a.threads)
    print(json.dumps(res) if a.json else res)


if __name__ == "__main__":
    main()
