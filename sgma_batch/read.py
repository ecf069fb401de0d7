"""Read one modality onto a target GeoBox from its ranked scenes, harmonised and composited.

Per scene and band: when the asset's grid matches the target (same CRS, same resolution, pixel
aligned) the pixels are read as a plain window (about 10x faster than warping); otherwise the
covering source window is read and reprojected onto the target grid with ``rasterio.warp.reproject``
(bilinear for data bands, nearest for categorical mask bands such as SCL). Memory is O(target box).

A band is band ``AssetRef.index`` of its file (multi-band COGs: Sen1Floods11, Earth Engine exports), or,
in a multi-page TIFF whose pages hold one band each, page ``index``. Nodata is the item's, else the file's.

Compositing follows the co-location ranking of :func:`sgma_batch.colocate.plan_cell`: pixels are
taken from the first scene that has them valid (optical: most clear area / lowest cloud first; SAR:
nearest in time; DEM: mosaic), and reading stops early once every pixel is filled.

Transient read errors are retried with exponential backoff; a scene that still fails is skipped and
reported; when every scene of a modality fails, :class:`AssetReadError` says so and the caller
records the modality as absent for that tile.

Open datasets are kept per thread (:func:`open_dataset`, a small LRU with a time limit) and GDAL's block
cache is sized once per process instead of per read: a tile's halo overlaps its neighbours' and shares
their COG blocks, so the next tile of a scene decodes (or, remote, fetches) only the blocks it has not
seen. Setting ``GDAL_CACHEMAX`` in a per-read ``rasterio.Env`` would flush that cache at every exit.

Hrefs are signed at read time (:func:`sgma_batch.stac_io.resolve_href`, Planetary Computer style
tokens), once per attempt so that a retry after an expired token gets a fresh one. A signed href is
never stored: error messages and logs carry the unsigned href.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox

from sgma_batch.errors import (
    AssetAccessDeniedError,
    AssetHostUnreachableError,
    AssetNoRangeError,
    AssetNotFoundError,
    AssetReadError,
    PermanentAssetError,
    UnsupportedSceneError,
)
from sgma_batch.scenes import AssetRef, Scene
from sgma_batch.stac_io import resolve_href

log = logging.getLogger(__name__)

__all__ = ["ModalityRead", "acquisition_days", "clear_dataset_cache", "evict_dataset", "gdal_env_options", "open_dataset",
           "read_modality", "read_modality_report"]

# GDAL settings for cloud-optimised GeoTIFFs over HTTP/S3: no directory listings, merged range requests,
# GDAL-level retries for 429/5xx underneath our own backoff, and timeouts so a stalled server fails the
# attempt (then our backoff retries) instead of hanging a read forever. No VSI_CACHE: with datasets kept
# open it held up to 25 MB of raw bytes per handle that the block cache below already holds decoded.
_GDAL_OPTIONS: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
}

#: GDAL block cache per process, in MB (set once, before the first read; ``GDAL_CACHEMAX`` in the
#: environment wins). Bounded so that many read workers on one node do not each take 5 % of its RAM, and
#: so that memory stays flat with area. Tiles are read in row-major order (``execute.tile_order``), so a
#: source block serves the tiles around it while it is still cached: reading 1024 km2 (169 tiles of
#: 256 px, 512 px deflate COG blocks, ~24 assets per tile) took 0.083 / 0.046 / 0.037 / 0.038 CPU s per
#: tile with 32 / 64 / 128 / 256 MB; in row order with 64 MB, 0.073 (every other tile: 0.10).
BLOCK_CACHE_MB = 128
#: Open datasets kept per thread, and how long one is reused before it is reopened (remote assets may
#: change under a long-lived worker; local files are keyed by their inode, size and mtime as well).
DATASET_CACHE_SIZE = 32
DATASET_TTL_S = 600.0


def gdal_env_options(**overrides: Any) -> dict[str, Any]:
    """The GDAL configuration used for every read (a copy; pass overrides to change it).

    GDAL's own configuration variables set in the process environment (``GDAL_HTTP_TIMEOUT=5``, ...)
    win over these defaults: a config option set through ``rasterio.Env`` would otherwise hide them,
    and they are how operators tune GDAL everywhere else.
    """
    import os

    defaults = {k: v for k, v in _GDAL_OPTIONS.items() if k not in os.environ}
    return {**defaults, **overrides}


@dataclass(frozen=True)
class ModalityRead:
    """A composited modality and what went wrong on the way (scene id -> one-line error)."""

    data: np.ndarray  # (C, H, W) float32 physical units, 0 where invalid
    valid: np.ndarray  # (H, W) bool
    scenes_used: tuple[str, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    # (H, W) int16: which of the given scenes (their index in the ranked list) each pixel came from, -1 none
    source: np.ndarray | None = None


_block_cache_lock = threading.Lock()
_block_cache_set = False
_datasets = threading.local()


def _configure_block_cache() -> None:
    """Size GDAL's block cache once per process (a later change would flush it)."""
    global _block_cache_set
    with _block_cache_lock:
        if _block_cache_set:
            return
        if "GDAL_CACHEMAX" not in os.environ:
            from rasterio.env import set_gdal_config

            set_gdal_config("GDAL_CACHEMAX", BLOCK_CACHE_MB << 20)  # rasterio: an int, in bytes
        _block_cache_set = True


