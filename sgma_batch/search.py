"""Scene search: STAC APIs through pystac-client, local static catalogues in-process, same semantics.

Semantics shared by both paths (and tested to agree with a real rustac server on the same items):

* spatial: the item geometry intersects the AOI geometry;
* temporal: the item's [start_datetime, end_datetime] (or its datetime) overlaps the closed window;
* collections: one collection per modality, recognised from the catalogue's own collection list
  (:data:`MODALITY_PREFERENCE`) or given as ``{"s2": "<id>", ...}`` / ``"s2=<id>,s1=<id>"``
  (``<id>:<profile>`` picks a profile for an unknown collection);
* ``query``: the STAC query extension on simple properties (eq, neq, lt, lte, gt, gte, in,
  startsWith, endsWith, contains), passed to servers that conform and always re-applied locally, so a
  server that ignores it (rustac) still gives the same result; a query keyed by modality applies per
  modality (``{"s2": {"eo:cloud_cover": {"lt": 30}}}``);
* ``filter``: CQL2-JSON, passed to servers that conform, else evaluated locally with ``cql2``;
* results per modality are sorted by (datetime, id); more than ``max_items`` raises TooManyItemsError.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from sgma_batch.aoi import AOI, split_antimeridian
from sgma_batch.errors import (
    CatalogError,
    CatalogUnreachableError,
    InvalidTimeWindowError,
    ModalityMismatchError,
    NothingFoundError,
    TooManyItemsError,
    UnknownCollectionError,
    UnsafeAssetError,
    UsageError,
)
from sgma_batch.scenes import MODALITIES, Scene
from sgma_batch.sensors import SensorProfile, get_profile, profile_for_collection
from sgma_batch.sensors._items import item_time_range, parse_datetime
from sgma_batch.stac_io import make_stac_api_io, signer_name

log = logging.getLogger(__name__)

DEFAULT_MAX_ITEMS = 2000
PAGE_SIZE = 100
#: Collections chosen per modality when the catalogue offers several (first present wins).
MODALITY_PREFERENCE: Mapping[str, tuple[str, ...]] = {
    "s2": ("sentinel-2-c1-l2a", "sentinel-2-l2a", "sentinel-s2-l2a-cogs", "sentinel-s2-l2a"),
    "s1": ("sentinel-1-rtc", "sentinel1-rtc-aws", "sentinel-1-c1-rtc"),
    "dem": ("cop-dem-glo-30", "cop-dem-glo-90"),
}
_DEFAULT_PROFILE = {"s2": "s2-l2a", "s1": "s1-rtc", "dem": "dem-glo30"}
# Modalities whose items describe the ground, not an acquisition (a DEM is dated by its production,
# e.g. 2021 for GLO-30): searched without the time window, so any window finds them.
TIMELESS_MODALITIES: frozenset[str] = frozenset({"dem"})


@dataclass(frozen=True)
class CollectionChoice:
    """Which collection (read by which profile) serves a modality."""

    modality: str
    collection: str
    profile: str


# -- time window ----------------------------------------------------------------------------------
def parse_window(start: str | date | datetime, end: str | date | datetime) -> tuple[datetime, datetime]:
    """Closed UTC window; a bare date as ``end`` means the end of that day."""

    def conv(value: str | date | datetime, is_end: bool) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, date):
            return datetime.combine(value, time.max if is_end else time.min, tzinfo=UTC)
        text = str(value).strip()
        try:
            if len(text) == 10:
                return conv(date.fromisoformat(text), is_end)
            return parse_datetime(text)
        except ValueError:
            raise InvalidTimeWindowError(f"cannot parse time {text!r}; use YYYY-MM-DD or RFC 3339 like 2024-04-01T00:00:00Z") from None

    s, e = conv(start, False).astimezone(UTC), conv(end, True).astimezone(UTC)
    if e < s:
        raise InvalidTimeWindowError(f"time window ends ({e.isoformat()}) before it starts ({s.isoformat()}); swap --start and --end")
    return s, e


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- collections ----------------------------------------------------------------------------------
def parse_collections(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"s2=id,s1=id"`` or a mapping -> {modality: id[:profile]}; unknown modalities are usage errors."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        pairs: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise UsageError(f"--collections entry {part!r} must be modality=collection, e.g. s2=sentinel-2-l2a")
            mod, _, cid = part.partition("=")
            pairs[mod.strip()] = cid.strip()
        spec = pairs
    out = dict(spec)
    bad = [m for m in out if m not in MODALITIES]
    if bad:
        raise UsageError(f"unknown modality {bad[0]!r} in --collections; known: {', '.join(MODALITIES)}")
    return out


def select_collections(
    available: Iterable[str],
    collections: str | Mapping[str, str] | None = None,
    modalities: Iterable[str] | None = None,
    *,
    catalog: str = "catalogue",
) -> dict[str, CollectionChoice]:
    """Choose one collection per modality from the catalogue's collection ids (overrides win)."""
    avail = sorted(set(available))
    wanted = tuple(modalities) if modalities is not None else MODALITIES
    overrides = parse_collections(collections)
    chosen: dict[str, CollectionChoice] = {}
    for mod in wanted:
        if mod in overrides:
            cid, _, prof_name = overrides[mod].partition(":")
            if cid not in avail:
                raise UnknownCollectionError(
                    f"collection {cid!r} (for {mod}) is not in {catalog}; available: {', '.join(avail) or 'none'}"
                )
            if prof_name:
                prof = get_profile(prof_name)
            else:
                try:
                    prof = profile_for_collection(cid)
                except UnknownCollectionError:
                    prof = get_profile(_DEFAULT_PROFILE[mod])
            if prof.modality != mod:
                raise UsageError(f"collection {cid!r} holds {prof.modality} scenes, not {mod}; fix --collections")
            chosen[mod] = CollectionChoice(mod, cid, prof.name)
            continue
        for cid in MODALITY_PREFERENCE.get(mod, ()):
            if cid in avail:
                chosen[mod] = CollectionChoice(mod, cid, profile_for_collection(cid).name)
                break
    if not chosen:
        offered = [m for m in MODALITIES if any(c in avail for c in MODALITY_PREFERENCE.get(m, ()))]
        if modalities is not None and offered:
            raise ModalityMismatchError(
                f"the model needs {', '.join(wanted)} but {catalog} offers only {', '.join(offered)}; "
                "use a model trained for those modalities or another catalogue"
            )
        known = _profiled_not_auto(avail, wanted)
        if known:
            raise UnknownCollectionError(
                f"{catalog} offers no collection sgma-batch picks automatically, but has a profile for "
                f"{'; '.join(f'{c} ({p}, not picked automatically)' for c, p, _ in known)}; name it: "
                f"--collections {','.join(f'{m}={c}:{p}' for c, p, m in known)}"
            )
        raise UnknownCollectionError(
            f"{catalog} offers no collection sgma-batch recognises (available: {', '.join(avail) or 'none'}); "
            f"map them with a profile: --collections s2=<id>:s2-l2a,s1=<id>:s1-rtc (or s1-db),dem=<id>:dem-glo30"
        )
    unpicked = {m: (c, p) for c, p, m in _profiled_not_auto(avail, wanted)}
    for mod in wanted:
        if mod not in chosen and mod in unpicked:
            cid, prof = unpicked[mod]
            log.warning("%s offers %s (profile %s, not picked automatically), so %s will be absent; to use it: "
                        "--collections %s=%s:%s", catalog, cid, prof, mod, mod, cid, prof)
        elif mod not in chosen:
            log.info("%s offers no %s collection; that modality will be absent", catalog, mod)
    return chosen


