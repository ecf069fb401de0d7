"""Scheduled archive reprocessing: AOIs x periods x output stores, each an incremental ``run``.

A job spec (YAML, validated with pydantic, ``extra="forbid"``) lists areas, time windows (explicit, or
calendar windows such as every month between two dates) and output stores (a path template per store).
:func:`expand_spec` turns it into one :class:`ReprocessEntry` per (AOI, period, store); :func:`reprocess`
takes a run lock in every target store first (so two schedules never write one store at once), then
calls :func:`sgma_batch.run.run_mosaic` for each entry. ``run_mosaic`` skips tiles whose content hash is
unchanged, so a rerun over an unchanged archive recomputes nothing.

The lock is a file created atomically beside the store, ``<store>.sgma-lock`` (``O_CREAT | O_EXCL``), that
records who holds it (host, pid, time). A held lock is refused with
:class:`~sgma_batch.errors.StoreLockedError` (exit 42) before anything is written; a lock left by a crashed
job is broken only on request (``break_lock``). Stores are paths or object-storage URLs, like the ``--out``
of ``run``: on object storage the lock is the object ``<store>.sgma-lock``, created with a conditional PUT
(``If-None-Match: *``), which is as atomic as ``O_EXCL``; release reads the holder and then deletes, and the
delete is not conditional (object stores offer no compare-and-delete), so only a ``--break-lock`` racing the
holder's own release could remove a newer lock.
"""

from __future__ import annotations

import calendar
import datetime as dt
import errno
import json
import logging
import os
import socket
import string
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sgma_batch.errors import NothingFoundError, SgmaError, SpecError, StoreLockedError, StoreUnwritableError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".sgma-lock"
"""The run lock of store ``X`` is the file ``X.sgma-lock`` beside it: the store folder itself stays a pure
Zarr tree (the run engine refuses a new store folder that already holds other files)."""

_TEMPLATE_KEYS = ("aoi", "period", "start", "end", "store")


# -- the job spec (pydantic, only at the edge) --------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AOISpec(_Strict):
    """One area: a name (used in store paths and reports) and a GeoJSON file or a lon/lat bbox."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str | None = None
    bbox: tuple[float, float, float, float] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AOISpec:
        if (self.path is None) == (self.bbox is None):
            raise ValueError(f"AOI {self.name!r}: give exactly one of 'path' or 'bbox'")
        return self


class WindowSpec(_Strict):
    """One explicit time window, both ends inclusive; ``name`` defaults to ``START_END``."""

    start: dt.date
    end: dt.date
    name: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> WindowSpec:
        if self.end < self.start:
            raise ValueError(f"period end {self.end} is before its start {self.start}")
        return self


class WindowSeriesSpec(_Strict):
    """Calendar windows (``month``, ``quarter`` or ``year``) covering ``start``..``end``, clipped to it."""

    every: Literal["month", "quarter", "year"]
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> WindowSeriesSpec:
        if self.end < self.start:
            raise ValueError(f"period end {self.end} is before its start {self.start}")
        return self


class StoreSpec(_Strict):
    """An output store family: a path template with ``{aoi}``, ``{period}``, ``{start}``, ``{end}``, ``{store}``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str
    model: str | None = None
    zarr_format: Literal[2, 3] | None = None

    @field_validator("path")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        from sgma_batch.storage import location

        location(value)  # s3:// gs:// az:// and paths; an unsupported scheme:// is refused here
        for _, key, _, _ in string.Formatter().parse(value):
            if key is not None and key not in _TEMPLATE_KEYS:
                raise ValueError(f"unknown placeholder {{{key}}} in store path; known: {', '.join(_TEMPLATE_KEYS)}")
        return value


