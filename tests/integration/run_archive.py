"""A tiny real archive for run tests: DEM + Sentinel-1 RTC COGs (UTM 33N) and an item-collection JSON.

Used until/besides ``sgma_batch.synthetic``: it lets a test add one scene over part of the area.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

EPSG = 32633
X0, Y0, RES = 500000.0, 5000000.0, 10.0
W, H = 384, 256  # 3.84 x 2.56 km


def _cog(path: Path, bands: list[np.ndarray], nodata: float, x0=X0, y0=Y0) -> None:
    h, w = bands[0].shape
    with rasterio.open(path, "w", driver="COG", width=w, height=h, count=1, dtype=bands[0].dtype,
                       crs=f"EPSG:{EPSG}", transform=from_origin(x0, y0, RES, RES), nodata=nodata,
                       blocksize=128, compress="deflate") as dst:
        dst.write(bands[0], 1)


def _footprint(x0: float, y0: float, w: int, h: int) -> tuple[dict, list[float]]:
    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    xs = [x0, x0 + w * RES, x0 + w * RES, x0]
    ys = [y0, y0, y0 - h * RES, y0 - h * RES]
    lon, lat = tr.transform(xs, ys)
    ring = [[a, b] for a, b in zip(lon, lat)] + [[lon[0], lat[0]]]
    return {"type": "Polygon", "coordinates": [ring]}, [min(lon), min(lat), max(lon), max(lat)]


def _item(iid, collection, dt, assets, x0=X0, y0=Y0, w=W, h=H, updated=None):
    geometry, bbox = _footprint(x0, y0, w, h)
    times = {"datetime": dt} if dt else {"datetime": None, "start_datetime": "2010-01-01T00:00:00Z",
                                            "end_datetime": "2030-01-01T00:00:00Z"}  # static DEM
    props = {**times, "proj:epsg": EPSG, "proj:transform": [RES, 0, x0, 0, -RES, y0], "proj:shape": [h, w]}
    if updated:
        props["updated"] = updated
    return {"type": "Feature", "stac_version": "1.1.0", "id": iid, "collection": collection, "geometry": geometry,
            "bbox": bbox, "properties": props, "links": [], "assets": assets}


def landscape(seed: int = 0) -> np.ndarray:
    """Smooth elevation-like field (H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / 40.0
    return (50 + 20 * np.sin(xx) * np.cos(yy) + rng.normal(0, 1, (H, W))).astype(np.float32)


def s1_item(root: Path, iid: str, day: int, *, x0=X0, w=W, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    assets = {}
    for pol, base in (("vv", 0.1), ("vh", 0.02)):
        arr = (base * np.exp(rng.normal(0, 0.3, (H, w)))).astype(np.float32)
        p = root / f"{iid}_{pol}.tif"
        _cog(p, [arr], -32768.0, x0=x0)
        assets[pol] = {"href": p.name, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"], "raster:bands": [{"nodata": -32768, "data_type": "float32"}]}
    return _item(iid, "sentinel-1-rtc", f"2024-06-{day:02d}T05:00:00Z", assets, x0=x0, w=w)


def build_archive(root: Path) -> Path:
    """Write the COGs and ``items.json`` (a FeatureCollection the static search reads); returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    dem = root / "dem.tif"
    _cog(dem, [landscape()], -9999.0)
    items = [
        _item("dem-1", "cop-dem-glo-30", None,
              {"data": {"href": dem.name, "type": "image/tiff; application=geotiff", "roles": ["data"],
                        "raster:bands": [{"nodata": -9999, "data_type": "float32"}]}}),
        s1_item(root, "s1-a", 5, seed=1),
        s1_item(root, "s1-b", 17, seed=2),
    ]
    return write_items(root, items)


def write_items(root: Path, items: list[dict]) -> Path:
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def add_scene(root: Path, item: dict) -> None:
    path = root / "items.json"
    data = json.loads(path.read_text())
    data["features"].append(item)
    path.write_text(json.dumps(data))


def aoi_lonlat() -> list[float]:
    """A bbox well inside the archive (about 3.2 x 2.2 km)."""
    _, (lo0, la0, lo1, la1) = _footprint(X0 + 300, Y0 - 200, W - 60, H - 40)
    return [lo0, la0, lo1, la1]


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save an untrained ``sgma_tiny`` (S2 + S1 + DEM, the test classes) seeded with ``seed`` at ``path``."""
    import torch

    from sgma_model import ModelCard, create_model, save_checkpoint
    from sgma_model.testing import CLASSES, card_modalities

    torch.manual_seed(seed)
    model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2, "dem": 1}, num_classes=len(CLASSES))
    save_checkpoint(model, path, ModelCard.for_model(model, card_modalities(), CLASSES))
    return path


REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env_extra: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``sgma-batch ARGS`` in a fresh process from the repo root (Ray token auth off, as in every test)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True, env=env,
                          check=False, cwd=REPO, timeout=timeout)


def run_spec(catalog: Path, checkpoint: Path, out: Path, **kw):
    """A small-tile ``RunSpec`` over :func:`aoi_lonlat` in June 2024 (6 tiles of 128 px); ``kw`` overrides."""
    from sgma_batch.run import RunSpec

    base = {"aoi": aoi_lonlat(), "out": str(out), "start": "2024-06-01", "end": "2024-06-30",
            "catalog": str(catalog), "model": str(checkpoint), "tile_px": 128, "halo_px": 16, "window_px": 64,
            "overlap_px": 16}
    return RunSpec(**{**base, **kw})


def cli_with_terminal_stderr(*args: str, timeout: float = 600) -> tuple[int, str, str]:
    """``sgma-batch ARGS`` with stderr on a pseudo-terminal (as a user sees it) and stdout on a pipe.

    Returns (exit code, stdout, what the terminal showed).
    """
    from terminal import cli_on_terminal

    return cli_on_terminal(*args, stream="stderr", env={"RAY_AUTH_MODE": "disabled", "COLUMNS": "120"},
                           timeout=timeout)
