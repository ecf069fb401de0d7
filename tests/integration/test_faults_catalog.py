"""The catalogue under faults: a real STAC API (rustac on 127.0.0.1) behind a proxy that answers 429 and
503 before forwarding -> retries hide it and the store is identical to a direct run; an unreachable
catalogue -> one clear error line, its exit code, and nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive
from servers import catalog_items_file, fault_proxy, free_port, rustac_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return rh.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=3)


def _run(catalog: str, checkpoint: Path, out: Path) -> list[str]:
    bbox = ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())
    return ["run", "--aoi", bbox, "--start", "2024-06-01", "--end", "2024-06-30", "--catalog", catalog,
            "--model", str(checkpoint), "--tile-px", "128", "--halo-px", "16", "--out", str(out), "--sequential",
            "--json"]


@pytest.mark.parametrize("status", [429, 503])
def test_flaky_stac_api_is_hidden_by_retries(archive, checkpoint, tmp_path, status):
    items = catalog_items_file(archive, tmp_path / "items.json")
    direct, flaky = tmp_path / "direct.zarr", tmp_path / "flaky.zarr"
    with rustac_server([items], tmp_path / "rustac") as url:
        r = rh.cli(*_run(url, checkpoint, direct))
        assert r.returncode == 0, r.stderr[-2000:]
        with fault_proxy(url, failures=2, status=status) as proxy:
            r = rh.cli(*_run(proxy.url, checkpoint, flaky))
            faults = sum(proxy.faults.values())
    assert r.returncode == 0, r.stderr[-2000:]
    assert faults >= 4, proxy.faults  # landing page, collections, and each search answered `status` twice
    s = json.loads(r.stdout)
    assert s["computed"] == s["tiles"] == 6 and s["scenes"] == {"s1": 2, "dem": 1}
    rh.assert_same_store(direct, flaky)


def test_unreachable_catalogue_is_one_clear_error_and_writes_nothing(checkpoint, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "never.zarr"
    r = rh.cli(*_run(dead, checkpoint, out))
    assert r.returncode == 20, r.stderr[-2000:]
    line = rh.one_line_error(r.stderr)
    assert dead in line and "check the URL" in line
    assert r.stdout == "" and not out.exists()