class ReprocessSpec(_Strict):
    """The whole job: shared run settings plus the AOI x period x store lists."""

    catalog: str | None = None
    model: str | None = None
    address: str | None = None
    cache_dir: str | None = None
    executor: Literal["auto", "local", "ray", "sequential"] | None = None
    tile_px: int | None = Field(default=None, gt=0)
    halo_px: int | None = Field(default=None, ge=0)
    res_m: float | None = Field(default=None, gt=0)
    crs: str | None = None
    zarr_format: Literal[2, 3] | None = None
    window_px: int | None = Field(default=None, gt=0)
    overlap_px: int | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, gt=0)
    max_actors: int | None = Field(default=None, gt=0)
    gpus_per_actor: float | None = Field(default=None, ge=0)  # 1 on an autoscaling GPU cluster (deploy/)
    threads: int | None = Field(default=None, gt=0)
    aois: list[AOISpec] = Field(min_length=1)
    periods: list[WindowSpec | WindowSeriesSpec] = Field(min_length=1)
    stores: list[StoreSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ReprocessSpec:
        for kind, names in (("AOI", [a.name for a in self.aois]), ("store", [s.name for s in self.stores])):
            dupes = _duplicates(names)
            if dupes:
                raise ValueError(f"duplicate {kind} names: {', '.join(dupes)}")
        return self


# -- expanded entries (plain frozen records) -------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """A named time window, both ends inclusive."""

    name: str
    start: dt.date
    end: dt.date


@dataclass(frozen=True)
class ReprocessEntry:
    """One incremental run: an AOI over a period into one output store."""

    store_name: str
    store: str
    aoi_name: str
    aoi: str | tuple[float, float, float, float]
    period: Period
    catalog: str | None
    model: str | None
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class EntryOutcome:
    """What one entry did: tile counts from ``run_mosaic`` or the error that stopped it."""

    store_name: str
    store: str
    aoi: str
    period: str
    status: Literal["ok", "partial", "nothing_found", "error"]
    reused: int = 0
    computed: int = 0
    degraded: int = 0
    failed: int = 0
    exit_code: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ReprocessReport:
    """The outcome of a whole reprocess job; ``to_dict`` is the JSON report."""

    spec_path: str
    started: str
    finished: str
    entries: tuple[EntryOutcome, ...]
    exit_code: int
    totals: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec_path,
            "started": self.started,
            "finished": self.finished,
            "exit_code": self.exit_code,
            "totals": dict(self.totals),
            "entries": [asdict(e) for e in self.entries],
        }


def load_spec(path: str | Path) -> tuple[ReprocessSpec, Path]:
    """Read and validate a job spec; returns it with the folder relative paths are resolved against."""
    from sgma_batch.inputs import load_yaml_file

    path = Path(path)
    # bounded: size, nesting, no aliases, binary files and impossible dates refused with one line (exit 50)
    raw = load_yaml_file(path, what="job spec", error=SpecError, max_bytes=1 << 20, max_depth=16,
                         hint="check the --spec file")
    if not isinstance(raw, dict):
        raise SpecError(f"job spec {path} must be a YAML mapping with aois, periods and stores")
    try:
        return ReprocessSpec.model_validate(raw), path.resolve().parent
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()[:4]
        ]
        more = f" (+{exc.error_count() - 4} more)" if exc.error_count() > 4 else ""
        raise SpecError(f"job spec {path}: {'; '.join(problems)}{more}; fix the spec") from None


