"""Process loss on real local Ray: the `sgma-batch run` driver SIGKILLed or sent SIGTERM mid-run, and Ray
worker processes (an inference actor, a reader actor) killed mid-run. Every case must end with a
store bitwise identical to an undisturbed run, and a rerun after a driver loss recomputes only the tiles
that had not been committed (the summary says how many).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive

from sgma_batch.run import RunSpec, run_mosaic

pytestmark = pytest.mark.integration

TILE_PX, HALO_PX = 32, 16  # ~80 small tiles: a run lasts long enough to be interrupted between commits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return rh.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=2)


@pytest.fixture(scope="module")
def reference(archive, checkpoint, tmp_path_factory) -> Path:
    """An undisturbed run of the same job (in-process, sequential: bitwise equal to Ray by design)."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    s = run_mosaic(RunSpec(aoi=run_archive.aoi_lonlat(), out=str(out), start="2024-06-01", end="2024-06-30",
                           catalog=str(archive), model=str(checkpoint), tile_px=TILE_PX, halo_px=HALO_PX,
                           executor="sequential"))
    assert s.computed == s.tiles > 40 and s.exit_code == 0
    return out


def _args(archive: Path, checkpoint: Path, out: Path, executor: str = "auto") -> list[str]:
    bbox = ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())
    return ["run", "--aoi", bbox, "--start", "2024-06-01", "--end", "2024-06-30", "--catalog", str(archive),
            "--model", str(checkpoint), "--tile-px", str(TILE_PX), "--halo-px", str(HALO_PX), "--out", str(out),
            "--executor", executor, "--json"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(rh.cli_args(*args), env=rh.cli_env(), cwd=rh.REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _committed(out: Path) -> int:
    d = out / "manifest"
    return sum(1 for _ in d.glob("*.json")) if d.is_dir() else 0


@contextmanager
def _mid_run(args: list[str], out: Path) -> Iterator[tuple[subprocess.Popen, list[int]]]:
    """The CLI started on ``args``, once it has committed 3 tiles of ``out``: (its process, its descendant
    processes). On exit whatever is left of both is killed (processes this test started)."""
    proc = _start(args)
    tree: list[int] = []
    try:
        rh.wait_for(lambda: _committed(out) >= 3 or proc.poll() is not None, 240, "the first committed tiles")
        assert proc.poll() is None, "the run finished before it could be interrupted"
        tree = rh.descendants(proc.pid)
        yield proc, tree
    finally:
        proc.kill()
        if not proc.stdout.closed:  # not yet read by the test's own communicate()
            proc.communicate(timeout=30)
        rh.kill_pids(tree)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_driver_sigkill_then_rerun_recomputes_only_uncommitted_tiles(archive, checkpoint, reference, tmp_path,
                                                                     executor):
    out = tmp_path / "killed.zarr"
    total = len(rh.manifest(reference))
    with _mid_run(_args(archive, checkpoint, out, executor), out) as (proc, _):
        proc.send_signal(signal.SIGKILL)  # the driver only; its local Ray goes down with it (the rest: _mid_run)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = _committed(out)
    assert 3 <= done_before < total
    assert not (out / "item.json").exists()  # the finish step never ran: a half-written store

    r = rh.cli(*_args(archive, checkpoint, out))  # the killed run's lock is still there: named as stale
    assert r.returncode == 42 and "stale" in r.stderr and "--break-lock" in r.stderr, r.stderr[-3000:]
    r = rh.cli(*_args(archive, checkpoint, out), "--break-lock")  # its owner is dead: the lock may go
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["tiles"] == total
    assert summary["reused"] == done_before and summary["computed"] == total - done_before
    rh.assert_same_store(reference, out)
    assert (out / "item.json").exists()


def test_worker_loss_mid_run_completes_bitwise_identical(ray_local, archive, checkpoint, reference, tmp_path):
    """Kill the process of an inference actor mid-tile, then a reader actor's process mid-read, while
    ``run_mosaic`` runs on the session's local Ray (2 inference actors, 2 readers): Ray restarts each and
    reruns the calls queued on it."""
    import os
    import threading

    out = tmp_path / "workers.zarr"
    total = len(rh.manifest(reference))
    killed: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def running(title: str) -> tuple[int, str] | None:
        for p in rh.descendants(os.getpid()):
            c = rh.cmdline(p)
            if c.startswith("ray::") and title in c and p not in {k for k, _ in killed}:
                return p, c
        return None

    def chaos() -> None:
        try:
            for after, title in ((3, "ray::_TileActor.run"), (12, "ray::_ReadActor.read")):
                rh.wait_for(lambda n=after: _committed(out) >= n, 240, f"{after} committed tiles")
                victim = rh.wait_for(lambda t=title: running(t), 60, f"a process running {title}", poll=0.005)
                rh.kill_pids([victim[0]])
                killed.append(victim)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    watcher = threading.Thread(target=chaos, daemon=True)
    watcher.start()
    s = run_mosaic(RunSpec(aoi=run_archive.aoi_lonlat(), out=str(out), start="2024-06-01", end="2024-06-30",
                           catalog=str(archive), model=str(checkpoint), tile_px=TILE_PX, halo_px=HALO_PX,
                           max_actors=2))
    watcher.join(timeout=60)
    assert not errors, errors
    assert [c.split("(")[0].split()[0] for _, c in killed] == ["ray::_TileActor.run", "ray::_ReadActor.read"], killed
    assert s.tiles == total and s.failed == 0 and s.degraded == 0 and s.exit_code == 0
    assert len(rh.manifest(out)) == total
    rh.assert_same_store(reference, out)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_driver_sigterm_exits_cleanly_and_takes_ray_down(archive, checkpoint, reference, tmp_path, executor):
    """SIGTERM (a pod being stopped, ``timeout``) mid-run: the driver exits with 143 through its cleanup, so
    no process of the run outlives it (Ray's, with Ray), and a rerun completes the store bitwise identical
    to an undisturbed run."""
    out = tmp_path / "terminated.zarr"
    total = len(rh.manifest(reference))
    with _mid_run(_args(archive, checkpoint, out, executor), out) as (proc, tree):
        if executor == "ray":
            assert any(rh.cmdline(p).startswith("ray::") for p in tree)  # its actors are running
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        # -15: the default action (killed on the spot, no cleanup); -6: Ray's abort in the interpreter's
        # finalisation; 143: the cleanup ran and the CLI exited
        assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
        assert "SIGTERM handler is not set" not in stderr
        rh.wait_for(lambda: not [p for p in tree if _alive(p)], 60, "the run's Ray processes to exit")
    done_before = _committed(out)
    assert 3 <= done_before < total

    r = rh.cli(*_args(archive, checkpoint, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["reused"] == done_before
    rh.assert_same_store(reference, out)
