"""Ray clusters: a real `ray start --head` cluster reached with `--address`, and GPU requests on a
CPU-only cluster failing fast instead of waiting forever (the operator shape is checked in test_run.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.errors import UsageError
from sgma_batch.run import run_mosaic

pytestmark = pytest.mark.integration






_spec = run_archive.run_spec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A real Ray head (`ray start --head --block`) on a free port, in a private temp dir (so no other
    driver on this machine picks it up as "the current cluster"); only its own process group is ended."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray_bin = Path(sys.executable).with_name("ray")
    log = Path(temp_dir) / "head.log"
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp_dir}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )
    try:
        address_file = Path(temp_dir) / "ray_current_cluster"
        for _ in range(240):  # `ray start` writes the address once the head is up
            if head.poll() is not None:
                raise RuntimeError(log.read_text())
            if address_file.exists():
                break
            time.sleep(0.25)
        yield address_file.read_text().strip()
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head, its GCS, raylet and workers: no 30 s drain
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_run_on_an_existing_cluster_via_address(ray_head, archive, checkpoint, tmp_path):
    out = tmp_path / "m.zarr"
    r = run_archive.cli("run", "--aoi", ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat()),
                        "--start", "2024-06-01", "--end", "2024-06-30", "--catalog", str(archive),
                        "--model", str(checkpoint), "--tile-px", "128", "--halo-px", "16",
                        "--out", str(out), "--address", ray_head, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # stdout holds the JSON alone
    assert summary["computed"] == summary["tiles"] == 6
    # the driver connected to the running head rather than starting its own Ray
    assert "Connecting to existing Ray cluster" in r.stderr and "Started a local Ray instance" not in r.stderr


def test_gpus_requested_on_a_cpu_cluster_fail_fast(ray_local, archive, checkpoint, tmp_path):
    with pytest.raises(UsageError, match="has 0 GPUs"):
        run_mosaic(_spec(archive, checkpoint, tmp_path / "g.zarr", gpus_per_actor=1))
    manifest = tmp_path / "g.zarr" / "manifest"
    assert not manifest.exists() or not any(manifest.iterdir())  # refused before any tile ran
