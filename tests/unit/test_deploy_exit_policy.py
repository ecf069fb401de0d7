"""The exit-code policy the scheduled jobs rely on, and the tile metrics they export under Ray.

``--allow-partial`` turns a partial result (exit 3) into success, so a RayJob whose run has degraded tiles
ends SUCCEEDED instead of being retried on a fresh cluster; the degraded tiles stay in the summary / report.
Every other exit code is unchanged. Reprocess reports are dated (``{started}``), never overwritten.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from cli.app import app


def _summary(tmp_path: Path, degraded: int, failed: int = 0):
    from sgma_batch.run import RunSummary

    return RunSummary(store=str(tmp_path / "m.zarr"), tiles=4, reused=0, computed=4 - degraded - failed,
                      degraded=degraded, failed=failed, nodata=0, area_km2=1.0, seconds=1.0)


@pytest.mark.parametrize(("degraded", "failed", "flag", "code"), [
    (0, 0, False, 0), (1, 0, False, 3), (1, 0, True, 0), (0, 2, True, 0), (0, 2, False, 3),
])
def test_run_allow_partial_turns_exit_3_into_0_and_keeps_the_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, degraded: int, failed: int, flag: bool, code: int
) -> None:
    import sgma_batch.run

    monkeypatch.setattr(sgma_batch.run, "run_mosaic", lambda spec, progress=None: _summary(tmp_path, degraded, failed))
    argv = ["run", "--aoi", "14.4,50.0,14.5,50.1", "--out", str(tmp_path / "m.zarr"), "--json"]
    result = CliRunner().invoke(app, argv + (["--allow-partial"] if flag else []))
    assert result.exit_code == code, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["degraded"], summary["failed"]) == (degraded, failed)  # still listed
    if flag and code == 0 and (degraded or failed):
        assert "partial result accepted (--allow-partial)" in result.stderr


def test_run_allow_partial_does_not_hide_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sgma_batch.run
    from sgma_batch.errors import NothingFoundError

    def nothing(spec, progress=None):
        raise NothingFoundError("no scenes")

    monkeypatch.setattr(sgma_batch.run, "run_mosaic", nothing)
    result = CliRunner().invoke(app, ["run", "--aoi", "14.4,50.0,14.5,50.1", "--out", str(tmp_path / "m.zarr"),
                                      "--allow-partial"])
    assert isinstance(result.exception, NothingFoundError)  # main() maps it to exit 4, as without the flag


def _spec(tmp_path: Path) -> Path:
    spec = {"aois": [{"name": "box", "bbox": [14.0, 50.0, 14.1, 50.1]}],
            "periods": [{"every": "month", "start": "2024-01-01", "end": "2024-02-29"}],
            "stores": [{"name": "main", "path": "out/{store}/{aoi}/{period}.zarr"}]}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(("flag", "code"), [(False, 3), (True, 0)])
def test_reprocess_allow_partial_and_dated_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: bool, code: int
) -> None:
    import sgma_batch.reprocess

    def runner(entry):  # January degraded, February clean: a partial job
        degraded = 1 if entry.period.name == "2024-01" else 0
        return SimpleNamespace(reused=0, computed=3, degraded=degraded, failed=0, exit_code=3 if degraded else 0)

    monkeypatch.setattr(sgma_batch.reprocess, "run_entry", runner)
    reports = tmp_path / "reports"
    argv = ["reprocess", "--spec", str(_spec(tmp_path)), "--report", str(reports / "reprocess-{started}.json")]
    first = CliRunner().invoke(app, argv + (["--allow-partial"] if flag else []))
    assert first.exit_code == code, first.output
    (report,) = reports.iterdir()
    assert report.name.startswith("reprocess-20") and report.name.endswith("Z.json") and "{" not in report.name
    data = json.loads(report.read_text())
    assert data["exit_code"] == 3 and data["totals"]["degraded"] == 1  # the outcome is recorded as partial
    assert [e["status"] for e in data["entries"]] == ["partial", "ok"]
    # a later run writes its own report beside the first (the start time is in seconds)
    time.sleep(1.1)
    CliRunner().invoke(app, argv)
    assert len(list(reports.iterdir())) == 2


def test_reprocess_allow_partial_keeps_a_lock_refusal_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sgma_batch.reprocess
    from sgma_batch.reprocess import acquire_lock, expand_spec, load_spec

    monkeypatch.setattr(sgma_batch.reprocess, "run_entry", lambda entry: pytest.fail("ran under a held lock"))
    spec = _spec(tmp_path)
    entries = expand_spec(*load_spec(spec))
    acquire_lock(entries[0].store, note="another job")
    result = CliRunner().invoke(app, ["reprocess", "--spec", str(spec), "--allow-partial"])
    assert type(result.exception).__name__ == "StoreLockedError" and result.exception.exit_code == 42


# -- metrics ------------------------------------------------------------------------------------------------
@pytest.mark.integration  # a subprocess (with Ray)
def test_metrics_are_a_no_op_without_ray_and_never_import_it() -> None:
    code = (
        "import sys; from sgma_batch import metrics; "
        "metrics.record_tile({'status': 'computed', 'region': [[0, 512], [0, 512]], "
        "'timing': {'read_s': 0.1, 'infer_s': 0.2}}, 1e-4); "
        "assert 'ray' not in sys.modules, 'imported ray'; assert metrics._metrics is None; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.integration  # a subprocess (with Ray)
def test_metrics_under_ray_count_tiles_area_and_rate(tmp_path: Path) -> None:
    """In a process with Ray initialised, every committed record updates the Ray metrics (dict or typed)."""
    code = """
import sys, ray
from types import SimpleNamespace
ray.init(num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1], configure_logging=False)
from ray.util.metrics import Counter, Gauge, Histogram
from sgma_batch import metrics
metrics.record_tile({"status": "computed", "region": [[0, 512], [0, 512]], "timing": {"read_s": 0.1, "infer_s": 0.2}}, 1e-4)
rec = SimpleNamespace(status="degraded", region=((0, 512), (512, 1024)), timing=SimpleNamespace(read_s=0.3, infer_s=0.4, write_s=0))
metrics.record_tile(rec, 1e-4)
m = metrics._metrics
assert isinstance(m.tiles, Counter) and isinstance(m.rate, Gauge) and isinstance(m.model_s, Histogram)
assert abs(m.km2 - 2 * 512 * 512 * 1e-4) < 1e-9, m.km2
assert m.tiles.info["name"] == "sgma_batch_tiles" and m.tiles.info["tag_keys"] == ("status",)
ray.shutdown()
print("ok")
"""
    tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray_deploy_metrics"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp)], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