def expand_periods(periods: Sequence[WindowSpec | WindowSeriesSpec]) -> list[Period]:
    """Explicit windows as given; series split at calendar boundaries and clipped to their range."""
    out: list[Period] = []
    for p in periods:
        if isinstance(p, WindowSpec):
            out.append(Period(p.name or f"{p.start.isoformat()}_{p.end.isoformat()}", p.start, p.end))
            continue
        months = {"month": 1, "quarter": 3, "year": 12}[p.every]
        from sgma_batch.inputs import check_plan_size

        span = (p.end.year - p.start.year) * 12 + p.end.month - p.start.month + 1
        check_plan_size(periods=len(out) + span / months, hint="give a shorter series or a coarser 'every'")
        # first window starts at the calendar boundary on or before p.start
        year, month = p.start.year, p.start.month
        if p.every == "quarter":
            month = 3 * ((month - 1) // 3) + 1
        elif p.every == "year":
            month = 1
        while year <= dt.MAXYEAR:  # a series ending in December 9999 stops there
            first = dt.date(year, month, 1)
            if first > p.end:
                break
            end_year, end_month = year + (month - 1 + months - 1) // 12, (month - 1 + months - 1) % 12 + 1
            last = dt.date(end_year, end_month, calendar.monthrange(end_year, end_month)[1])
            name = {
                "month": f"{year:04d}-{month:02d}",
                "quarter": f"{year:04d}-Q{(month - 1) // 3 + 1}",
                "year": f"{year:04d}",
            }[p.every]
            out.append(Period(name, max(first, p.start), min(last, p.end)))
            year, month = end_year + end_month // 12, end_month % 12 + 1
    dupes = _duplicates([p.name for p in out])
    if dupes:
        raise SpecError(f"periods overlap in name: {', '.join(dupes)}; give explicit windows distinct names")
    return out


def _is_url(value: str) -> bool:
    return "://" in value


def _duplicates(values: Sequence[str]) -> list[str]:
    return sorted({v for v in values if values.count(v) > 1})


def _resolve(value: str, base: Path) -> str:
    if _is_url(value) or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def expand_spec(spec: ReprocessSpec, base_dir: Path) -> list[ReprocessEntry]:
    """Every (store, AOI, period) combination, with relative paths resolved against ``base_dir``."""
    periods = expand_periods(spec.periods)
    from sgma_batch.inputs import check_plan_size

    check_plan_size(periods=len(spec.stores) * len(spec.aois) * len(periods),
                    hint="that is the job's (store, AOI, period) entries: split it into several specs")
    passthrough = ("address", "executor", "tile_px", "halo_px", "res_m", "crs", "window_px", "overlap_px",
                   "batch_size", "max_actors", "gpus_per_actor", "threads")
    common: dict[str, Any] = {k: getattr(spec, k) for k in passthrough if getattr(spec, k) is not None}
    if spec.cache_dir is not None:
        common["cache_dir"] = _resolve(spec.cache_dir, base_dir)
    catalog = None if spec.catalog is None else _resolve(spec.catalog, base_dir)
    entries: list[ReprocessEntry] = []
    for store in spec.stores:
        for aoi in spec.aois:
            for period in periods:
                path = store.path.format(
                    aoi=aoi.name,
                    period=period.name,
                    start=period.start.isoformat(),
                    end=period.end.isoformat(),
                    store=store.name,
                )
                model = store.model or spec.model
                options = dict(common)
                zarr_format = store.zarr_format or spec.zarr_format
                if zarr_format is not None:
                    options["zarr_format"] = zarr_format
                entries.append(
                    ReprocessEntry(
                        store_name=store.name,
                        store=_resolve(path, base_dir),
                        aoi_name=aoi.name,
                        aoi=_resolve(aoi.path, base_dir) if aoi.path is not None else aoi.bbox,  # type: ignore[arg-type]
                        period=period,
                        catalog=catalog,
                        model=None if model is None else _resolve(model, base_dir),
                        options=tuple(sorted(options.items())),
                    )
                )
    dupes = _duplicates([e.store for e in entries])
    if dupes:
        raise SpecError(
            f"{len(dupes)} store path(s) would be written by several entries (e.g. {dupes[0]}); "
            "put {aoi} and {period} into every store path template"
        )
    return entries


# -- the run lock ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LockInfo:
    """Who holds a store's run lock."""

    host: str
    pid: int
    created: str
    user: str = ""
    note: str = ""

    def describe(self) -> str:
        return f"held by pid {self.pid} on {self.host} since {self.created}"


def lock_path(store: str | Path) -> Path | str:
    """Where the run lock of a store lives: ``<store>.sgma-lock`` beside it (a path, or an object's URL)."""
    from sgma_batch.storage import location

    return location(f"{str(store).rstrip('/')}{LOCK_SUFFIX}")


def read_lock(store: str | Path) -> LockInfo | None:
    """The current holder of a store's lock, or None when it is free."""
    try:
        from sgma_batch.storage import read_bytes

        raw = json.loads(read_bytes(lock_path(store)))
        return LockInfo(**{k: raw[k] for k in ("host", "pid", "created", "user", "note") if k in raw})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):
        return LockInfo(host="?", pid=-1, created="?", note="unreadable lock file")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_exclusive(path: Path | str, payload: bytes) -> None:
    """Create the lock or raise FileExistsError (atomic: ``O_CREAT | O_EXCL``, or a conditional PUT)."""
    from sgma_batch.storage import create_exclusive

    create_exclusive(path, payload)


