"""A deterministic synthetic Sentinel-2 / Sentinel-1 / DEM archive with ground-truth labels.

It is the embedded default catalogue (the demo runs with no network), the test bed and the benchmark
generator. Rasters are real COGs in a UTM CRS; metadata is a static STAC catalogue whose collections
(``sentinel-2-c1-l2a``, ``sentinel-1-rtc``, ``cop-dem-glo-30``, ``sgma-labels``) follow the Earth
Search c1 and Planetary Computer conventions, so the code that reads real catalogues reads this one.

>>> from sgma_batch.synthetic import generate_archive
>>> info = generate_archive("/tmp/archive", seed=1, size_km=(2, 2), dates=3)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import cache
from pathlib import Path

from sgma_batch.synthetic.archive import (
    CLASSES,
    CLASSES_DESCRIPTION,
    DEFAULT_ORIGIN_UTM,
    GENERATOR_VERSION,
    Acquisition,
    ArchiveInfo,
    _resolve_dates,
    archive_info,
    ensure_archive,
    generate_archive,
    make_geobox,
    plan_acquisitions,
)

log = logging.getLogger(__name__)

DEMO_PREFIX = "demo-archive"
DEMO_SEED = 0
DEMO_SIZE_KM = (6.0, 6.0)
DEMO_DATES = 4
DEMO_EPSG = 32633


def default_cache_dir() -> Path:
    """Where the demo archive lives unless told otherwise: ``$XDG_CACHE_HOME/sgma-batch``, else
    ``~/.cache/sgma-batch`` (the XDG base-directory rule; every command uses this one folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sgma-batch"


def generator_digest(package_dir: Path | None = None) -> str:
    """sha256 over the generator's source files (every ``*.py`` of this package), names included."""
    folder = Path(package_dir) if package_dir is not None else Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def demo_archive_name(*, version: int = GENERATOR_VERSION, source_digest: str | None = None) -> str:
    """The demo archive's cache folder name: ``demo-archive-v<version>-<12 hex>``.

    The hex digest covers the generation parameters, the generator version and the generator's source,
    so an archive cached by another generator (an older release, a patched landscape) is never reused:
    the new one is generated beside it.
    """
    params = {
        "version": version, "seed": DEMO_SEED, "size_km": list(DEMO_SIZE_KM), "dates": DEMO_DATES,
        "epsg": DEMO_EPSG, "origin_utm": list(DEFAULT_ORIGIN_UTM),
        "source": source_digest if source_digest is not None else _own_digest(),
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"{DEMO_PREFIX}-v{version}-{key}"


@cache
def _own_digest() -> str:
    return generator_digest()


def demo_archive_info(cache_dir: str | Path) -> ArchiveInfo:
    """The :class:`ArchiveInfo` of the demo archive under ``cache_dir`` (whether generated yet or not)."""
    geobox = make_geobox(DEFAULT_ORIGIN_UTM, DEMO_SIZE_KM, DEMO_EPSG)
    plans = plan_acquisitions(DEMO_SEED, _resolve_dates(DEMO_DATES), geobox)
    return archive_info(Path(cache_dir) / demo_archive_name(), seed=DEMO_SEED, geobox=geobox,
                        days=[p.s2_time for p in plans])


def ensure_demo_archive(cache_dir: str | Path | None = None) -> ArchiveInfo:
    """Generate the demo archive into ``cache_dir/<demo_archive_name()>`` once, and reuse it after.

    Args:
        cache_dir: the cache folder (default :func:`default_cache_dir`).

    Generation goes to a temporary folder that is renamed into place, so a half-written archive is never
    seen and two processes racing both end up with the same complete archive.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    info = demo_archive_info(cache)
    if not info.catalog_path.exists():
        stale = sorted(p.name for p in cache.glob(f"{DEMO_PREFIX}-v*") if p.name != info.root.name) \
            if cache.is_dir() else []
        log.info("generating the demo archive into %s (first use of this generator%s)", info.root,
                 f"; older copies left in place: {', '.join(stale)}" if stale else "")
        ensure_archive(info.root, lambda tmp: generate_archive(
            tmp, seed=DEMO_SEED, size_km=DEMO_SIZE_KM, origin_utm=DEFAULT_ORIGIN_UTM, epsg=DEMO_EPSG,
            dates=DEMO_DATES))
    return info


def demo_aoi_path() -> Path:
    """The packaged example AOI (CRS84 GeoJSON polygon) that lies inside the demo archive."""
    return Path(__file__).with_name("demo-aoi.geojson")


__all__ = [
    "CLASSES",
    "CLASSES_DESCRIPTION",
    "DEMO_DATES",
    "DEMO_EPSG",
    "DEMO_PREFIX",
    "DEMO_SEED",
    "DEMO_SIZE_KM",
    "GENERATOR_VERSION",
    "Acquisition",
    "ArchiveInfo",
    "default_cache_dir",
    "demo_aoi_path",
    "demo_archive_info",
    "demo_archive_name",
    "ensure_demo_archive",
    "generate_archive",
    "generator_digest",
    "make_geobox",
    "plan_acquisitions",
]
