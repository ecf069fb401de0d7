"""STAC access helpers: the retrying HTTP layer for pystac-client and href signing at read time.

Signing (Planetary Computer style SAS tokens, valid ~45 minutes) happens when an asset is read,
never at search time: scene records keep the unsigned href plus the *name* of a signer
(``Scene.extra["signer"]``), so records stay stable for content hashes and no token is ever
written into a record, a manifest or a log.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable

from urllib3.util.retry import Retry

from sgma_batch.errors import SignerUnavailableError, UsageError
from sgma_batch.scenes import AssetRef, Scene

log = logging.getLogger(__name__)

RETRY_STATUS = (429, 500, 502, 503, 504)
Signer = Callable[[str], str]
_SIGNERS: dict[str, Signer] = {}


def make_retry(total: int = 5, backoff_factor: float = 0.5) -> Retry:
    """urllib3 Retry for STAC APIs: connection errors, 429 and 5xx, for every method including POST."""
    return Retry(
        total=total,
        connect=total,
        read=total,
        status=total,
        backoff_factor=backoff_factor,
        status_forcelist=list(RETRY_STATUS),
        allowed_methods=None,  # None = retry every method; POST /search is idempotent
        respect_retry_after_header=True,
        raise_on_status=True,
    )


def make_stac_api_io(*, total_retries: int = 5, backoff_factor: float = 0.5, timeout: float = 60.0, headers: dict[str, str] | None = None):
    """A pystac-client ``StacApiIO`` with :func:`make_retry` mounted for http and https."""
    from pystac_client.stac_api_io import StacApiIO

    return StacApiIO(headers=headers, timeout=timeout, max_retries=make_retry(total_retries, backoff_factor))


def register_signer(name: str, signer: Signer) -> None:
    """Register a signer under a short name (process-local; Ray workers need a ``module:function`` name)."""
    _SIGNERS[name] = signer


def _planetary_computer(href: str) -> str:
    try:
        import planetary_computer  # type: ignore[import-not-found]
    except ImportError:
        raise SignerUnavailableError(
            "signer 'planetary-computer' needs the planetary-computer package: pip install planetary-computer"
        ) from None
    return planetary_computer.sign(href)


register_signer("planetary-computer", _planetary_computer)


def signer_name(signer: str | Signer | None) -> str | None:
    """Normalise a signer argument to a name that can be stored in a frozen record."""
    if signer is None or isinstance(signer, str):
        if isinstance(signer, str):
            get_signer(signer)  # fail early on unknown names
        return signer
    name = f"{signer.__module__}:{signer.__qualname__}"
    if "<" in name:
        raise UsageError(f"signer {name} is not importable; pass a top-level function or a registered name")
    get_signer(name)
    return name


def get_signer(name: str) -> Signer:
    """A signer by registered name or ``package.module:function`` path."""
    if name in _SIGNERS:
        return _SIGNERS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            raise UsageError(f"cannot import signer {name!r}; give 'module:function' or one of {sorted(_SIGNERS)}") from None
        if not callable(obj):
            raise UsageError(f"signer {name!r} is not callable")
        return obj  # type: ignore[return-value]
    raise UsageError(f"unknown signer {name!r}; known: {', '.join(sorted(_SIGNERS))} or 'module:function'")


def resolve_href(scene: Scene, asset: AssetRef | str) -> str:
    """The href to open for an asset of a scene, signed now if the scene names a signer. Do not log it."""
    ref = scene.assets[asset] if isinstance(asset, str) else asset
    name = scene.extra.get("signer")
    if not name:
        return ref.href
    return get_signer(str(name))(ref.href)


# A query string (``?k=v&...``) right after a path or URL. GDAL's messages name a signed asset by its
# file name alone (``s1_vv.tif?se=...&sig=...``), so the scheme cannot be required.
_URL_QUERY = re.compile(r"(?<=[^\s?'\"<>=&])\?[^\s'\"<>?]*=[^\s'\"<>]*")


def redact_urls(text: str) -> str:
    """``text`` with the query string of every URL or path replaced: SAS tokens and signatures live there."""
    return _URL_QUERY.sub("?<redacted>", text)


class RedactSignedUrls(logging.Filter):
    """A handler filter that strips URL query strings from every record, third-party loggers included
    (rasterio logs the full ``/vsicurl/`` path of a signed href at debug level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message and "=" in message:
            record.msg, record.args = redact_urls(message), None
        return True
