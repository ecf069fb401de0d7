"""End to end: plan, read real COGs, infer on real local Ray actors, write and resume a Zarr mosaic."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401 - registers the .odc accessor used below
import pytest
import xarray as xr
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.errors import StoreIncompatibleError
from sgma_batch.run import run_mosaic
from sgma_batch.store import read_manifest

pytestmark = pytest.mark.integration






_spec = run_archive.run_spec


def _halo_spec(*args, **kw):
    """The default inference: halo tiles forwarded whole, strips blended across borders."""
    return _spec(*args, window_px=None, **kw)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("class", "confidence", "modality_mask", "robustness")}


def test_ray_run_resume_and_incremental(ray_local, archive, checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sgma_batch.execute_ray")
    out = tmp_path / "mosaic.zarr"
    events = []
    s1 = run_mosaic(_halo_spec(archive, checkpoint, out), progress=lambda d, n, r: events.append((d, n)))
    assert s1.exit_code == 0 and s1.failed == 0 and s1.degraded == 0
    assert s1.tiles == 3 * 2 and s1.computed == s1.tiles and s1.reused == 0
    assert events[0] == (0, s1.tiles) and events[-1] == (s1.tiles, s1.tiles)
    # reads ran in their own actors, beside the inference actors: every tile's inputs came from a reader
    executed = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ray executor"))
    assert f"ray executor: {s1.tiles} tiles, 2 readers, 2 inference actors" in executed
    pool = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ray pool"))
    # 2-CPU cluster: an inference actor per CPU, a reader per inference actor
    assert "actors=2," in pool and "read_tasks=2" in pool

    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    assert ds.odc.crs.epsg == 32633
    gbox = ds.odc.geobox
    assert gbox.resolution.x == 10 and gbox.transform.c % 10 == 0
    assert ds.attrs["sgma:classes"][0]["name"] == "water"
    assert ds.attrs["sgma:modalities"] == ["s2", "s1", "dem"]
    manifest = read_manifest(out)
    assert len(manifest) == s1.tiles and {r.status for r in manifest.values()} == {"computed"}
    assert all(r.scenes["s1"] == ("s1-a", "s1-b") or r.scenes["s1"] == ("s1-b", "s1-a") for r in manifest.values())
    cls = ds["class"].values
    # inside the AOI every pixel has a class; S1 (bit 1) and DEM (bit 2) present, no S2 (bit 0)
    inside = cls != 255
    assert inside.mean() > 0.8
    assert set(np.unique(ds["modality_mask"].values[inside])) == {0b110}
    rob = ds["robustness"].values  # (M, y, x) uint8
    assert (rob[0][inside] == 0).all() and (rob[1:, inside].astype(int).sum(0) >= 250).all()
    # pixels outside the AOI polygon are nodata: the first row of the grid lies north of the AOI
    assert (cls[0] == 255).all() or (cls[:, 0] == 255).all()
    assert (out / "item.json").exists() and (out / "quicklook.png").exists()
    first = _arrays(out)

    # rerun: everything reused, nothing written
    s2 = run_mosaic(_halo_spec(archive, checkpoint, out))
    assert (s2.reused, s2.computed) == (s2.tiles, 0)

    # a new S1 scene over the western third: the tiles it touches and the ring around them (their borders
    # blend the touched tiles' windows) are recomputed, and the store equals a fresh run with the scene
    run_archive.add_scene(archive.parent, run_archive.s1_item(archive.parent, "s1-new", 10, w=100, seed=3))
    try:
        s3 = run_mosaic(_halo_spec(archive, checkpoint, out))
        fresh = run_mosaic(_halo_spec(archive, checkpoint, tmp_path / "fresh.zarr", executor="sequential"))
    finally:
        items = json.loads(archive.read_text())
        items["features"] = [f for f in items["features"] if f["id"] != "s1-new"]
        archive.write_text(json.dumps(items))
    manifest = read_manifest(out)
    touched = {r.index for r in manifest.values() if "s1-new" in r.scenes["s1"]}
    ring = {r.index for r in manifest.values()
            if any(abs(r.index[0] - i) <= 1 and abs(r.index[1] - j) <= 1 for i, j in touched)}
    assert 0 < len(touched) < len(ring) < s3.tiles
    assert s3.computed == len(ring) and s3.reused == s3.tiles - len(ring)
    assert fresh.computed == fresh.tiles
    after = _arrays(out)
    for name, arr in _arrays(tmp_path / "fresh.zarr").items():
        assert arr.tobytes() == after[name].tobytes(), name
    for rec in manifest.values():
        (y0, y1), (x0, x1) = rec.region
        if rec.index not in ring:
            assert np.array_equal(after["class"][y0:y1, x0:x1], first["class"][y0:y1, x0:x1])

    # a changed config recomputes every tile
    s4 = run_mosaic(_spec(archive, checkpoint, out, window_px=64, executor="sequential"))  # same tile code
    assert s4.computed == s4.tiles and s4.reused == 0

    # a different grid is refused
    with pytest.raises(StoreIncompatibleError):
        run_mosaic(_halo_spec(archive, checkpoint, out, res_m=20.0))


def test_sequential_and_ray_stores_are_bitwise_identical(ray_local, archive, checkpoint, tmp_path):
    seq = run_mosaic(_spec(archive, checkpoint, tmp_path / "seq.zarr", executor="sequential", zarr_format=2))
    ray_ = run_mosaic(_spec(archive, checkpoint, tmp_path / "ray.zarr", executor="ray", zarr_format=2, max_actors=1))
    assert seq.computed == ray_.computed == seq.tiles
    a, b = _arrays(tmp_path / "seq.zarr"), _arrays(tmp_path / "ray.zarr")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    import rasterio

    with rasterio.open(f'ZARR:"{tmp_path / "ray.zarr"}":/class') as src:
        assert src.crs.to_epsg() == 32633
        np.testing.assert_array_equal(src.read(1), b["class"])


def test_persistent_read_failure_degrades_and_is_retried(archive, checkpoint, tmp_path):
    items = json.loads(archive.read_text())
    broken = tmp_path / "broken"
    shutil.copytree(archive.parent, broken)
    for f in items["features"]:
        if f["id"] == "s1-b":  # the best-ranked S1 scene (nearest the window centre)
            f["assets"]["vv"]["href"] = "missing_vv.tif"
    catalog = run_archive.write_items(broken, items["features"])
    out = tmp_path / "deg.zarr"
    s = run_mosaic(_spec(catalog, checkpoint, out, executor="sequential"))
    assert s.exit_code == 3 and s.degraded == s.tiles and s.failed == 0
    rec = next(iter(read_manifest(out).values()))
    assert rec.status == "degraded" and "s1/s1-b" in rec.errors and rec.scenes_used["s1"] == ("s1-a",)
    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    assert (ds["class"].values != 255).mean() > 0.8  # still mapped from s1-b and the DEM
    # the asset comes back: a rerun retries exactly the degraded tiles and all become computed
    (broken / "missing_vv.tif").symlink_to(broken / "s1-b_vv.tif")
    s2 = run_mosaic(_spec(catalog, checkpoint, out, executor="sequential"))
    assert s2.exit_code == 0 and s2.computed == s2.tiles and s2.reused == 0