def _profiled_not_auto(available: Iterable[str], modalities: Iterable[str]) -> list[tuple[str, str, str]]:
    """(collection, profile, modality) of the available collections a profile reads but that are not in
    :data:`MODALITY_PREFERENCE` (e.g. sentinel-2-l1c, sentinel-1-grd): usable, but only when named."""
    out = []
    for cid in available:
        try:
            prof = profile_for_collection(cid)
        except UnknownCollectionError:
            continue
        if prof.modality in modalities and cid not in MODALITY_PREFERENCE.get(prof.modality, ()):
            out.append((cid, prof.name, prof.modality))
    return out


def catalog_extent(
    catalog: str | Path, modalities: Iterable[str] | None = None, *, collections: str | Mapping[str, str] | None = None
) -> list[tuple[float, float, float, float]] | None:
    """Lon/lat boxes the catalogue covers for the collections a search would use (None: cannot tell).

    A static catalogue: every item's bbox; a STAC API: its collections' spatial extents.
    """
    cat = str(catalog)
    try:
        if _is_url(cat):
            client = _open_client(cat, retries=1, backoff=0.2, timeout=20)
            available = [c.id for c in client.get_collections()]
            choices = select_collections(available, collections, modalities, catalog=cat)
            boxes = []
            for choice in choices.values():
                bbs = client.get_collection(choice.collection).extent.spatial.bboxes or []
                boxes += [tuple(float(v) for v in ((b[0], b[1], b[3], b[4]) if len(b) == 6 else b[:4])) for b in bbs]
            return boxes or None
        static = StaticCatalog(cat)
        choices = select_collections(static.collections, collections, modalities, catalog=cat)
        wanted = {c.collection for c in choices.values()}
        from sgma_batch.sensors._items import bbox_of

        return [bbox_of(i) for i in static.items() if i.get("collection") in wanted] or None
    except Exception as exc:  # noqa: BLE001 - only an explanation: the caller falls back to "nothing found"
        log.debug("extent of %s unknown: %s", cat, exc)
        return None


