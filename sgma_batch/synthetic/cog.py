"""Write a single-band Cloud-Optimised GeoTIFF window by window, in O(window) memory.

GDAL's COG driver only copies whole datasets, so blocks go first into a temporary tiled GeoTIFF beside
the target; closing converts it into a COG (512-pixel blocks, DEFLATE with a predictor, internal
overviews) and removes the temporary file. Output bytes depend only on the pixels written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from odc.geo.geobox import GeoBox

BLOCK_PX = 512


def overview_count(shape: tuple[int, int]) -> int:
    """How many /2 overview levels a raster gets: down to about 256 px, and at least one."""
    return max(1, math.ceil(math.log2(max(shape) / 256.0)))


class CogWriter:
    """A single-band COG being written; use as a context manager, then ``write`` windows.

    Args:
        path: target ``.tif`` path.
        geobox: the raster's grid (CRS, affine, shape).
        dtype: numpy dtype name of the band.
        nodata: nodata value (``None`` for none).
        resampling: overview resampling ("average", "nearest", "mode", ...).
    """

    def __init__(
        self, path: Path, geobox: GeoBox, dtype: str, nodata: float | None, resampling: str = "average"
    ) -> None:
        self.path = Path(path)
        self.geobox = geobox
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.resampling = resampling
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.part.tif")
        self._ds = None

    def __enter__(self) -> Self:
        import rasterio

        ny, nx = self.geobox.shape
        self._ds = rasterio.open(
            self._tmp, "w", driver="GTiff", width=nx, height=ny, count=1, dtype=self.dtype.name,
            crs=self.geobox.crs.to_wkt(), transform=self.geobox.affine, nodata=self.nodata,
            tiled=True, blockxsize=BLOCK_PX, blockysize=BLOCK_PX, compress="NONE",
        )
        return self

    def write(self, array: np.ndarray, row_px: int, col_px: int) -> None:
        """Write a (H, W) block whose upper-left pixel is (row_px, col_px)."""
        from rasterio.windows import Window

        assert self._ds is not None, "CogWriter used outside its context"
        h, w = array.shape
        self._ds.write(array.astype(self.dtype, copy=False), 1, window=Window(col_px, row_px, w, h))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from rasterio.shutil import copy as rio_copy

        assert self._ds is not None
        self._ds.close()
        self._ds = None
        try:
            if exc_type is None:
                predictor = 3 if self.dtype.kind == "f" else 2
                rio_copy(
                    self._tmp, self.path, driver="COG", compress="DEFLATE", predictor=predictor,
                    blocksize=BLOCK_PX, overview_resampling=self.resampling,
                    overview_count=overview_count(self.geobox.shape), num_threads=1,
                    bigtiff="IF_SAFER",
                )
        finally:
            self._tmp.unlink(missing_ok=True)
