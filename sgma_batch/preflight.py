"""Fail fast: the cheap checks that run before any compute (before Ray or the executor starts, and in ``plan``).

Each failure is one :class:`~sgma_batch.errors.SgmaError` with its own exit code and one line that says what
to do. In run order:

1. :func:`check_request` (before the catalogue is read): the time window parses and is ordered (22), the
   signer is known and its package installed (26).
2. :func:`explain_empty` (a search found nothing): an AOI outside every item of the catalogue's collections
   is exit 17 (for the embedded demo archive: it is a small synthetic area, ``--catalog`` is the way out);
   an AOI inside it is "nothing in this window" (4).
3. :func:`check_scenes` (after the search): the processing level of each modality's scenes against the
   model card (35, or a warning with ``--allow-domain-shift``), then one asset per collection opened with
   a range request and a small central window read: 404 on every probed scene (63), 401/403 (64), a server
   without range support (65), an unknown or unreachable host (66), a file whose band does not exist or
   that is in radar geometry (23), and values against the profile's units (67: dB read as linear, linear
   read as dB, reflectance already scaled).
4. :func:`setup_error_from_records` (after the run): a permanent asset error that took a modality from every
   tile that planned it is reported with its own code (63-66), not as a partial result (3).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sgma_batch.errors import (
    AOIOutsideCatalogError,
    AssetHostUnreachableError,
    DomainShiftError,
    NothingFoundError,
    PermanentAssetError,
    SgmaError,
    SignerUnavailableError,
    UnitMismatchError,
    UnsupportedSceneError,
)
from sgma_batch.scenes import Scene

log = logging.getLogger(__name__)

__all__ = ["PROBE_SCENES", "check_domain", "check_request", "check_scenes", "check_units", "explain_empty",
           "probe_assets", "setup_error_from_records"]

#: Scenes probed per modality when the first probed asset fails for good (the rest may still be fine).
PROBE_SCENES = 3
#: Side of the central window read per probed asset (pixels): enough values to judge the units.
PROBE_WINDOW_PX = 256
#: Packages that registered signers need, by signer name.
SIGNER_PACKAGES = {"planetary-computer": "planetary_computer"}


# -- 1. before the catalogue -------------------------------------------------------------------------------
def check_request(*, start: str | date | datetime | None, end: str | date | datetime | None,
                  signer: str | None) -> None:
    """The window (when given) parses and is ordered; the signer exists and its package is installed."""
    from sgma_batch.search import parse_window
    from sgma_batch.stac_io import get_signer

    if start is not None and end is not None:
        parse_window(start, end)
    if signer is None:
        return
    package = SIGNER_PACKAGES.get(signer)
    if package is not None and importlib.util.find_spec(package) is None:
        raise SignerUnavailableError(
            f"--signer {signer} needs the {package.replace('_', '-')} package, which is not installed: "
            f"pip install {package.replace('_', '-')}"
        )
    get_signer(signer)  # unknown names and unimportable module:function fail here (2)


# -- 2. a search that found nothing ------------------------------------------------------------------------
def explain_empty(catalog: str, aoi: Any, start: str, end: str, modalities: Sequence[str], *,
                  collections: str | Mapping[str, str] | None = None, demo: bool = False) -> NothingFoundError:
    """The error for a search without scenes: the AOI is outside the catalogue (17) or the window is empty (4)."""
    from shapely.geometry import box

    from sgma_batch.search import catalog_extent

    extent = catalog_extent(catalog, modalities, collections=collections)
    geom = getattr(aoi, "geometry", aoi)
    if extent is not None and not any(box(*b).intersects(geom) for b in extent):
        lon0, lat0, lon1, lat1 = _union(extent)
        where = f"lon {lon0:.3f}..{lon1:.3f}, lat {lat0:.3f}..{lat1:.3f}"
        if demo:
            raise AOIOutsideCatalogError(
                f"the AOI is outside the embedded demo archive, a small synthetic area ({where}); "
                "give a real catalogue with --catalog (a STAC API URL or a catalog.json), or an AOI inside it"
            )
        raise AOIOutsideCatalogError(
            f"the AOI is outside every item of {catalog} ({where}); check the AOI or give another --catalog"
        )
    return NothingFoundError(
        f"no scenes of {', '.join(modalities)} over the AOI between {start} and {end} in {catalog}; "
        "widen the time window or check the catalogue"
    )


def _union(boxes: Iterable[Sequence[float]]) -> tuple[float, float, float, float]:
    b = np.asarray(list(boxes), float)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


# -- 3. after the search -----------------------------------------------------------------------------------
def scene_level(scene: Scene) -> str | None:
    """The processing level of a scene (``L2A``, ``L1C``, ``RTC``, ``GRD``), None when nothing says."""
    from sgma_batch.sensors import get_profile

    level = scene.extra.get("level")
    return str(level) if level else (get_profile(scene.sensor).product or None)


def check_domain(card: Any, scenes: Mapping[str, Sequence[Scene]], *, allow_domain_shift: bool = False) -> list[str]:
    """Each modality's scenes against the model card's processing level (its ``collection_hint``'s profile).

    Returns the warnings given; raises :class:`DomainShiftError` on a known mismatch unless allowed.
    """
    from sgma_batch.errors import UnknownCollectionError
    from sgma_batch.sensors import get_profile, profile_for_collection

    warnings: list[str] = []
    for spec in getattr(card, "modalities", ()):
        found = scenes.get(spec.name) or ()
        hint = getattr(spec, "collection_hint", None)
        if not found or not hint:
            continue
        try:
            trained = profile_for_collection(hint).product
        except UnknownCollectionError:
            continue
        levels = sorted({lv for s in found if (lv := scene_level(s))})
        first = found[0]
        if not trained or not levels:
            if trained and not levels:
                log.info("%s scenes of %s do not say their processing level; the model was trained on %s",
                         spec.name, first.collection, trained)
            continue
        other = [lv for lv in levels if lv != trained]
        if not other:
            continue
        fix = _fix_for(spec.name, first.collection, trained)
        msg = (f"{spec.name} scenes of {first.collection} are {', '.join(other)} "
               f"({get_profile(first.sensor).name} profile), the model card was trained on {trained} ({hint}); "
               f"{fix}, or pass --allow-domain-shift to run anyway")
        if not allow_domain_shift:
            raise DomainShiftError(msg)
        log.warning("domain shift allowed: %s", msg)
        warnings.append(msg)
    return warnings


def _fix_for(modality: str, collection: str, trained: str) -> str:
    from sgma_batch.search import MODALITY_PREFERENCE
    from sgma_batch.sensors import get_profile, list_profiles

    profiles = [p for p in list_profiles() if get_profile(p).modality == modality and get_profile(p).product == trained]
    ids = MODALITY_PREFERENCE.get(modality, ())
    example = f"{ids[0]}" if ids else "<id>"
    return (f"use a {trained} collection (--collections {modality}={example}"
            + (f", or {modality}=<id>:{profiles[0]}" if profiles else "") + ") or a model trained on "
            + f"the {collection} kind of data")


def probe_assets(scenes: Mapping[str, Sequence[Scene]], *, max_scenes: int = PROBE_SCENES,
                 gdal_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Open one asset per modality (its first band, then the other data bands of that scene) with a range
    request and read a central window of at most :data:`PROBE_WINDOW_PX` pixels.

    A modality whose first ``max_scenes`` scenes all fail for good raises that :class:`PermanentAssetError`
    (or :class:`UnsupportedSceneError`); a transient failure (5xx, reset) is logged and left to the run's
    retries. Returns ``{modality: {band: window}}`` of the scene that opened, for :func:`check_units`.
    """
    import rasterio

    from sgma_batch.read import _configure_block_cache, gdal_env_options

    _configure_block_cache()
    out: dict[str, dict[str, np.ndarray]] = {}
    with rasterio.Env(**(gdal_options if gdal_options is not None else gdal_env_options())):
        for mod, found in scenes.items():
            errors: list[Exception] = []
            for scene in list(found)[:max_scenes]:
                try:
                    out[mod] = _probe_scene(scene)
                    out[mod]["__scene__"] = np.asarray(scene.id)
                    break
                except (PermanentAssetError, UnsupportedSceneError) as exc:
                    errors.append(exc)
                except SgmaError:
                    raise  # a missing signer package, ...: a setup error of its own
                except Exception as exc:  # noqa: BLE001 - transient (5xx, reset, timeout, a garbled block): the run's retries handle those
                    log.warning("preflight: %s scene %s did not answer (%s); the run will retry it", mod,
                                scene.id, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
                    break
            else:
                if errors:
                    first = errors[0]
                    n = len(errors)
                    raise type(first)(f"{mod} ({found[0].collection}), {n} of {n} probed scene(s): {first}") from None
            if errors and mod in out:
                log.warning("preflight: %s scene(s) of %s failed (%s); their tiles will be degraded",
                            len(errors), mod, errors[0])
    return out


def _probe_scene(scene: Scene) -> dict[str, np.ndarray]:
    """Central windows of a scene's data bands (as float32, nodata NaN); raises what opening raised."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    from sgma_batch.read import _gdal_path, permanent_error
    from sgma_batch.sensors import get_profile
    from sgma_batch.stac_io import redact_urls, resolve_href

    profile = get_profile(scene.sensor)
    windows: dict[str, np.ndarray] = {}
    for band in profile.bands:
        asset = scene.assets.get(band)
        if asset is None:
            continue
        href = resolve_href(scene, asset)  # a missing signer package raises SignerUnavailableError here
        path = _gdal_path(href)
        if not path.startswith("/vsi") and not Path(path).exists():
            raise _permanent_local(asset.href)
        try:
            with rasterio.open(path) as first:
                paged = asset.index > first.count == 1 and len(first.subdatasets) >= asset.index
            index = 1 if paged else asset.index
            with rasterio.open(f"GTIFF_DIR:{asset.index}:{path}" if paged else path) as src:
                if src.crs is None and src.gcps[0]:
                    raise UnsupportedSceneError(
                        f"scene {scene.id} ({scene.collection}) is in radar geometry (ground control points, no "
                        "map grid); use a terrain-corrected collection (e.g. --collections s1=sentinel-1-rtc) or "
                        "geocode it first"
                    )
                if not 1 <= index <= src.count:
                    raise UnsupportedSceneError(
                        f"asset {asset.href} has {src.count} band(s), the item puts {band!r} in band "
                        f"{asset.index}; fix the item's eo:bands (or bands)"
                    )
                h, w = min(src.height, PROBE_WINDOW_PX), min(src.width, PROBE_WINDOW_PX)
                win = Window((src.width - w) // 2, (src.height - h) // 2, w, h)
                a = src.read(index, window=win).astype(np.float32)
                nodata = asset.nodata if asset.nodata is not None else src.nodatavals[index - 1]
                if nodata is not None and np.isfinite(nodata):
                    a[a == np.float32(nodata)] = np.nan
                windows[band] = a
        except RasterioIOError as exc:
            permanent = permanent_error(exc)
            if permanent is None and "Could not connect to server" in str(exc):
                permanent = AssetHostUnreachableError(
                    f"{str(exc).strip().splitlines()[0]}: nothing listens there; check the asset URLs and "
                    "that the server is up")
            if permanent is not None:  # the unsigned href, and no query string (a token) from GDAL's text
                raise type(permanent)(f"{asset.href}: {redact_urls(str(permanent))}") from None
            raise
        if band != profile.bands[0] and len(windows) >= 2:
            break  # two bands are enough to judge the units
    return windows


def _permanent_local(href: str) -> PermanentAssetError:
    from sgma_batch.errors import AssetNotFoundError

    return AssetNotFoundError(f"asset {href} does not exist: check the catalogue's asset paths")


def check_units(scenes: Mapping[str, Sequence[Scene]], windows: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """The probed values against what the profile reads: dB vs linear backscatter, S2 DN vs reflectance."""
    for mod, bands in windows.items():
        found = scenes.get(mod) or ()
        if not found:
            continue
        scene = next((s for s in found if str(bands.get("__scene__", "")) == s.id), found[0])
        values = np.concatenate([np.ravel(v) for k, v in bands.items() if k != "__scene__"]) if bands else np.array([])
        values = values[np.isfinite(values)]
        if values.size < 16:
            continue
        _check_scene_units(scene, values)


def _check_scene_units(scene: Scene, values: np.ndarray) -> None:
    from sgma_batch.sensors import get_profile

    profile = get_profile(scene.sensor)
    med = float(np.median(values))
    neg = float(np.mean(values < 0))
    if scene.modality == "s1":
        linear = bool(scene.extra.get("linear", True))
        if linear and neg > 0.2:
            raise UnitMismatchError(
                f"s1 scene {scene.id} of {scene.collection} holds backscatter in dB ({neg:.0%} negative, median "
                f"{med:.1f}), the {profile.name} profile reads linear power; name the dB profile: "
                f"--collections s1={scene.collection}:s1-db"
            )
        if not linear and neg < 0.01 and 0 <= med < 1.0:
            raise UnitMismatchError(
                f"s1 scene {scene.id} of {scene.collection} holds linear backscatter (no negative values, median "
                f"{med:.3f}), the {profile.name} profile reads dB; name a linear profile: "
                f"--collections s1={scene.collection}:s1-rtc"
            )
    elif scene.modality == "s2" and float(values.max()) <= 2.0:
        raise UnitMismatchError(
            f"s2 scene {scene.id} of {scene.collection} holds reflectance already scaled to 0-1 (max "
            f"{float(values.max()):.2f}), the {profile.name} profile reads digital numbers (reflectance x "
            "10000); give the collection's DN assets"
        )


def check_scenes(scenes: Mapping[str, Sequence[Scene]], *, card: Any = None, allow_domain_shift: bool = False,
                 probe: bool = True) -> list[str]:
    """The checks after a search (domain, then assets and units); returns the warnings it gave."""
    warnings = check_domain(card, scenes, allow_domain_shift=allow_domain_shift) if card is not None else []
    if probe:
        check_units(scenes, probe_assets(scenes))
    return warnings


# -- 4. after the run: a permanent error that hit every tile is a setup error, not a partial result ------------
def setup_error_from_records(records: Sequence[Any]) -> PermanentAssetError | None:
    """The setup error to report when a permanent asset error (404, 403, no range support, unknown host) took
    a modality away from every tile that planned it, or None (then exit 3 stands for what degraded).

    ``records`` are the run's tile records (``scenes``, ``scenes_used``, ``errors`` per tile). The store keeps
    the tiles as degraded (nothing is lost); the next run after the fix recomputes them.
    """
    from sgma_batch import errors as err

    kinds = {cls.__name__: cls for cls in (err.AssetNotFoundError, err.AssetAccessDeniedError, err.AssetNoRangeError,
                                           err.AssetHostUnreachableError, err.PermanentAssetError)}
    modalities = sorted({m for r in records for m, ids in (r.scenes or {}).items() if ids})
    for mod in modalities:
        planned = [r for r in records if (r.scenes or {}).get(mod)]
        first: str | None = None
        for rec in planned:
            if (rec.scenes_used or {}).get(mod):
                break  # this tile read the modality: not every tile lost it
            msgs = [v for k, v in (rec.errors or {}).items() if k == mod or k.startswith(f"{mod}/")]
            if not msgs or any(m.split(":", 1)[0] not in kinds for m in msgs):
                break  # absent for another reason (no valid data, a transient error): data-level
            first = first or msgs[0]
        else:
            if planned and first is not None:
                name, _, detail = first.partition(": ")
                return kinds[name](
                    f"{mod}: every one of the {len(planned)} tiles that needed it failed to read it for good "
                    f"({detail}); the tiles are kept as degraded: fix the assets, then rerun"
                )
    return None
