"""Security properties, each checked on the real thing: Ray token authentication stays on outside tests and
no dashboard listens beyond 127.0.0.1; checkpoints load without unpickling (a booby-trapped pickle is
refused and never runs); a remote catalogue cannot point the reader at local files or odd schemes; a
signed URL's secret never reaches the logs or the store."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import reliability_signer
import run_archive
from servers import asset_server, catalog_items_file, chaos_proxy, remote_items, rustac_server

from sgma_batch.aoi import load_aoi
from sgma_batch.errors import UnsafeAssetError
from sgma_batch.search import search_scenes

pytestmark = pytest.mark.integration

PRODUCT_DIRS = ("sgma_batch", "sgma_model", "cli")


def _product_files(suffixes=(".py",)) -> list[Path]:
    files = [p for d in (*PRODUCT_DIRS, "deploy") for p in (rh.REPO / d).rglob("*") if p.suffix in suffixes]
    assert len(files) > 20
    return files


def test_product_code_never_turns_ray_auth_off_and_starts_no_public_dashboard():
    for f in _product_files((".py", ".yaml", ".yml", ".sh", ".toml", "")):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert "RAY_AUTH_MODE" not in text or "disabled" not in text, f"{f} turns Ray auth off"
            assert "dashboard-host=0.0.0.0" not in text and "dashboard_host=\"0.0.0.0\"" not in text, f
    calls = 0
    for f in _product_files():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "ray.init":
                calls += 1
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("include_dashboard") == "False" or kw.get("dashboard_host") in ("'127.0.0.1'",), \
                    f"{f}:{node.lineno}: ray.init without include_dashboard=False or dashboard_host='127.0.0.1'"
    assert calls >= 1
    for f in (rh.REPO / "deploy" / "kuberay").rglob("*.yaml"):
        if f.name == "kustomization.yaml":  # kustomize's own files name the kinds they patch; not manifests
            continue
        text = f.read_text()
        if ("kind: RayCluster" in text or "kind: RayJob" in text) and "rayVersion" in text:  # not patches
            assert "mode: token" in text, f"{f} has no token authOptions"


def test_the_run_path_starts_ray_with_token_auth_and_no_dashboard(tmp_path):
    """``run``'s own ``ray.init`` in a clean process (no RAY_AUTH_MODE): token auth on, no dashboard URL."""
    code = (
        "import json, ray\n"
        "from sgma_batch.run import _RaySession\n"
        "from ray._private.authentication.authentication_utils import is_token_auth_enabled\n"
        "def probe():\n"
        "    node = ray._private.worker.global_worker.node\n"
        "    return {'token': is_token_auth_enabled(), 'webui': node.address_info.get('webui_url')}\n"
        "session = _RaySession(None)\n"
        "session.wait()\n"
        "print(json.dumps(probe()))\n"
        "session.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # the token Ray generates goes to $HOME/.ray/auth_token
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=rh.REPO,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    probe = json.loads(r.stdout.strip().splitlines()[-1])
    assert probe["token"] is True
    assert not probe["webui"] or probe["webui"].startswith("127.0.0.1")
    assert (tmp_path / ".ray" / "auth_token").is_file()


def test_checkpoints_load_without_unpickling(tmp_path):
    """A checkpoint whose weights file is a pickle with a payload is refused, and the payload never runs."""
    import pickle

    from sgma_model import load_checkpoint
    from sgma_model.errors import CheckpointError

    ckpt = rh.make_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (ckpt / "model.safetensors").write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)
    r = rh.cli("run", "--aoi", "15.01,45.14,15.03,45.15", "--model", str(ckpt), "--catalog",
               str(run_archive.build_archive(tmp_path / "a")), "--start", "2024-06-01", "--end", "2024-06-30",
               "--out", str(tmp_path / "m.zarr"), "--sequential")
    assert r.returncode in (30, 31), r.stderr[-2000:]
    rh.one_line_error(r.stderr)
    assert not marker.exists()
    assert not (tmp_path / "m.zarr").exists()
    for f in [*(rh.REPO / "sgma_model").rglob("*.py"), rh.REPO / "sgma_batch" / "models.py"]:
        src = f.read_text()
        assert "pickle.load" not in src and "torch.load(" not in src.replace("weights_only=True", ""), f


