"""One redaction (sgma_batch/redact.py) for error lines, logs, JSON output, store attributes and reports:
tokens in query strings, userinfo in URLs, credential headers and key=value secrets."""

from __future__ import annotations

import json
import logging

import pytest

from sgma_batch.redact import MARK, RedactFilter, redact, redact_obj

SECRETS = ("Zm9vYmFyU2VjcmV0", "hunter2", "AKIAEXAMPLEKEY", "eyJhbGciOiJIUzI1NiJ9.tok")

CASES = [
    "STAC API https://alice:hunter2@stac.example.com/api answered 401",
    "GET https://stac.example.com/search?collections=s2&token=Zm9vYmFyU2VjcmV0 failed",
    "open /vsicurl/https://acct.blob.core.windows.net/c/b.tif?se=1&sig=Zm9vYmFyU2VjcmV0 failed",
    "msg='s1_vh.tif?st=2026-01-01&se=2026-01-02&sig=Zm9vYmFyU2VjcmV0, band 1: IReadBlock failed'",
    "s3://AKIAEXAMPLEKEY:hunter2@bucket/key.tif",
    "headers={'Authorization': 'Bearer eyJhbGciOiJIUzI1NiJ9.tok', 'Accept': 'application/json'}",
    "Authorization: Basic hunter2",
    "X-API-Key: AKIAEXAMPLEKEY",
    "retrying with api_key=AKIAEXAMPLEKEY and password=hunter2",
    '{"token": "Zm9vYmFyU2VjcmV0", "access_key": "AKIAEXAMPLEKEY"}',
    "ray://admin:hunter2@10.0.0.1:10001",
]


@pytest.mark.parametrize("text", CASES)
def test_every_kind_of_secret_is_removed(text):
    out = redact(text)
    assert MARK in out
    for secret in SECRETS:
        assert secret not in out, out


def test_plain_text_paths_and_hosts_are_kept():
    for plain in ("is it? yes a=b", "what? x", "/data/stores/map.zarr", "https://stac.example.com/api",
                  "store s3://bucket/map.zarr is locked", "127.0.0.1:6379", "grid [218, 326]@[10.0, 0.0]"):
        assert redact(plain) == plain
    assert redact("https://u:p@host/x?k=v").startswith("https://<redacted>@host/x?")


def test_json_like_values_are_redacted_recursively_and_stay_json():
    value = {"sgma:catalog": "https://u:hunter2@h/api?token=Zm9vYmFyU2VjcmV0", "password": "hunter2",
             "window": ["2024-06-01", "2024-06-30"], "n": 3, "nested": [{"href": "a.tif?sig=Zm9vYmFyU2VjcmV0"}],
             "signatures": {"s1+s2": 4}}
    out = redact_obj(value)
    text = json.dumps(out)
    assert not any(s in text for s in SECRETS)
    assert out["window"] == value["window"] and out["n"] == 3 and out["signatures"] == {"s1+s2": 4}


def test_log_filter_redacts_arguments_and_tracebacks():
    try:
        raise ConnectionError("cannot reach https://bob:hunter2@h/api?token=Zm9vYmFyU2VjcmV0")
    except ConnectionError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "search %s failed", ("https://h/s?token=Zm9vYmFyU2VjcmV0",),
                               exc_info)
    assert RedactFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "Traceback" in text and not any(s in text for s in SECRETS)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "tile failed", (), exc_info)
    RedactFilter(tracebacks=False).filter(record)
    text = logging.Formatter().format(record)
    assert "Traceback" not in text and "ConnectionError" in text and "\n" not in text
    assert not any(s in text for s in SECRETS)
