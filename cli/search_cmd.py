"""``sgma-batch search``: the scenes each modality offers over an AOI and time window."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer


def _default_catalog() -> str:
    """The embedded demo archive's catalog.json, generated on first use into the cache folder that
    ``run`` uses too (:func:`sgma_batch.synthetic.default_cache_dir`)."""
    from sgma_batch.synthetic import default_cache_dir, ensure_demo_archive

    return str(ensure_demo_archive(default_cache_dir()).catalog_path)


def scenes_to_json(results: dict[str, list[Any]]) -> dict[str, list[dict[str, Any]]]:
    """Scene records as plain JSON (unsigned hrefs only)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for mod, scenes in results.items():
        out[mod] = [
            {
                "id": s.id,
                "collection": s.collection,
                "sensor": s.sensor,
                "datetime": s.datetime.isoformat().replace("+00:00", "Z"),
                "cloud_cover": s.cloud_cover,
                "orbit_state": s.orbit_state,
                "updated": s.updated,
                "epsg": s.epsg,
                "shape": list(s.shape) if s.shape else None,
                "bbox": list(s.bbox),
                "geometry": dict(s.geometry),
                "assets": {b: a.href for b, a in s.assets.items()},
            }
            for s in scenes
        ]
    return out


def search(
    aoi: str = typer.Option(..., "--aoi", help="AOI: GeoJSON file (CRS84) or min_lon,min_lat,max_lon,max_lat."),
    start: str = typer.Option(..., "--start", help="Window start, YYYY-MM-DD or RFC 3339."),
    end: str = typer.Option(..., "--end", help="Window end (inclusive), YYYY-MM-DD or RFC 3339."),
    catalog: str | None = typer.Option(None, "--catalog", help="STAC API URL or static catalog.json (default: demo archive)."),
    collections: str | None = typer.Option(None, "--collections", help="Per-modality collections, e.g. s2=sentinel-2-l2a,s1=sentinel-1-rtc."),
    query: str | None = typer.Option(None, "--query", help='STAC query JSON, e.g. \'{"s2": {"eo:cloud_cover": {"lt": 30}}}\'.'),
    max_items: int = typer.Option(2000, "--max-items", min=1, help="Refuse searches matching more items per modality."),
    max_area_km2: float = typer.Option(10_000.0, "--max-area-km2", help="Refuse larger AOIs."),
    signer: str | None = typer.Option(None, "--signer", help="Href signer applied at read time, e.g. planetary-computer."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON to stdout."),
) -> None:
    """List matching scenes per modality; exits 4 when nothing is found."""
    from sgma_batch.aoi import load_aoi
    from sgma_batch.errors import NothingFoundError, UsageError
    from sgma_batch.search import search_scenes

    area = load_aoi(aoi, max_area_km2=max_area_km2)
    try:
        q = json.loads(query) if query else None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--query is not JSON ({exc.msg}); give e.g. '{{\"eo:cloud_cover\": {{\"lt\": 30}}}}'") from None
    cat = catalog or _default_catalog()
    try:
        results = search_scenes(cat, area, start, end, collections=collections, query=q, max_items=max_items,
                                signer=signer)
    except NothingFoundError as exc:
        from sgma_batch.preflight import explain_empty
        from sgma_batch.search import MODALITIES

        if query or exc.exit_code != 4:
            raise
        # an AOI outside the catalogue (for the demo archive: a small synthetic area) is 17, not "widen the window"
        raise explain_empty(cat, area, start, end, MODALITIES, collections=collections, demo=catalog is None) from None
    payload = scenes_to_json(results)
    if as_json:
        typer.echo(json.dumps({"catalog": cat, "start": start, "end": end, "scenes": payload}, indent=2))
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        console = Console()
        for mod, rows in payload.items():
            table = Table(title=f"{mod}: {len(rows)} scenes")
            for col in ("id", "collection", "datetime", "cloud %", "orbit"):
                table.add_column(col)
            for r in rows:
                cc = "" if r["cloud_cover"] is None else f"{r['cloud_cover']:.1f}"
                table.add_row(r["id"], r["collection"], r["datetime"], cc, r["orbit_state"] or "")
            console.print(table)
        return
    for mod, rows in payload.items():
        for r in rows:
            cc = "" if r["cloud_cover"] is None else f"{r['cloud_cover']:.1f}"
            typer.echo(f"{mod}\t{r['id']}\t{r['collection']}\t{r['datetime']}\t{cc}")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
