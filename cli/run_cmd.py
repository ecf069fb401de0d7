"""``sgma-batch run`` (map an AOI into a Zarr mosaic), ``plan`` (the same, without side effects),
``status STORE`` and ``quicklook STORE --png FILE``."""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

import typer

if TYPE_CHECKING:
    from sgma_batch.store import TileRecord


def _cache_dir() -> Path:
    from sgma_batch.synthetic import default_cache_dir  # one cache rule for run, search and chips

    return default_cache_dir()


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        aoi: str = typer.Option(..., "--aoi", help="AOI GeoJSON file, or min_lon,min_lat,max_lon,max_lat."),
        start: str | None = typer.Option(None, "--start", help="Window start YYYY-MM-DD (default: demo archive's)."),
        end: str | None = typer.Option(None, "--end", help="Window end YYYY-MM-DD (default: demo archive's)."),
        catalog: str | None = typer.Option(None, "--catalog", help="STAC API URL or static catalog path (default: demo archive)."),
        model: str | None = typer.Option(None, "--model", help="Checkpoint directory (default: shipped demo model)."),
        collections: str | None = typer.Option(
            None, "--collections", help="Per-modality collections, e.g. s2=sentinel-2-l1c,s1=my-s1:s1-db."
        ),
        allow_domain_shift: bool = typer.Option(
            False, "--allow-domain-shift",
            help="Run scenes of another processing level than the model's card (L1C for L2A, GRD for RTC) with a "
            "warning instead of exit 35.",
        ),
        signer: str | None = typer.Option(
            None, "--signer", help="Sign asset hrefs at read time: planetary-computer or module:function."
        ),
        out: str = typer.Option("mosaic.zarr", "--out", help="Output Zarr store, a path or an s3:// gs:// az:// URL; "
                                "rerunning resumes/updates it."),
        address: str | None = typer.Option(
            None, "--address", help="Ray cluster to run on: auto, ray://host:10001 (default: this process, no Ray)."
        ),
        executor: str = typer.Option(
            "auto", "--executor",
            help="auto (Ray with --address, else this process), local (this process, threads), ray, sequential.",
        ),
        max_actors: int | None = typer.Option(
            None, "--max-actors", help="Inference actors / forward threads (default: one per GPU, else one per CPU)."
        ),
        gpus_per_actor: float | None = typer.Option(
            None, "--gpus-per-actor", help="GPUs per inference actor (default: 1 when the cluster has GPUs, else 0)."
        ),
        tile_px: int = typer.Option(512, "--tile-px", help="Tile core = output chunk size in pixels."),
        halo_px: int = typer.Option(16, "--halo-px", help="Context read and forwarded around each tile core (px)."),
        window_px: int | None = typer.Option(
            None, "--window-px", help="Sliding windows of this size, blended (default: each halo tile in one forward)."
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Tiles per forward (default: 1 on a CPU, sized to its memory on a GPU)."
        ),
        res: float = typer.Option(10.0, "--res", help="Pixel size in CRS units (metres)."),
        crs: str | None = typer.Option(None, "--crs", help="Output CRS, e.g. EPSG:3035 (default: UTM of the AOI)."),
        max_area_km2: float | None = typer.Option(
            None, "--max-area-km2", help="Refuse AOIs larger than this (default: 10,000 km2)."
        ),
        zarr_format: int = typer.Option(3, "--zarr-format", help="3, or 2 for GDAL < 3.11 readers."),
        probability: bool = typer.Option(False, "--probability", help="Also store per-class probabilities (float16)."),
        sequential: bool = typer.Option(False, "--sequential", help="One tile at a time in this process (= --executor sequential)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Only plan: what would be computed/reused (= plan)."),
        break_lock: bool = typer.Option(
            False, "--break-lock", help="Remove the store's run lock left by a dead job (a live owner: add --force)."
        ),
        force: bool = typer.Option(False, "--force", help="With --break-lock: also when its owner may be alive."),
        connect_timeout: float = typer.Option(
            120.0, "--connect-timeout", help="Seconds to wait for the Ray cluster before giving up (exit 5)."
        ),
        allow_partial: bool = typer.Option(
            False, "--allow-partial",
            help="Exit 0, not 3, when some tiles are degraded or failed (they stay listed in the manifest and summary).",
        ),
    ) -> None:
        """Map land cover over an AOI into a seamless Zarr mosaic on Ray (resumable, incremental)."""
        from pydantic import ValidationError

        from sgma_batch.errors import UsageError
        from sgma_batch.run import RunSpec, plan_run, run_mosaic

        if zarr_format not in (2, 3):
            raise UsageError(f"--zarr-format must be 2 or 3, got {zarr_format}")
        try:
            spec = RunSpec(
                aoi=aoi, start=start, end=end, catalog=catalog, model=model, out=out, address=address,
                max_actors=max_actors, gpus_per_actor=gpus_per_actor,
                collections=collections, signer=signer, allow_domain_shift=allow_domain_shift,
                tile_px=tile_px, halo_px=halo_px, window_px=window_px, batch_size=batch_size, res_m=res, crs=crs,
                zarr_format=zarr_format, write_probability=probability,
                executor="sequential" if sequential else executor,
                cache_dir=str(_cache_dir()), max_area_km2=max_area_km2,
                break_lock=break_lock, force=force, connect_timeout_s=connect_timeout,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        if dry_run:
            _print_plan(plan_run(spec), as_json)
            return
        # Ray's driver prints worker/raylet notices ("(raylet) A worker died ...") on stdout; keep stdout
        # for the machine output (--json) alone.
        with _Progress(enabled=sys.stderr.isatty(), px_km2=res * res / 1e6) as bar, \
                contextlib.redirect_stdout(sys.stderr):
            summary = run_mosaic(spec, progress=bar.update)
        if as_json:
            from sgma_batch.redact import redact_obj

            typer.echo(json.dumps(redact_obj(summary.to_dict())))
        else:
            typer.echo(
                f"{summary.store}: {summary.tiles} tiles, {summary.reused} reused, {summary.computed} computed, "
                f"{summary.nodata} nodata, {summary.degraded} degraded, {summary.failed} failed "
                f"({summary.area_km2:.1f} km2 in {summary.seconds:.1f} s, {summary.executor} executor"
                + (f", model work {summary.model_work_per_px:.2f} px per output px)"
                   if summary.model_work_per_px is not None else ")")
                + (f"\n  in tiles: read {summary.read_s:,.1f} s, model {summary.model_s:,.1f} s (summed over tiles; "
                   "`plan` estimates both)" if summary.read_s is not None and summary.model_s is not None else ""),
                err=True,
            )
        partial = f"{summary.degraded} degraded, {summary.failed} failed tiles"
        raise typer.Exit(_partial_ok(summary.exit_code, allow_partial, partial))

    def plan_cmd(**kwargs: object) -> None:
        """Plan a run without side effects: tiles to compute/reuse, scenes, bytes to read, time estimate."""
        run_cmd(**kwargs, dry_run=True, allow_partial=False)

    sig = inspect.signature(run_cmd)
    plan_cmd.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for p in sig.parameters.values() if p.name not in ("dry_run", "allow_partial")]
    )
    plan_cmd.__annotations__ = {k: v for k, v in run_cmd.__annotations__.items() if k not in ("dry_run", "allow_partial")}
    app.command("plan")(plan_cmd)

    @app.command("status")
    def status_cmd(
        store: str = typer.Argument(..., help="A Zarr store written by `sgma-batch run`."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
        labels: str | None = typer.Option(
            None, "--labels", help="Label raster (class ids, 255 = none): add per-class agreement with it."
        ),
        label_nodata: float | None = typer.Option(
            None, "--label-nodata", help="Label value meaning 'no label' (default: the raster's nodata tag, else 255)."
        ),
        label_map: str | None = typer.Option(
            None, "--label-map", help="Label value -> store class name, e.g. '0:dry,1:water,-1:nodata' (nodata = not "
            "scored; names the store lacks count as 'other')."
        ),
        verify: bool = typer.Option(
            False, "--verify", help="Check every committed tile's chunks against its record's sha256 (exit 43 if any "
            "is missing or changed; rerun the same `run` to recompute them)."
        ),
    ) -> None:
        """Summarise a store's manifest: tiles per status (and agreement with labels, with --labels)."""
        from sgma_batch.agreement import label_agreement
        from sgma_batch.errors import StoreCorruptError
        from sgma_batch.storage import has_children, join, user_location
        from sgma_batch.store import manifest_summary

        if not has_children(join(user_location(store, "store"), "manifest")):  # a path or an s3:// gs:// az:// URL
            raise StoreCorruptError(f"{store} has no manifest; give a store written by `sgma-batch run`")
        counts = manifest_summary(store)
        from sgma_batch.errors import AssetReadError
        from sgma_batch.safety import guarded

        agreement = guarded(  # a missing or non-raster --labels file: one line (60), not a traceback
            lambda: label_agreement(store, labels, label_nodata=label_nodata, label_map=label_map),
            what=f"labels {labels}", error=AssetReadError,
            hint="give a label GeoTIFF (class ids) over the store's area") if labels else None
        if as_json:
            extra = {"agreement": agreement} if agreement is not None else {}
            typer.echo(json.dumps({"store": store, "tiles": sum(counts.values()), **counts, **extra}))
        else:
            typer.echo(f"{store}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
            if agreement is not None:
                overall = agreement["overall"]
                typer.echo(f"agreement with {labels}: {agreement['pixels']} px compared, "
                           f"{agreement['unmapped']} unmapped, overall "
                           f"{'n/a' if overall is None else f'{overall:.1%}'}")
                for name, c in agreement["per_class"].items():
                    pa, ua = c["producer"], c["user"]
                    typer.echo(f"  {name:<10} truth {c['truth']:>8}  producer "
                               f"{'n/a' if pa is None else f'{pa:.1%}':>6}  user {'n/a' if ua is None else f'{ua:.1%}':>6}")
        if verify:
            from sgma_batch.store import read_manifest
            from sgma_batch.verify import tile_problems

            bad = {t: p for t, rec in sorted(read_manifest(store).items()) if rec.done
                   for p in [tile_problems(store, rec)] if p}
            if bad:
                first = next(iter(bad))
                raise StoreCorruptError(
                    f"{store}: {len(bad)} committed tile(s) have missing or changed chunks (e.g. {first}: "
                    f"{', '.join(bad[first])}); rerun the same `sgma-batch run` command to recompute them")
        from sgma_batch.verify import unfinished

        why = unfinished(store)
        if why is not None:  # partial (3): the map is there, the finish step is not current
            typer.echo(f"{store} is unfinished: {why}; rerun the same `sgma-batch run` command to finish it", err=True)
        raise typer.Exit(3 if counts.get("failed") or counts.get("degraded") or why else 0)

    @app.command("quicklook")
    def quicklook_cmd(
        store: str = typer.Argument(..., help="A Zarr store written by `sgma-batch run`."),
        png: str = typer.Option(..., "--png", help="PNG file to write."),
    ) -> None:
        """Render the class map with a legend to a PNG."""
        from sgma_batch.errors import StoreCorruptError
        from sgma_batch.safety import check_png_target, guarded
        from sgma_batch.store import render_quicklook

        check_png_target(png)
        guarded(lambda: render_quicklook(store, png), what=f"store {store}", error=StoreCorruptError,
                hint="give a store written by `sgma-batch run` and a writable --png")
        typer.echo(png, err=True)


def _partial_ok(code: int, allow_partial: bool, what: str) -> int:
    """The process exit code: a partial result (3) is success with ``--allow-partial`` (scheduled jobs, where a
    retry on a fresh cluster cannot repair a permanently broken asset); the tiles stay recorded as they are."""
    if code == 3 and allow_partial:
        typer.echo(f"partial result accepted (--allow-partial): {what}, listed in the manifest", err=True)
        return 0
    return code


def _print_plan(plan: object, as_json: bool) -> None:
    from sgma_batch.redact import redact_obj

    d = redact_obj(plan.to_dict())  # type: ignore[attr-defined]
    if as_json:
        typer.echo(json.dumps(d))
        return
    est = f", about {d['estimate_s']:.1f} s of model time here" if d["estimate_s"] is not None else ""
    if d.get("model_work_per_px") is not None:
        est += f", model work {d['model_work_per_px']:.2f} px per output px"
    typer.echo(
        f"{d['store']}: {d['tiles']} tiles ({d['area_km2']:.1f} km2), {d['compute']} to compute, {d['reuse']} reused"
        f"{est}\n  scenes: {_kv(d['scenes'])}\n  tiles with: {_kv(d['tiles_with'])}"
        f"\n  to compute by modalities: {_kv(d['signatures'])}"
        f"\n  to read: {d['bytes_to_read'] / 1e6:,.1f} MB (up to {d['bytes_upper'] / 1e6:,.1f} MB)"
        + (f"; by native resolution: {', '.join(f'{k} {v / 1e6:,.1f} MB' for k, v in d['bytes_by_res'].items())}"
           if d.get("bytes_by_res") else "")
        + (f"\n  time here (measured): read {d['read_estimate_s']:,.1f} s ({d['read_s_per_tile']:.2f} s per tile, one "
           f"thread), model {d['estimate_s']:,.1f} s; expected wall about {d['wall_estimate_s']:,.1f} s with the "
           f"{d['executor']} executor" if d.get("wall_estimate_s") is not None else ""),
        err=True,
    )


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


class _Progress:
    """Rich progress on stderr (tiles, km2, km2/h, ETA); silent when stderr is not a terminal."""

    def __init__(self, enabled: bool, px_km2: float) -> None:
        self.enabled = enabled
        self.px_km2 = px_km2
        self._km2 = 0.0
        self._bar = None
        self._task = None

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("tiles"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
        return self

    def update(self, completed: int, total: int, record: TileRecord | None) -> None:
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task("run", total=total, completed=completed, rate="")
            self._t0 = time.perf_counter()
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-6)
        rate = ""
        if record is not None:
            (y0, y1), (x0, x1) = record.region
            self._km2 += (y1 - y0) * (x1 - x0) * self.px_km2
            rate = f"{self._km2:,.1f} km2, {self._km2 / elapsed * 3600:,.0f} km2/h"
        self._bar.update(self._task, completed=completed, rate=rate)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