# -- local filtering (static path, and re-applied to API results) ---------------------------------
def _cmp(op: str, value: Any, arg: Any) -> bool:
    try:
        if op == "eq":
            return value == arg
        if op == "neq":
            return value != arg
        if op == "lt":
            return value < arg
        if op == "lte":
            return value <= arg
        if op == "gt":
            return value > arg
        if op == "gte":
            return value >= arg
        if op == "in":
            return value in arg
        if op == "startsWith":
            return isinstance(value, str) and value.startswith(arg)
        if op == "endsWith":
            return isinstance(value, str) and value.endswith(arg)
        if op == "contains":
            return isinstance(value, (str, list)) and arg in value
    except TypeError:
        return False
    raise UsageError(f"unsupported query operator {op!r}; use eq, neq, lt, lte, gt, gte, in, startsWith, endsWith, contains")


def matches_query(item: Mapping[str, Any], query: Mapping[str, Any] | None) -> bool:
    """STAC query extension on an item's properties (a missing property never matches)."""
    if not query:
        return True
    props = item.get("properties") or {}
    for prop, ops in query.items():
        if prop not in props or props[prop] is None:
            return False
        if not isinstance(ops, Mapping):
            ops = {"eq": ops}
        for op, arg in ops.items():
            if not _cmp(op, props[prop], arg):
                return False
    return True


def _filter_matcher(filter_: Mapping[str, Any] | None) -> Callable[[Mapping[str, Any]], bool]:
    if not filter_:
        return lambda item: True
    try:
        import cql2
    except ImportError:
        raise UsageError("a CQL2 filter on a static catalogue needs the cql2 package: pip install cql2") from None
    expr = cql2.Expr(dict(filter_))
    return lambda item: bool(expr.matches(dict(item)))


def _query_for(query: Mapping[str, Any] | None, modality: str) -> Mapping[str, Any] | None:
    if not query:
        return None
    if any(k in MODALITIES for k in query):
        return query.get(modality)
    return query


def _overlaps(item: Mapping[str, Any], start: datetime, end: datetime) -> bool:
    s, e = item_time_range(item)
    return s <= end and e >= start


def _intersects(item: Mapping[str, Any], aoi: BaseGeometry) -> bool:
    geom = item.get("geometry")
    return geom is not None and shape(geom).intersects(aoi)


# -- static catalogues ----------------------------------------------------------------------------
def _is_url(catalog: str) -> bool:
    return urlparse(catalog).scheme in ("http", "https")


def _absolute_hrefs(item: dict[str, Any], base: str) -> dict[str, Any]:
    for asset in (item.get("assets") or {}).values():
        href = asset.get("href", "")
        if href and not urlparse(href).scheme and not Path(href).is_absolute():
            asset["href"] = str((Path(base).parent / href).resolve()) if not _is_url(base) else urljoin(base, href)
    return item