def _delete(path: Path | str) -> None:
    from sgma_batch.storage import delete

    delete(path)


def acquire_lock(store: str | Path, *, note: str = "", break_lock: bool = False, force: bool = False) -> Path:
    """Create the store's lock file atomically; raise StoreLockedError (exit 42) when it is held.

    ``break_lock`` removes an existing lock first (for one left behind by a killed job); the holder it
    replaces is logged.
    """
    if break_lock:
        holder = read_lock(store)
        if holder is not None:
            from sgma_batch.safety import check_break

            check_break(store, holder, force=force)  # only a dead owner's lock, unless force
            log.warning("breaking run lock of %s (%s)", store, holder.describe())
            _delete(lock_path(store))
    info = LockInfo(
        host=socket.gethostname(),
        pid=os.getpid(),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        user=os.environ.get("USER", ""),
        note=note,
    )
    path = lock_path(store)
    try:
        _create_exclusive(path, json.dumps(asdict(info)).encode())
    except FileExistsError:
        holder = read_lock(store)
        desc = holder.describe() if holder else "held"
        stale = ""
        if holder is not None and holder.host == socket.gethostname() and holder.pid > 0 and not _pid_alive(holder.pid):
            stale = " (that process is gone: the lock is stale)"
        raise StoreLockedError(
            f"store {store} is locked, {desc}{stale}; wait for that job, or pass --break-lock if it is dead"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC, errno.EDQUOT) or not isinstance(path, Path):
            raise StoreUnwritableError(f"cannot write the run lock {path}: {exc.strerror}") from None
        raise
    log.debug("locked %s", store)
    return path


def release_lock(store: str | Path) -> None:
    """Remove the lock if this process holds it (a lock taken over by someone else is left alone).

    A lock that cannot be removed (the object store unreachable, the volume gone) is logged, not raised: it
    must not hide the error that ended the run; the next run reports it stale (``--break-lock``).
    """
    try:
        holder = read_lock(store)
        if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
            _delete(lock_path(store))
    except OSError as exc:
        log.warning("could not remove the run lock %s (%s); the next run reports it stale: pass --break-lock",
                    lock_path(store), exc.strerror or exc)


@contextmanager
def store_locks(stores: Sequence[str], *, note: str = "", break_lock: bool = False, force: bool = False) -> Iterator[None]:
    """Hold the locks of all ``stores`` (all or none), released on exit."""
    ordered = sorted(set(stores))
    if not break_lock:  # refuse before creating any folder when a lock is already visible
        for store in ordered:
            holder = read_lock(store)
            if holder is not None:
                acquire_lock(store, note=note)  # raises StoreLockedError with the holder's details
    taken: list[str] = []
    try:
        for store in ordered:
            acquire_lock(store, note=note, break_lock=break_lock, force=force)
            taken.append(store)
        yield
    finally:
        for store in reversed(taken):
            release_lock(store)


# -- running --------------------------------------------------------------------------------------------
RunFn = Callable[[ReprocessEntry], Any]
"""Runs one entry and returns an object with ``reused, computed, degraded, failed, exit_code``."""


def build_run_spec(entry: ReprocessEntry) -> Any:
    """The ``RunSpec`` of one entry, for :func:`sgma_batch.run.run_mosaic`."""
    from sgma_batch.run import RunSpec

    kwargs: dict[str, Any] = {
        "aoi": entry.aoi if isinstance(entry.aoi, str) else list(entry.aoi),
        "start": entry.period.start.isoformat(),
        "end": entry.period.end.isoformat(),
        "out": entry.store,
        **dict(entry.options),
    }
    if entry.catalog is not None:
        kwargs["catalog"] = entry.catalog
    if entry.model is not None:
        kwargs["model"] = entry.model
    return RunSpec(**kwargs)


