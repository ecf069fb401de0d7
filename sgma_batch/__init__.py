"""sgma-batch: archive-scale multimodal segmentation with SGMA on Ray, into Zarr mosaics.

Importing this package is cheap: heavy libraries (torch, ray, rasterio, xarray, zarr) are imported
only by the submodules that need them.
"""

from sgma_batch._version import __version__

__all__ = ["__version__"]
