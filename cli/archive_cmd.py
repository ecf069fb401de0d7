"""``sgma-batch archive synth OUT_DIR``: write a deterministic synthetic archive (COGs + static STAC)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

archive_app = typer.Typer(help="Synthetic scene archives: the demo catalogue, test bed and benchmark data.",
                          no_args_is_help=True)


@archive_app.command("synth")
def synth(
    out_dir: Annotated[Path, typer.Argument(help="New or empty folder to write the archive into.")],
    seed: int = typer.Option(0, "--seed", help="World and weather seed; same seed, same bytes."),
    size_km: tuple[float, float] = typer.Option((5.0, 5.0), "--size-km", help="Extent width and height in km."),
    epsg: int = typer.Option(32633, "--epsg", help="WGS 84 / UTM EPSG code of the rasters (326xx / 327xx)."),
    origin: tuple[float, float] = typer.Option(
        None, "--origin", help="Upper-left corner x y in the UTM CRS (default: near 15E 47.8N in zone 33)."),
    dates: int = typer.Option(4, "--dates", min=1, help="Number of Sentinel-2 dates (5 days apart)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Generate a Sentinel-2 L2A / Sentinel-1 RTC / DEM / label archive with a static STAC catalogue."""
    from sgma_batch.synthetic import generate_archive
    from sgma_batch.synthetic.archive import DEFAULT_ORIGIN_UTM

    show = sys.stderr.isatty()
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 0.5:
            last[0] = now
            end = "\n" if done == total else ""
            if show:
                typer.echo(f"\rsynthesising {done}/{total} blocks ({now - started:.1f} s)", err=True, nl=False)
                if end:
                    typer.echo("", err=True)

    info = generate_archive(
        out_dir, seed=seed, size_km=size_km, origin_utm=tuple(origin) if origin else DEFAULT_ORIGIN_UTM,
        epsg=epsg, dates=dates, progress=progress,
    )
    seconds = time.perf_counter() - started
    b = info.bounds
    summary = {
        "catalog": str(info.catalog_path), "labels": str(info.label_path), "epsg": info.epsg,
        "bounds": [b.left, b.bottom, b.right, b.top], "shape": list(info.geobox.shape),
        "dates": [d.isoformat() for d in info.dates], "seed": info.seed, "seconds": round(seconds, 2),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{info.catalog_path}  ({info.geobox.shape[1]}x{info.geobox.shape[0]} px, "
                   f"{len(info.dates)} dates, EPSG:{info.epsg}, {seconds:.1f} s)")


def register(app: typer.Typer) -> None:
    app.add_typer(archive_app, name="archive")