class StaticCatalog:
    """Items of a local static catalogue (catalog.json / collection.json) or item-collection JSON file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CatalogUnreachableError(f"catalogue {self.path} does not exist; give a catalog.json path or a STAC API URL")
        from sgma_batch.inputs import load_json_file

        # bounded: a regular file (not /dev/zero), at most 1 GiB, nesting at most 64, UTF-8 (one line, exit 20)
        data = load_json_file(self.path, what="catalogue", error=CatalogError, max_bytes=1 << 30,
                              hint="give a STAC catalog.json, collection or item collection")
        if not isinstance(data, (dict, list)):
            raise CatalogError(f"{self.path} is not a STAC catalogue, collection or item collection")
        self._items: list[dict[str, Any]] | None = None
        if isinstance(data, list) or data.get("type") in ("FeatureCollection", "Feature"):
            feats = data if isinstance(data, list) else data.get("features", [data])
            self._items = [_absolute_hrefs(dict(f), str(self.path)) for f in feats]
            self._collections = sorted({str(f.get("collection")) for f in self._items if f.get("collection")})
        elif data.get("type") in ("Catalog", "Collection"):
            # Walk the raw JSON (child/item links) rather than pystac objects, so items are read exactly
            # as written (no version migration), like a STAC server would serve them.
            self._items = []
            cols: set[str] = set()
            self._walk(self.path.resolve(), data, None, cols, set())
            self._collections = sorted(cols)
        else:
            raise CatalogError(f"{self.path} is not a STAC catalogue, collection or item collection")

    def _walk(self, path: Path, data: dict[str, Any], collection: str | None, cols: set[str], seen: set[Path]) -> None:
        if path in seen:
            return
        seen.add(path)
        if data.get("type") == "Collection":
            collection = str(data["id"])
            cols.add(collection)
        for link in data.get("links") or []:
            rel, href = link.get("rel"), link.get("href")
            if rel not in ("child", "item") or not href or _is_url(href):
                continue
            target = (path.parent / href).resolve()
            from sgma_batch.inputs import load_json_file

            child = load_json_file(target, what=f"catalogue file (linked from {path})", error=CatalogError,
                                   max_bytes=64 << 20, hint="repair the catalogue")
            if not isinstance(child, dict):
                raise CatalogError(f"{target} linked from {path} is not a STAC object; repair the catalogue")
            if rel == "item":
                child = _absolute_hrefs(child, str(target))
                if not child.get("collection") and collection:
                    child["collection"] = collection
                if child.get("collection"):
                    cols.add(str(child["collection"]))
                assert self._items is not None
                self._items.append(child)
            else:
                self._walk(target, child, collection, cols, seen)

    @property
    def collections(self) -> list[str]:
        return list(self._collections)

    def items(self) -> Iterator[dict[str, Any]]:
        yield from self._items or []

    def search(
        self, collection: str, aoi: BaseGeometry, start: datetime | None, end: datetime | None
    ) -> Iterator[dict[str, Any]]:
        """Items of ``collection`` intersecting ``aoi`` and overlapping the window (no window: any time)."""
        for item in self.items():
            if item.get("collection") != collection or not _intersects(item, aoi):
                continue
            if start is None or end is None or _overlaps(item, start, end):
                yield item


class InMemoryCatalog(StaticCatalog):
    """STAC Items held in memory (dicts), searched like a static catalogue: planning and co-location tests
    without files or servers, and catalogues assembled by code. Asset hrefs are used as given."""

    def __init__(self, items: Iterable[Mapping[str, Any]], name: str = "in-memory catalogue") -> None:
        self.path = Path(name)
        self.name = name
        self._items = [json.loads(json.dumps(dict(i))) for i in items]  # a private copy, as a server would serve
        self._collections = sorted({str(i["collection"]) for i in self._items if i.get("collection")})


# -- the API path ---------------------------------------------------------------------------------
def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Schemes an asset of a remote (API) catalogue may use: what the reader opens over the network.
REMOTE_ASSET_SCHEMES = ("http", "https", "s3")


def _check_hrefs(item: Mapping[str, Any], catalog: str, *, local_ok: bool = False) -> None:
    for key, asset in (item.get("assets") or {}).items():
        href = str(asset.get("href", ""))
        scheme = urlparse(href).scheme.lower()
        if scheme not in ("", "file") and len(scheme) > 1 and scheme not in REMOTE_ASSET_SCHEMES:
            raise UnsafeAssetError(
                f"remote catalogue {catalog} gives asset {key!r} of item {item.get('id')} the scheme {scheme!r}; "
                f"only {', '.join(REMOTE_ASSET_SCHEMES)} are read from a remote catalogue"
            )
        if not local_ok and (scheme in ("", "file") or len(scheme) == 1):  # local path (or a drive letter)
            raise UnsafeAssetError(
                f"remote catalogue {catalog} points asset {key!r} of item {item.get('id')} at a local path; refusing to read it"
            )


def _open_client(url: str, *, retries: int, backoff: float, timeout: float):
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        return Client.open(url, stac_io=make_stac_api_io(total_retries=retries, backoff_factor=backoff, timeout=timeout))
    except APIError as exc:
        raise CatalogUnreachableError(f"STAC API {url} {_api_error_reason(exc)}; check the URL") from None
    except Exception as exc:
        if _is_request_error(exc):
            raise CatalogUnreachableError(f"cannot reach STAC API {url} ({type(exc).__name__}); check the URL and network") from None
        raise


def _api_error_reason(exc: BaseException) -> str:
    """What went wrong opening a STAC API, in a few words (pystac-client wraps connection errors in APIError)."""
    text = str(exc)
    for needle, reason in (("Connection refused", "refused the connection (nothing listens there)"),
                           ("Name or service not known", "has an unknown host name (DNS)"),
                           ("NameResolutionError", "has an unknown host name (DNS)"),
                           ("Read timed out", "did not answer in time"),
                           ("Max retries exceeded", "could not be reached after retries")):
        if needle in text:
            return reason
    status = getattr(exc, "status_code", None)
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:120]
    return f"answered HTTP {status} ({first})" if status else f"answered an error ({first})"


def _is_request_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.RequestException, OSError))


def _api_search(
    client: Any,
    url: str,
    choice: CollectionChoice,
    geometry: BaseGeometry,
    start: datetime | None,
    end: datetime | None,
    query: Mapping[str, Any] | None,
    filter_: Mapping[str, Any] | None,
    max_items: int,
    page_size: int = PAGE_SIZE,
) -> list[dict[str, Any]]:
    from pystac_client import ConformanceClasses
    from pystac_client.exceptions import APIError

    kwargs: dict[str, Any] = {
        "collections": [choice.collection],
        "intersects": mapping(geometry),  # an AOI across 180° is a MultiPolygon split there: both parts
        "limit": page_size,
        "max_items": max_items + 1,
    }
    if start is not None and end is not None:
        kwargs["datetime"] = f"{_rfc3339(start)}/{_rfc3339(end)}"
    if query and client.conforms_to(ConformanceClasses.QUERY):
        kwargs["query"] = dict(query)
    local_filter = None
    if filter_:
        if client.conforms_to(ConformanceClasses.FILTER):
            kwargs["filter"] = dict(filter_)
            kwargs["filter_lang"] = "cql2-json"
        else:
            local_filter = _filter_matcher(filter_)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DoesNotConformTo for servers we post-filter anyway
            search = client.search(**kwargs)
            items = list(search.items_as_dicts())
    except APIError as exc:
        raise CatalogError(f"STAC API {url} refused the search for {choice.collection}: {str(exc)[:200]}") from None
    except Exception as exc:
        if _is_request_error(exc):
            raise CatalogUnreachableError(
                f"STAC API {url} failed during the search for {choice.collection} after retries ({type(exc).__name__}); try again later"
            ) from None
        raise
    if local_filter is not None:
        items = [i for i in items if local_filter(i)]
    return items


# -- the entry point ------------------------------------------------------------------------------
def search_scenes(
    catalog: str | Path | StaticCatalog,
    aoi: AOI | BaseGeometry | Mapping[str, Any],
    start: str | date | datetime,
    end: str | date | datetime,
    *,
    collections: str | Mapping[str, str] | None = None,
    query: Mapping[str, Any] | None = None,
    filter: Mapping[str, Any] | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
    signer: str | Callable[[str], str] | None = None,
    modalities: Iterable[str] | None = None,
    allow_empty: bool = False,
    retries: int = 5,
    backoff_factor: float = 0.5,
    timeout: float = 60.0,
    allow_local_assets: bool | None = None,
    page_size: int = PAGE_SIZE,
) -> dict[str, list[Scene]]:
    """Find the scenes of each modality over an AOI and window.

    Args:
        catalog: a STAC API URL, a local static catalogue path (catalog.json, collection.json, or an
            item-collection JSON file), or a :class:`StaticCatalog` / :class:`InMemoryCatalog` object.
        aoi: an :class:`AOI` (or a lon/lat shapely geometry / GeoJSON mapping).
        start, end: the closed time window (dates or RFC 3339); modalities in
            ``TIMELESS_MODALITIES`` (the DEM) are searched without it.
        collections: per-modality overrides, ``{"s2": "sentinel-2-l2a"}`` or ``"s2=...,s1=..."``.
        query: STAC query-extension dict, global or keyed by modality.
        filter: CQL2-JSON filter (applied to every modality).
        max_items: per-modality guard; more matches raise :class:`TooManyItemsError`.
        signer: name (or importable function) of the href signer applied at read time.
        modalities: restrict to these modalities (default: all the catalogue offers).
        allow_empty: return empty lists instead of raising :class:`NothingFoundError` (raised when no
            dated modality has a scene: a DEM alone does not count).
        retries, backoff_factor, timeout: HTTP behaviour of the API path.
        allow_local_assets: allow local-path asset hrefs from an API (default: only loopback APIs).
        page_size: items per API page (``limit``); paging follows the server's next links.

    Returns:
        ``{modality: [Scene, ...]}`` for each modality with a collection, sorted by (datetime, id).
    """
    t0, t1 = parse_window(start, end)
    geom = _aoi_geometry(aoi)
    sign = signer_name(signer)
    if isinstance(catalog, StaticCatalog):
        cat = catalog.name if isinstance(catalog, InMemoryCatalog) else str(catalog.path)
    else:
        cat = str(catalog)
    client = None
    static: StaticCatalog | None = None
    if isinstance(catalog, StaticCatalog):  # an in-memory (or already opened static) catalogue
        static = catalog
        available = static.collections
        local_ok = True
    elif _is_url(cat):
        client = _open_client(cat, retries=retries, backoff=backoff_factor, timeout=timeout)
        try:
            available = [c.id for c in client.get_collections()]
        except Exception as exc:
            if _is_request_error(exc):
                raise CatalogUnreachableError(f"cannot list collections of {cat} ({type(exc).__name__}); check the URL") from None
            raise
        local_ok = _is_loopback(cat) if allow_local_assets is None else allow_local_assets
    else:
        static = StaticCatalog(cat)
        available = static.collections
        local_ok = True
    choices = select_collections(available, collections, modalities, catalog=cat)
    results: dict[str, list[Scene]] = {}
    matcher = _filter_matcher(filter) if static is not None else None
    for mod, choice in choices.items():
        q = _query_for(query, mod)
        w0, w1 = (None, None) if mod in TIMELESS_MODALITIES else (t0, t1)
        if static is not None and matcher is not None:
            items = [i for i in static.search(choice.collection, geom, w0, w1) if matcher(i)]
        else:
            items = _api_search(client, cat, choice, geom, w0, w1, q, filter, max_items, page_size)
        items = [i for i in items if matches_query(i, q)]
        if len(items) > max_items:
            raise TooManyItemsError(
                f"{choice.collection} matched more than {max_items} items for {mod}; narrow the AOI or window, "
                f"or raise --max-items"
            )
        profile = get_profile(choice.profile)
        scenes = []
        for item in items:
            if client is not None:  # a remote catalogue: no odd schemes, no local files unless loopback
                _check_hrefs(item, cat, local_ok=local_ok)
            item = dict(item)
            item.setdefault("collection", choice.collection)
            scene = profile.scene_from_item(item, signer=sign)
            profile.check_map_grid(scene)
            scenes.append(scene)
        scenes.sort(key=lambda s: (s.datetime, s.id))
        log.info("%s: %d %s scenes in %s", cat, len(scenes), mod, choice.collection)
        results[mod] = scenes
    # A timeless DEM alone is no scene of the window: nothing found unless a dated modality has scenes.
    dated = [m for m in results if m not in TIMELESS_MODALITIES] or list(results)
    if not allow_empty and not any(results[m] for m in dated):
        raise NothingFoundError(
            f"no scenes in {cat} for this AOI between {t0.date()} and {t1.date()} "
            f"(collections: {', '.join(c.collection for c in choices.values())}); widen the window or check the AOI"
        )
    return results


def _aoi_geometry(aoi: AOI | BaseGeometry | Mapping[str, Any]) -> BaseGeometry:
    """The lon/lat search geometry; a raw geometry across 180° is split there as :func:`load_aoi` does."""
    if isinstance(aoi, AOI):
        return aoi.geometry
    return split_antimeridian(aoi if isinstance(aoi, BaseGeometry) else shape(aoi))


def profile_of(scene: Scene) -> SensorProfile:
    """The sensor profile that produced a scene."""
    return get_profile(scene.sensor)


__all__ = [
    "DEFAULT_MAX_ITEMS",
    "MODALITY_PREFERENCE",
    "TIMELESS_MODALITIES",
    "CollectionChoice",
    "InMemoryCatalog",
    "StaticCatalog",
    "catalog_extent",
    "matches_query",
    "parse_collections",
    "parse_window",
    "profile_of",
    "search_scenes",
    "select_collections",
]