def _cache() -> OrderedDict:
    if not hasattr(_datasets, "lru"):
        _datasets.lru = OrderedDict()
    return _datasets.lru


def open_dataset(path: str) -> Any:
    """An open rasterio dataset for a GDAL path, reused from this thread's cache when still fresh.

    The caller must not close it; :func:`evict_dataset` drops one that failed, :func:`clear_dataset_cache`
    all of this thread's.
    """
    import rasterio

    key: tuple[Any, ...] = (path,)
    file = path.split(":", 2)[2] if path.startswith("GTIFF_DIR:") else path  # a page of a multi-page TIFF
    if not file.startswith("/vsi"):
        st = os.stat(file)  # a replaced or rewritten local file is a new key
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    lru = _cache()
    hit = lru.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[1] < DATASET_TTL_S:
        lru.move_to_end(key)
        return hit[0]
    evict_dataset(path)  # expired, or a local file that changed since: its old handles go
    src = rasterio.open(path)
    lru[key] = (src, now)
    while len(lru) > DATASET_CACHE_SIZE:
        _close(lru.popitem(last=False)[1][0])
    return src


def evict_dataset(path: str) -> None:
    """Close and forget every cached dataset of ``path`` (after a failed read: the retry reopens it)."""
    lru = _cache()
    for key in [k for k in lru if k[0] == path]:
        _close(lru.pop(key)[0])


def clear_dataset_cache() -> None:
    """Close this thread's cached datasets."""
    lru = _cache()
    while lru:
        _close(lru.popitem()[1][0])


def _close(src: Any) -> None:
    with contextlib.suppress(Exception):  # closing a dataset whose connection already failed
        src.close()


def _gdal_path(href: str) -> str:
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("file://"):
        return href[7:]
    return href