def _items_with(archive: Path, tmp_path: Path, href: str) -> Path:
    items = json.loads(catalog_items_file(archive, tmp_path / "all.json").read_text())["features"]
    for it in items:
        if it["id"] == "s1-a":
            it["assets"]["vv"]["href"] = href
    out = tmp_path / "items.json"
    out.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return out


@pytest.mark.parametrize("href,fragment", [
    ("/etc/passwd", "local path"),
    ("file:///etc/shadow", "local path"),
    ("ftp://example.org/x.tif", "'ftp'"),
    ("gopher://example.org/x.tif", "'gopher'"),
])
def test_remote_catalogue_cannot_point_at_local_files_or_odd_schemes(tmp_path, href, fragment):
    archive = run_archive.build_archive(tmp_path / "archive")
    bbox = tuple(run_archive.aoi_lonlat())
    aoi = load_aoi(bbox)
    with asset_server(archive.parent, tmp_path) as assets:
        remote = remote_items(archive, archive.parent, assets, tmp_path / "remote.json")
        items = _items_with(remote, tmp_path, href)
        with rustac_server([items], tmp_path / "rustac") as url:
            # the catalogue is treated as remote (allow_local_assets=False is what any non-loopback URL gets)
            with pytest.raises(UnsafeAssetError, match=fragment) as err:
                search_scenes(url, aoi, "2024-06-01", "2024-06-30", allow_local_assets=False)
            assert err.value.exit_code == 25 and "\n" not in str(err.value)
            if fragment.startswith("'"):  # odd schemes are refused even from a loopback API, and by `run`
                r = rh.cli("run", "--aoi", ",".join(map(str, bbox)), "--catalog", url, "--start", "2024-06-01",
                           "--end", "2024-06-30", "--model", str(rh.make_checkpoint(tmp_path / "ck")),
                           "--out", str(tmp_path / "m.zarr"), "--sequential")
                assert r.returncode == 25 and fragment in rh.one_line_error(r.stderr)
                assert not (tmp_path / "m.zarr").exists()


def test_signed_urls_never_reach_logs_or_the_store(tmp_path):
    """Assets that demand a SAS-style token, read through a flaky proxy with one broken asset (so error and
    retry paths log hrefs), with debug logging on: the secret appears in no log line and no store file."""
    archive = run_archive.build_archive(tmp_path / "archive")
    ckpt = rh.make_checkpoint(tmp_path / "ck")
    out = tmp_path / "signed.zarr"
    secret = reliability_signer.TOKEN
    with asset_server(archive.parent, tmp_path, token=secret) as assets, \
            chaos_proxy(assets, rate=0.3, seed=3, kinds=("5xx", "reset", "truncate"), broken=["s1-b_vh"],
                        workdir=tmp_path) as proxy:
        catalog = remote_items(archive, archive.parent, proxy.url, tmp_path / "remote.json")
        env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               # every tile degrades anyway (s1-b is broken): GDAL's own retry ladder only costs time here
               "GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_DELAY": "0.1"}
        r = rh.cli("--debug", "run", "--aoi", ",".join(map(str, run_archive.aoi_lonlat())), "--catalog",
                   str(catalog), "--signer", "reliability_signer:sign", "--start", "2024-06-01", "--end",
                   "2024-06-30", "--model", str(ckpt), "--tile-px", "128", "--halo-px", "16", "--out", str(out),
                   "--sequential", "--json", env=env)
        stats = proxy.stats()
    assert r.returncode == 3, r.stderr[-3000:]  # s1-b degraded: the error path ran
    assert sum(stats["faults"].values()) > 0
    s = json.loads(r.stdout)
    assert s["degraded"] == s["tiles"] and s["computed"] == 0
    # the token really was needed and used: unsigned, the same server refuses
    import requests

    with asset_server(archive.parent, tmp_path, token=secret) as assets:
        assert requests.get(f"{assets}/dem.tif", timeout=10).status_code == 403
        assert requests.get(f"{assets}/dem.tif?{reliability_signer.SECRET}", timeout=10).status_code == 200
    assert "s1-b" in r.stderr and "DEBUG" in r.stderr  # the logs talk about the assets, at debug level
    logs = r.stdout + r.stderr
    assert secret not in logs and "sig=" not in logs
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.parent.name == "manifest" for p in files)
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
    rec = next(iter(rh.manifest(out).values()))
    assert proxy.url in json.dumps(dict(rec.errors))  # errors name the (unsigned) href
