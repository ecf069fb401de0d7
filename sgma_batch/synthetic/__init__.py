"""A deterministic synthetic Sentinel-2 / Sentinel-1 / DEM archive with ground-truth labels.

It is the embedded default catalogue (the demo runs with no network), the test bed and the benchmark
generator. Rasters are real COGs in a UTM CRS; metadata is a static STAC catalogue whose collections
(``sentinel-2-c1-l2a``, ``sentinel-1-rtc``, ``cop-dem-glo-30``, ``sgma-labels``) follow the Earth
Search c1 and Planetary Computer conventions, so the code that reads real catalogues reads this one.

>>> from sgma_batch.synthetic import generate_archive
>>> info = generate_archive("/tmp/archive", seed=1, size_km=(2, 2), dates=3)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

CLASSES_DESCRIPTION = (
    "0 water, 1 trees, 2 grass, 3 crops, 4 built_up, 5 bare, 6 wetland; 255 nodata. Built-up and bare share "
    "one optical spectrum (SAR separates them), crops and grass share one backscatter (red-edge/NIR "
    "separate them), water and wetland are optically alike (SAR and the DEM separate them)."
)

from sgma_batch.synthetic.archive import (  # noqa: E402 - CLASSES_DESCRIPTION is used by archive
    CLASSES, DEFAULT_ORIGIN_UTM, Acquisition, ArchiveInfo, archive_info, ensure_archive, generate_archive,
    make_geobox, plan_acquisitions, _resolve_dates,
)

log = logging.getLogger(__name__)

DEMO_NAME = "demo-archive-v1"
DEMO_SEED = 0
DEMO_SIZE_KM = (6.0, 6.0)
DEMO_DATES = 4
DEMO_EPSG = 32633


def default_cache_dir() -> Path:
    """Where the demo archive lives unless told otherwise: ``~/.cache/sgma-batch``."""
    return Path.home() / ".cache" / "sgma-batch"


def demo_archive_info(cache_dir: str | Path) -> ArchiveInfo:
    """The :class:`ArchiveInfo` of the demo archive under ``cache_dir`` (whether generated yet or not)."""
    geobox = make_geobox(DEFAULT_ORIGIN_UTM, DEMO_SIZE_KM, DEMO_EPSG)
    plans = plan_acquisitions(DEMO_SEED, _resolve_dates(DEMO_DATES), geobox)
    return archive_info(Path(cache_dir) / DEMO_NAME, seed=DEMO_SEED, geobox=geobox,
                        days=[p.s2_time for p in plans])


def ensure_demo_archive(cache_dir: str | Path | None = None) -> ArchiveInfo:
    """Generate the demo archive into ``cache_dir/demo-archive-v1`` once, and reuse it after.

    Generation goes to a temporary folder that is renamed into place, so a half-written archive is never
    seen and two processes racing both end up with the same complete archive.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    info = demo_archive_info(cache)
    if not info.catalog_path.exists():
        log.info("generating the demo archive into %s (first use)", info.root)
        ensure_archive(info.root, lambda tmp: generate_archive(
            tmp, seed=DEMO_SEED, size_km=DEMO_SIZE_KM, origin_utm=DEFAULT_ORIGIN_UTM, epsg=DEMO_EPSG,
            dates=DEMO_DATES))
    return info


def demo_aoi_path() -> Path:
    """The packaged example AOI (CRS84 GeoJSON polygon) that lies inside the demo archive."""
    return Path(__file__).with_name("demo-aoi.geojson")


__all__ = [
    "CLASSES", "CLASSES_DESCRIPTION", "Acquisition", "ArchiveInfo", "generate_archive", "ensure_demo_archive",
    "demo_archive_info", "demo_aoi_path", "default_cache_dir", "plan_acquisitions", "make_geobox",
    "DEMO_NAME", "DEMO_SEED", "DEMO_SIZE_KM", "DEMO_DATES", "DEMO_EPSG",
]