def _is_aligned(src: Any, geobox: GeoBox) -> bool:
    if src.crs is None or geobox.crs.epsg is None or src.crs.to_epsg() != geobox.crs.epsg:
        return False
    s, t = src.transform, geobox.transform
    if not (math.isclose(s.a, t.a) and math.isclose(s.e, t.e) and s.b == 0 and s.d == 0 and t.b == 0 and t.d == 0):
        return False
    col, row = (t.c - s.c) / s.a, (t.f - s.f) / s.e
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def _read_band(asset: AssetRef, geobox: GeoBox, *, categorical: bool, href: str | None = None) -> np.ndarray:
    """One asset on the target grid as float32; pixels it does not cover are nodata (or NaN).

    ``href`` is what to open (the signed href) when it differs from ``asset.href``.
    """
    href = href or asset.href
    path = _gdal_path(href)
    if not path.startswith("/vsi") and not Path(path).exists():
        raise FileNotFoundError(f"asset {asset.href} does not exist")  # local: not transient, no retry
    opened = path
    try:
        try:
            src = open_dataset(path)
            if asset.index > src.count == 1 and len(src.subdatasets) >= asset.index:
                opened = f"GTIFF_DIR:{asset.index}:{path}"  # a multi-page TIFF: band n is page n
                src, asset = open_dataset(opened), replace(asset, index=1)
            return _read_open(src, asset, geobox, categorical=categorical)
        except Exception:
            evict_dataset(path)  # a handle that failed once is not reused: the retry opens afresh
            if opened != path:
                evict_dataset(opened)
            raise
    except OSError as exc:  # RasterioIOError is an OSError: keep any token out of messages and logs
        if href == asset.href:
            raise
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        msg = msg.replace(href, asset.href).replace(path, _gdal_path(asset.href))
        raise AssetReadError(msg if asset.href in msg else f"{msg} (signed read of {asset.href})") from None


def _read_open(src: Any, asset: AssetRef, geobox: GeoBox, *, categorical: bool) -> np.ndarray:
    """Band ``asset.index`` of an open dataset on the target grid; the item's nodata, else the file's, is
    NaN in data bands (the fill value in categorical ones)."""
    h, w = geobox.shape.yx
    band = asset.index
    if not 1 <= band <= src.count:
        raise UnsupportedSceneError(
            f"asset {asset.href} has {src.count} band(s), the item puts {asset.band!r} in band {band}; "
            "fix the item's eo:bands (or bands) or the profile in --collections"
        )
    nodata = asset.nodata if asset.nodata is not None else src.nodatavals[band - 1]
    fill = np.float32(nodata) if nodata is not None else (np.float32(0) if categorical else np.float32(np.nan))
    out = np.empty((h, w), np.float32)  # _read_into fills what the file does not cover
    out = _read_into(src, band, out, geobox, nodata, fill, categorical=categorical)
    if nodata is not None and not categorical and np.isfinite(nodata):
        out[out == np.float32(nodata)] = np.nan  # the file's own nodata (not only the item's) is no data
    return out


