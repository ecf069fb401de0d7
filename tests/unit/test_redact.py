"""Signed URLs never reach logs: the redaction filter strips query strings of URLs and of bare asset
paths as GDAL writes them in its error messages."""

from __future__ import annotations

import logging

from sgma_batch.stac_io import RedactSignedUrls, redact_urls

SIG = "sig=Zm9vYmFyU2VjcmV0"


def test_query_strings_of_urls_and_bare_paths_are_redacted():
    gdal = f"msg='s1_vh.tif?st=2026-01-01&se=2026-01-02&sp=rl&{SIG}, band 1: IReadBlock failed'"
    url = f"open /vsicurl/https://acct.blob.core.windows.net/c/b.tif?se=1&{SIG} failed"
    for text in (gdal, url):
        out = redact_urls(text)
        assert SIG not in out and "?<redacted>" in out
    assert "IReadBlock failed" in redact_urls(gdal) and "b.tif?<redacted> failed" in redact_urls(url)
    for plain in ("is it? yes a=b", "what? x", "x == y?"):
        assert redact_urls(plain) == plain  # questions in prose are left alone


def test_filter_rewrites_formatted_records():
    record = logging.LogRecord("rasterio._err", logging.INFO, __file__, 1, "GDAL: %s", (f"a.tif?{SIG}",), None)
    assert RedactSignedUrls().filter(record)
    assert SIG not in record.getMessage() and "a.tif?<redacted>" in record.getMessage()
