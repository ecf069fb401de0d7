"""Planetary-Computer-style signing at read time: a local asset server that demands a token per request.

The catalogue holds unsigned http hrefs; the run signs each href when it reads it (the signer is named
in the spec, never a token), so no token lands in a scene record, a manifest record or the store.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run_archive
from servers import _RangeHandler

from sgma_batch.errors import AssetAccessDeniedError
from sgma_batch.run import RunSpec, run_mosaic
from sgma_batch.stac_io import register_signer
from sgma_batch.store import read_manifest

pytestmark = pytest.mark.integration

TOKEN = "sv=2026&sig=s3cr3t-read-token"
WRONG = "sv=2026&sig=expired-token"


def sign(href: str) -> str:
    """Appends the token the asset server requires (like ``planetary_computer.sign``)."""
    return f"{href}?{TOKEN}"


def sign_wrong(href: str) -> str:
    return f"{href}?{WRONG}"


register_signer("test-token", sign)
register_signer("test-wrong-token", sign_wrong)


class _TokenRangeHandler(_RangeHandler):
    """The reliability tests' Range server, answering 403 unless the request carries the token."""

    seen: list[tuple[str, bool]]

    def _serve(self, head: bool) -> None:
        url = urlsplit(self.path)
        ok = parse_qs(url.query) == parse_qs(TOKEN)
        self.seen.append((url.path, ok))
        if not ok:
            self._reply(403, b"AuthenticationFailed: Server failed to authenticate the request", head)
            return
        self.path = url.path
        super()._serve(head)


@pytest.fixture
def token_server(tmp_path) -> Iterator[tuple[str, Path, list]]:
    root = tmp_path / "assets"
    run_archive.build_archive(root)
    seen: list[tuple[str, bool]] = []
    handler = type("H", (_TokenRangeHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return run_archive.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=5)


def _spec(catalog: Path, checkpoint: Path, out: Path, **kw) -> RunSpec:
    base = {"aoi": run_archive.aoi_lonlat(), "out": str(out), "start": "2024-06-01", "end": "2024-06-30",
            "catalog": str(catalog), "model": str(checkpoint), "tile_px": 256, "halo_px": 16, "window_px": 64,
            "overlap_px": 16, "executor": "sequential", "read_retries": 0}
    return RunSpec(**{**base, **kw})


def _store_text(path: Path) -> str:
    return "\n".join(f.read_text(errors="ignore") for f in path.rglob("*") if f.is_file() and f.suffix != ".png")


def test_hrefs_are_signed_at_read_time_and_never_stored(token_server, checkpoint, tmp_path):
    url, root, seen = token_server
    items = json.loads((root / "items.json").read_text())["features"]
    for item in items:
        for asset in item["assets"].values():
            asset["href"] = f"{url}/{asset['href']}"
    remote = run_archive.write_items(tmp_path, items)

    # Unsigned: the server refuses (403), found by the preflight before any compute: exit 64, no store.
    out = tmp_path / "m.zarr"
    with pytest.raises(AssetAccessDeniedError) as e0:
        run_mosaic(_spec(remote, checkpoint, out))
    assert e0.value.exit_code == 64 and not out.exists()
    assert seen and not any(ok for _, ok in seen)

    # A signer with an expired token: refused as well; the error names the unsigned href, never a token.
    seen.clear()
    with pytest.raises(AssetAccessDeniedError) as e1:
        run_mosaic(_spec(remote, checkpoint, out, signer="test-wrong-token"))
    assert url in str(e1.value) and "expired-token" not in str(e1.value) and "sig=" not in str(e1.value)
    assert {p for p, _ in seen} and not any(ok for _, ok in seen) and not out.exists()

    # The right signer: every request carries the token, every tile is computed.
    seen.clear()
    s2 = run_mosaic(_spec(remote, checkpoint, out, signer="test-token"))
    assert s2.exit_code == 0 and s2.computed == s2.tiles and s2.reused == 0
    assert seen and all(ok for _, ok in seen)
    assert {p.rsplit("/", 1)[-1] for p, _ in seen} >= {"dem.tif", "s1-b_vv.tif", "s1-b_vh.tif"}
    text = _store_text(out)
    assert "s3cr3t" not in text and "sig=" not in text
    assert all(r.status == "computed" for r in read_manifest(out).values())

    # Reading over HTTP with signing gives exactly the pixels of reading the same COGs as local files.
    local = tmp_path / "local.zarr"
    run_mosaic(_spec(root / "items.json", checkpoint, local))
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(local), mode="r")
    for name in ("class", "confidence", "modality_mask", "robustness"):
        np.testing.assert_array_equal(np.asarray(a[name][...]), np.asarray(b[name][...]), err_msg=name)