def _read_into(src: Any, band: int, out: np.ndarray, geobox: GeoBox, nodata: Any, fill: Any, *,
               categorical: bool) -> np.ndarray:
    """Band ``band`` of ``src`` on ``geobox`` into ``out`` (uninitialised): ``fill`` where the file has nothing."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window, from_bounds

    h, w = geobox.shape.yx
    if _is_aligned(src, geobox):
        t = geobox.transform
        col0 = round((t.c - src.transform.c) / src.transform.a)
        row0 = round((t.f - src.transform.f) / src.transform.e)
        r0, r1 = max(row0, 0), min(row0 + h, src.height)
        c0, c1 = max(col0, 0), min(col0 + w, src.width)
        if (r0, c0, r1, c1) == (row0, col0, row0 + h, col0 + w):  # the file covers the whole target:
            return src.read(band, window=Window(c0, r0, w, h), out=out)  # GDAL converts into it, no copy
        out.fill(fill)
        if r0 < r1 and c0 < c1:
            out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = src.read(
                band, window=Window(c0, r0, c1 - c0, r1 - r0)
            )
        return out
    # Warp: read only the source window that covers the target (plus a margin for the kernel).
    left, bottom, right, top = transform_bounds(geobox.crs.wkt, src.crs, *geobox.extent.boundingbox, densify_pts=21)
    win = from_bounds(left, bottom, right, top, transform=src.transform)
    col_off, row_off = max(math.floor(win.col_off) - 2, 0), max(math.floor(win.row_off) - 2, 0)
    col_end = min(math.ceil(win.col_off + win.width) + 2, src.width)
    row_end = min(math.ceil(win.row_off + win.height) + 2, src.height)
    if col_off >= col_end or row_off >= row_end:
        out.fill(fill)
        return out
    window = Window(col_off, row_off, col_end - col_off, row_end - row_off)
    block = src.read(band, window=window).astype(np.float32)
    src_nodata = np.float32(nodata) if nodata is not None else np.float32(np.nan)
    reproject(
        block, out,
        src_transform=src.window_transform(window), src_crs=src.crs, src_nodata=src_nodata,
        dst_transform=geobox.transform, dst_crs=geobox.crs.wkt, dst_nodata=fill,
        resampling=Resampling.nearest if categorical else Resampling.bilinear,
        init_dest_nodata=True,
    )
    return out


#: GDAL / curl / S3 messages of errors that no retry can fix, and what each means.
_PERMANENT: tuple[tuple[tuple[str, ...], type[PermanentAssetError], str], ...] = (
    (("HTTP response code: 404", "NoSuchKey", "NoSuchBucket", "bucket does not exist"), AssetNotFoundError,
     "not found (404): check the asset URLs in the catalogue"),
    (("HTTP response code: 401", "HTTP response code: 403", "AccessDenied", "InvalidAccessKeyId",
      "SignatureDoesNotMatch"), AssetAccessDeniedError,
     "access refused (401/403): give credentials (AWS_* variables) or a signer (--signer)"),
    (("Range downloading not supported",), AssetNoRangeError,
     ("the server does not answer HTTP range requests, which reading COGs needs: serve the assets from a "
      "server or bucket that does")),
    (("Could not resolve host", "Couldn't resolve host"), AssetHostUnreachableError,
     "unknown host (DNS): check the asset URLs and the network"),
)


def permanent_error(exc: BaseException, *, signed: bool = False) -> PermanentAssetError | None:
    """The :class:`PermanentAssetError` an I/O error amounts to, or None when a retry may help.

    A 403 of a signed read is not permanent: the token may have expired, and the retry signs afresh.
    """
    text = str(exc)
    for needles, cls, advice in _PERMANENT:
        if any(n in text for n in needles):
            if signed and cls is AssetAccessDeniedError:
                return None
            first = (text.strip().splitlines() or [type(exc).__name__])[0]
            return cls(f"{first}: {advice}")
    return None


def _with_retries(fn: Any, *, what: str, retries: int, backoff_s: float, signed: bool = False) -> Any:
    """Call ``fn`` and retry I/O errors with exponential backoff; the last error propagates. Errors that no
    retry can fix (:func:`permanent_error`: 404, 403, no range support, unknown host) are raised at once."""
    import rasterio
    from rasterio.errors import RasterioIOError

    for attempt in range(retries + 1):
        try:
            if attempt == 0:
                return fn()
            # GDAL remembers a failed remote open ("does not exist") for the life of the process, so a
            # retry through its caches fails at once without a request: retry around them.
            with rasterio.Env(CPL_VSIL_CURL_NON_CACHED="/vsicurl/:/vsis3/"):
                return fn()
        except (FileNotFoundError, PermanentAssetError):
            raise
        except (RasterioIOError, OSError) as exc:
            permanent = permanent_error(exc, signed=signed)
            if permanent is not None:
                raise permanent from None  # retrying cannot help: fail now, with what to do
            if attempt == retries:
                raise
            delay = backoff_s * (2**attempt)
            log.warning("read %s failed (%s), retry %d/%d in %.1fs", what, exc, attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_modality_report(
    scenes: Sequence[Scene],
    geobox: GeoBox,
    profile: Any,
    *,
    retries: int = 3,
    backoff_s: float = 0.5,
    gdal_options: Mapping[str, Any] | None = None,
) -> ModalityRead:
    """Like :func:`read_modality`, but returns the per-scene errors instead of raising on them.

    A scene whose read fails after the retries is skipped; its error is in ``errors``.
    """
    import rasterio

    _configure_block_cache()
    h, w = geobox.shape.yx
    data = np.zeros((len(profile.bands), h, w), np.float32)  # (C, H, W)
    valid = np.zeros((h, w), bool)
    used: list[str] = []
    errors: dict[str, str] = {}
    source = np.full((h, w), -1, np.int16)
    with rasterio.Env(**(gdal_options if gdal_options is not None else gdal_env_options())):
        for rank, scene in enumerate(scenes):
            if valid.all():
                break  # every pixel filled by better-ranked scenes: no need to read further
            try:
                arrays = {}
                for band in (*profile.bands, *profile.mask_bands):
                    asset = scene.assets.get(band)
                    if asset is None:
                        if band in profile.mask_bands:
                            continue
                        raise AssetReadError(f"scene {scene.id} has no asset for band {band}")
                    arrays[band] = _with_retries(
                        lambda a=asset, b=band, s=scene: _read_band(
                            a, geobox, categorical=b in profile.mask_bands, href=resolve_href(s, a)
                        ),
                        what=f"{scene.id}/{band}", retries=retries, backoff_s=backoff_s,
                        signed=bool(scene.extra.get("signer")),
                    )
                sdata, svalid = profile.harmonise(scene, arrays)  # (C, H, W), (H, W)
            except (OSError, ValueError) as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                errors[scene.id] = f"{type(exc).__name__}: {msg}"
                log.warning("scene %s of %s skipped: %s", scene.id, profile.name, errors[scene.id])
                continue
            sdata = np.asarray(sdata, np.float32)
            svalid = np.asarray(svalid, bool) & np.isfinite(sdata).all(axis=0)
            take = svalid & ~valid  # (H, W) pixels this scene fills
            if take.any():
                np.copyto(data, sdata, where=take)  # every band, broadcast over C
                source[take] = rank
                valid |= take
                used.append(scene.id)
    return ModalityRead(data, valid, tuple(used), errors, source)


#: The epoch of the ``acquired`` store variable (uint16 days: 0 = none, valid to 2149).
ACQUISITION_EPOCH = "1970-01-01"


def acquisition_days(res: ModalityRead, scenes: Sequence[Scene]) -> np.ndarray:
    """(H, W) uint16: the acquisition day (days since 1970-01-01, UTC) of the scene each valid pixel of a
    composite came from, 0 where none did. ``scenes`` are the ranked scenes the composite was read from."""
    from datetime import date

    epoch = date.fromisoformat(ACQUISITION_EPOCH)
    days = np.array([0, *((s.datetime.date() - epoch).days for s in scenes)], np.int64).clip(0, 65535).astype(np.uint16)
    if res.source is None:
        return np.zeros(res.valid.shape, np.uint16)
    out = days[res.source.astype(np.int64) + 1]  # source -1 (none) -> 0
    out[~res.valid] = 0
    return out


def read_modality(
    scenes: Sequence[Scene], geobox: GeoBox, profile: Any, *, retries: int = 3, backoff_s: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Load one modality onto ``geobox`` from ranked scenes: harmonised, composited, with validity.

    Args:
        scenes: candidate scenes of one modality, best first (``colocate.plan_cell`` order).
        geobox: the target grid (e.g. a tile's halo GeoBox).
        profile: the scenes' :class:`~sgma_batch.sensors.base.SensorProfile`.

    Returns:
        (data (C, H, W) float32 in physical units and ``profile.bands`` order, 0 where invalid;
        valid (H, W) bool).

    Raises:
        AssetReadError: every scene failed to read after retries.
    """
    res = read_modality_report(scenes, geobox, profile, retries=retries, backoff_s=backoff_s)
    if scenes and len(res.errors) == len(scenes):
        first = next(iter(res.errors.items()))
        raise AssetReadError(
            f"all {len(scenes)} {profile.name} scenes failed to read (first: {first[0]}: {first[1]}); "
            "check the asset URLs and network, then rerun"
        )
    return res.data, res.valid
