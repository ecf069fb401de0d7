"""Job spec parsing, period expansion, the store run lock and the report of ``sgma-batch reprocess``."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sgma_batch.errors import NothingFoundError, SpecError, StoreLockedError
from sgma_batch.reprocess import (
    LOCK_SUFFIX,
    WindowSeriesSpec,
    WindowSpec,
    acquire_lock,
    expand_periods,
    expand_spec,
    format_summary,
    load_spec,
    read_lock,
    release_lock,
    reprocess,
    summary_rows,
)

REPO = Path(__file__).resolve().parents[2]


def _write_spec(tmp_path: Path, **overrides) -> Path:
    spec = {
        "catalog": "archive/catalog.json",
        "aois": [{"name": "demo", "path": "aoi.geojson"}, {"name": "box", "bbox": [14.0, 50.0, 14.1, 50.1]}],
        "periods": [{"every": "month", "start": "2024-01-15", "end": "2024-03-10"}],
        "stores": [{"name": "main", "path": "out/{store}/{aoi}/{period}.zarr"}],
    }
    spec.update(overrides)
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_monthly_windows_are_calendar_months_clipped_to_the_range() -> None:
    periods = expand_periods([WindowSeriesSpec(every="month", start="2024-01-15", end="2024-03-10")])
    assert [(p.name, p.start, p.end) for p in periods] == [
        ("2024-01", dt.date(2024, 1, 15), dt.date(2024, 1, 31)),
        ("2024-02", dt.date(2024, 2, 1), dt.date(2024, 2, 29)),  # leap year
        ("2024-03", dt.date(2024, 3, 1), dt.date(2024, 3, 10)),
    ]


def test_month_series_across_a_year_end_and_quarters() -> None:
    months = expand_periods([WindowSeriesSpec(every="month", start="2023-11-01", end="2024-02-28")])
    assert [p.name for p in months] == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert months[1].end == dt.date(2023, 12, 31)
    quarters = expand_periods([WindowSeriesSpec(every="quarter", start="2024-02-10", end="2024-12-31")])
    assert [(p.name, p.start, p.end) for p in quarters] == [
        ("2024-Q1", dt.date(2024, 2, 10), dt.date(2024, 3, 31)),
        ("2024-Q2", dt.date(2024, 4, 1), dt.date(2024, 6, 30)),
        ("2024-Q3", dt.date(2024, 7, 1), dt.date(2024, 9, 30)),
        ("2024-Q4", dt.date(2024, 10, 1), dt.date(2024, 12, 31)),
    ]
    years = expand_periods([WindowSeriesSpec(every="year", start="2022-06-01", end="2023-01-31")])
    assert [(p.name, p.start, p.end) for p in years] == [
        ("2022", dt.date(2022, 6, 1), dt.date(2022, 12, 31)),
        ("2023", dt.date(2023, 1, 1), dt.date(2023, 1, 31)),
    ]


def test_explicit_windows_keep_their_names_and_duplicates_are_refused() -> None:
    periods = expand_periods([WindowSpec(start="2024-05-01", end="2024-05-20", name="flood")])
    assert periods[0].name == "flood"
    with pytest.raises(SpecError, match="overlap in name"):
        expand_periods(
            [WindowSeriesSpec(every="month", start="2024-01-01", end="2024-01-31"),
             WindowSpec(start="2024-01-01", end="2024-01-05", name="2024-01")]
        )


def test_spec_expands_to_aois_x_periods_x_stores_with_paths_resolved(tmp_path: Path) -> None:
    spec_path = _write_spec(
        tmp_path,
        stores=[{"name": "main", "path": "out/{aoi}/{period}.zarr"},
                {"name": "v2", "path": "/data/v2/{aoi}-{start}-{end}.zarr", "zarr_format": 2}],
        tile_px=512,
    )
    spec, base = load_spec(spec_path)
    entries = expand_spec(spec, base)
    assert len(entries) == 2 * 2 * 3
    first = entries[0]
    assert first.store == str(tmp_path / "out" / "demo" / "2024-01.zarr")
    assert first.aoi == str(tmp_path / "aoi.geojson")
    assert first.catalog == str(tmp_path / "archive" / "catalog.json")
    assert dict(first.options) == {"tile_px": 512}
    box = next(e for e in entries if e.aoi_name == "box")
    assert box.aoi == (14.0, 50.0, 14.1, 50.1)
    v2 = [e for e in entries if e.store_name == "v2"]
    assert v2[0].store == "/data/v2/demo-2024-01-15-2024-01-31.zarr"
    assert dict(v2[0].options)["zarr_format"] == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"stores": [{"name": "main", "pathh": "x.zarr"}]}, "stores.0.pathh"),  # typo: extra="forbid"
        ({"aois": [{"name": "a", "path": "a.json", "bbox": [0, 0, 1, 1]}]}, "exactly one"),
        ({"periods": [{"start": "2024-02-01", "end": "2024-01-01"}]}, "before its start"),
        ({"periods": [{"every": "week", "start": "2024-01-01", "end": "2024-02-01"}]}, "periods.0"),
        ({"stores": [{"name": "main", "path": "out/{region}.zarr"}]}, "unknown placeholder"),
        ({"aois": []}, "aois"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"stores": [{"name": "main", "path": "ftp://bucket/{aoi}/{period}.zarr"}]}, "unsupported URL scheme"),
    ],
)
def test_bad_specs_fail_with_a_spec_error_naming_the_field(tmp_path: Path, override, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(_write_spec(tmp_path, **override))


def test_store_path_without_aoi_and_period_is_refused(tmp_path: Path) -> None:
    spec, base = load_spec(_write_spec(tmp_path, stores=[{"name": "main", "path": "out/one.zarr"}]))
    with pytest.raises(SpecError, match="several entries"):
        expand_spec(spec, base)


def test_unreadable_and_non_mapping_specs(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")


# -- the lock ----------------------------------------------------------------------------------------------
def test_lock_records_holder_and_a_second_acquire_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "a.zarr"
    path = acquire_lock(store, note="test")
    assert Path(path) == tmp_path / f"a.zarr{LOCK_SUFFIX}" and Path(path).is_file()
    assert not store.exists()  # the store folder stays a pure Zarr tree
    holder = read_lock(store)
    assert holder is not None and holder.pid == os.getpid() and holder.note == "test"
    with pytest.raises(StoreLockedError, match="--break-lock") as err:
        acquire_lock(store)
    assert err.value.exit_code == 42
    assert f"pid {os.getpid()}" in str(err.value)
    release_lock(store)
    assert read_lock(store) is None


def _try_lock(store: str, queue) -> None:  # runs in a child process
    try:
        acquire_lock(store)
        queue.put("acquired")
    except StoreLockedError:
        queue.put("refused")


@pytest.mark.integration  # child processes
def test_only_one_of_several_processes_gets_the_lock(tmp_path: Path) -> None:
    store = str(tmp_path / "race.zarr")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_try_lock, args=(store, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    results = sorted(queue.get(timeout=5) for _ in procs)
    assert results == ["acquired", "refused", "refused", "refused"]


@pytest.mark.integration  # child processes
def test_stale_lock_is_named_stale_and_can_be_broken(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    store.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(f"{store}{LOCK_SUFFIX}").write_text(
        json.dumps({"host": os.uname().nodename, "pid": dead.pid, "created": "2024-01-01T00:00:00+00:00"})
    )
    with pytest.raises(StoreLockedError, match="stale"):
        acquire_lock(store)
    acquire_lock(store, break_lock=True)
    assert read_lock(store).pid == os.getpid()


# -- reprocess with a runner that records calls (the real run_mosaic is used in tests/integration) ------
class _Recorder:
    def __init__(self, fail_for: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_for = fail_for

    def __call__(self, entry):
        # the lock is held while an entry runs
        assert read_lock(entry.store).pid == os.getpid()
        self.calls.append(entry.period.name)
        if entry.period.name == self.fail_for:
            raise NothingFoundError("no scenes in this window")
        return SimpleNamespace(reused=3, computed=1, degraded=0, failed=0, exit_code=0)


def test_reprocess_locks_runs_every_entry_and_reports_per_store(tmp_path: Path) -> None:
    spec, base = load_spec(_write_spec(tmp_path))
    entries = expand_spec(spec, base)
    runner = _Recorder(fail_for="2024-02")
    report = reprocess(entries, spec_path="jobs.yaml", runner=runner)
    assert len(runner.calls) == 6
    assert report.exit_code == 0  # an empty month is not a failure
    assert report.totals == {"reused": 12, "computed": 4, "degraded": 0, "failed": 0, "entries": 6, "errors": 0}
    assert {o.status for o in report.entries} == {"ok", "nothing_found"}
    assert summary_rows(report) == [
        {"store": "main", "entries": 6, "reused": 12, "recomputed": 4, "degraded": 0, "failed": 0, "errors": 0}
    ]
    assert "recomputed" in format_summary(report).splitlines()[0]
    assert all(read_lock(e.store) is None for e in entries)  # released
    json.dumps(report.to_dict())


def test_a_held_lock_refuses_the_whole_job_before_anything_runs_or_is_created(tmp_path: Path) -> None:
    spec, base = load_spec(_write_spec(tmp_path))
    entries = expand_spec(spec, base)
    locked = entries[-1].store
    acquire_lock(locked)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    runner = _Recorder()
    with pytest.raises(StoreLockedError):
        reprocess(entries, runner=runner)
    assert runner.calls == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.integration  # the CLI in a subprocess
def test_cli_exits_42_on_a_held_lock_and_writes_a_report_otherwise(tmp_path: Path) -> None:
    spec_path = _write_spec(tmp_path, periods=[{"start": "2024-01-01", "end": "2024-01-31", "name": "jan"}],
                            aois=[{"name": "demo", "path": "aoi.geojson"}])
    store = tmp_path / "out" / "main" / "demo" / "jan.zarr"
    acquire_lock(store)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "cli.app", "reprocess", "--spec", str(spec_path), "--report", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 42, proc.stderr
    assert "locked" in proc.stderr and "--break-lock" in proc.stderr
    assert not (tmp_path / "r.json").exists()
    dry = subprocess.run([*cmd[:-2], "--dry-run", "--json"], check=False, capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert [row["out"] for row in json.loads(dry.stdout)] == [str(store)]
