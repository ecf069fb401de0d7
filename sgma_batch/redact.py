"""One redaction for all text that leaves the process: error lines, logs, JSON output, store attributes,
STAC items and reports.

What is removed:

* URL query strings (SAS tokens, ``?token=``, ``&sig=``, ``X-Amz-Signature``), also after bare file
  names as GDAL prints them (``b.tif?se=...&sig=...``) -> ``?<redacted>``;
* userinfo in URLs (``https://user:password@host``, ``s3://KEY:SECRET@bucket``) -> ``https://<redacted>@host``;
* credential headers and key=value pairs in free text (``Authorization: Bearer ...``, ``X-API-Key: ...``,
  ``api_key=...``, ``password=...``) -> ``Authorization: <redacted>``.

The text is otherwise unchanged, so paths and hosts stay readable in messages. :func:`redact_obj` applies
the same to every string (and key) of a JSON-like value.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["RedactFilter", "install_log_redaction", "redact", "redact_obj"]

MARK = "<redacted>"

# A query string right after a path or URL (sgma_batch.stac_io.redact_urls, kept identical for logs).
_URL_QUERY = re.compile(r"(?<=[^\s?'\"<>=&])\?[^\s'\"<>?]*=[^\s'\"<>]*")
# scheme://userinfo@ : anything but whitespace, '/', '@' up to the last '@' before the host.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^\s/@'\"<>]+)@")
# Credential headers as printed by HTTP libraries and in reprs of header dicts.
_HEADER = re.compile(
    r"(?P<name>\b(?:authorization|proxy-authorization|x-api-key|api-key|x-auth-token|x-amz-security-token|"
    r"x-goog-api-key|ocp-apim-subscription-key|cookie|set-cookie)\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<value>(?:bearer|basic|token|sas)\s+[^\s'\",}]+|[^\s'\",}]+)",
    re.IGNORECASE,
)
# key=value / "key": "value" pairs whose key names a secret.
_SECRET_KEY = r"[A-Za-z0-9_-]*(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|credential)s?"
_SECRET_PAIR = re.compile(
    rf"(?P<name>\b{_SECRET_KEY}['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\s'\",&}}<>]+)", re.IGNORECASE
)
_SECRET_NAME = re.compile(rf"^{_SECRET_KEY}$|^authorization$", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with URL queries, URL userinfo, credential headers and secret key=value pairs replaced."""
    if not isinstance(text, str) or not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{MARK}@", text)
    out = _URL_QUERY.sub(f"?{MARK}", out)
    out = _HEADER.sub(lambda m: f"{m['name']}{MARK}", out)
    out = _SECRET_PAIR.sub(lambda m: m[0] if m["value"] == MARK else f"{m['name']}{MARK}", out)
    return out


def redact_obj(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings, numbers) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            redact(k) if isinstance(k, str) else k:
            MARK if isinstance(k, str) and _SECRET_NAME.match(k) and isinstance(v, str) else redact_obj(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_obj(v) for v in value)
    return value


class RedactFilter(logging.Filter):
    """A handler filter that redacts every record (message, arguments and exception text).

    ``tracebacks=False`` (the CLI without ``--debug``) shortens a record's exception to one line appended
    to its message, so a logged failure never prints a traceback unasked.
    """

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose args do not format: leave it to logging
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not self.tracebacks:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            message = f"{message} ({type(exc).__name__}{': ' + first if first else ''}; --debug shows the traceback)"
            record.exc_info, record.exc_text = None, None
        cleaned = redact(message)
        if cleaned != record.msg or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return True


def install_log_redaction(logger: logging.Logger | None = None, *, tracebacks: bool = True) -> None:
    """Add :class:`RedactFilter` to every handler of ``logger`` (the root logger by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter(tracebacks=tracebacks))
