"""Read map variables of a Zarr store with GDAL (through rasterio) and report what GDAL sees.

Run by ``test_readers.py`` with the test environment's Python (rasterio 1.4, GDAL 3.10) and with the side
environment ``.venv-gdal`` (rasterio 1.5, GDAL >= 3.12, Python >= 3.12), so it needs rasterio and numpy
only. Usage: ``python gdal_read.py STORE OUT_DIR NAME...``. For each variable it writes
``OUT_DIR/<name>.npy`` (all bands) and ``OUT_DIR/<name>.mask.npy`` (GDAL's per-band validity masks, 0 =
nodata), and prints one JSON object: the GDAL version and, per variable, CRS, transform, nodata, data
types and shape.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio


def main(store: str, out_dir: str, names: list[str]) -> dict:
    out = Path(out_dir)
    report: dict = {"gdal": rasterio.__gdal_version__, "rasterio": rasterio.__version__, "vars": {}}
    for name in names:
        with rasterio.open(f'ZARR:"{store}":/{name}') as src:
            report["vars"][name] = {
                "epsg": src.crs.to_epsg() if src.crs else None,
                "transform": list(src.transform)[:6],
                "nodata": [None if v is None else (str(v) if np.isnan(v) else float(v)) for v in src.nodatavals],
                "dtypes": list(src.dtypes),
                "shape": [src.count, src.height, src.width],
            }
            np.save(out / f"{name}.npy", src.read())
            np.save(out / f"{name}.mask.npy", src.read_masks())
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3:])))