def run_entry(entry: ReprocessEntry) -> Any:
    """Default runner: an incremental ``run_mosaic`` into the entry's store."""
    from sgma_batch.run import run_mosaic

    return run_mosaic(build_run_spec(entry))


def reprocess(
    entries: Sequence[ReprocessEntry],
    *,
    spec_path: str = "",
    break_lock: bool = False,
    runner: RunFn | None = None,
    force: bool = False,
) -> ReprocessReport:
    """Lock every target store, then run each entry; one entry's error does not stop the others.

    Raises StoreLockedError before anything is written when any store is locked. The report's exit code
    is 0 when every entry finished cleanly, 3 (partial) when some tiles or entries degraded or failed, and
    the first error's own code when no entry finished at all.
    """
    runner = runner or run_entry
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    outcomes: list[EntryOutcome] = []
    note = f"sgma-batch reprocess {spec_path}".strip()
    with store_locks([e.store for e in entries], note=note, break_lock=break_lock, force=force):
        for entry in entries:
            outcomes.append(_run_one(entry, runner))
    finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    totals = {k: sum(getattr(o, k) for o in outcomes) for k in ("reused", "computed", "degraded", "failed")}
    totals["entries"] = len(outcomes)
    totals["errors"] = sum(o.status == "error" for o in outcomes)
    return ReprocessReport(
        spec_path=spec_path,
        started=started,
        finished=finished,
        entries=tuple(outcomes),
        exit_code=_overall_exit(outcomes),
        totals=totals,
    )


def _run_one(entry: ReprocessEntry, runner: RunFn) -> EntryOutcome:
    from sgma_batch.redact import redact

    label = {"store_name": entry.store_name, "store": entry.store, "aoi": entry.aoi_name, "period": entry.period.name}
    t0 = time.perf_counter()
    log.info("reprocess %s / %s / %s -> %s", entry.store_name, entry.aoi_name, entry.period.name, entry.store)
    try:
        summary = runner(entry)
    except SgmaError as exc:
        status = "nothing_found" if isinstance(exc, NothingFoundError) else "error"
        log.warning("%s / %s / %s: %s", entry.store_name, entry.aoi_name, entry.period.name, exc)
        return EntryOutcome(
            **label,
            status=status,
            exit_code=exc.exit_code,
            error=redact(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__,
            seconds=round(time.perf_counter() - t0, 3),
        )
    counts = {k: int(getattr(summary, k)) for k in ("reused", "computed", "degraded", "failed")}
    exit_code = int(getattr(summary, "exit_code", 0))
    return EntryOutcome(
        **label,
        status="ok" if exit_code == 0 else "partial",
        exit_code=exit_code,
        seconds=round(time.perf_counter() - t0, 3),
        **counts,
    )


def _overall_exit(outcomes: Sequence[EntryOutcome]) -> int:
    errors = [o for o in outcomes if o.status == "error"]
    if errors and len(errors) == len(outcomes):
        return errors[0].exit_code
    if errors or any(o.status == "partial" for o in outcomes):
        return 3
    return 0


def summary_rows(report: ReprocessReport) -> list[dict[str, Any]]:
    """Per-store totals for the summary table: reused / recomputed / degraded / failed / errors."""
    rows: dict[str, dict[str, Any]] = {}
    for o in report.entries:
        row = rows.setdefault(
            o.store_name,
            {"store": o.store_name, "entries": 0, "reused": 0, "recomputed": 0, "degraded": 0, "failed": 0, "errors": 0},
        )
        row["entries"] += 1
        row["reused"] += o.reused
        row["recomputed"] += o.computed
        row["degraded"] += o.degraded
        row["failed"] += o.failed
        row["errors"] += o.status == "error"
    return list(rows.values())


def format_summary(report: ReprocessReport) -> str:
    """A plain-text table, one row per store, for stderr."""
    cols = ("store", "entries", "reused", "recomputed", "degraded", "failed", "errors")
    rows = [[str(r[c]) for c in cols] for r in summary_rows(report)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    for r in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)
