"""``sgma-batch chips``, ``sgma-batch train`` and ``sgma-batch evaluate``: thin wrappers over the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def chips(
    out: str = typer.Option(..., "--out", "-o", help="Chip store to write (Zarr): a path or an s3:// gs:// az:// URL."),
    catalog: Optional[str] = typer.Option(None, "--catalog", help="STAC catalogue (API URL or static catalog.json)."),
    aoi: Optional[str] = typer.Option(None, "--aoi", help="AOI GeoJSON file or 'minlon,minlat,maxlon,maxlat'."),
    start: Optional[str] = typer.Option(None, "--start", help="Window start (YYYY-MM-DD)."),
    end: Optional[str] = typer.Option(None, "--end", help="Window end (YYYY-MM-DD)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label raster (class ids, 255 nodata); its grid is the chip grid."),
    labels_collection: Optional[str] = typer.Option(None, "--labels-collection", help="Instead of --labels: a STAC collection of --catalog whose item over the AOI holds the label raster (e.g. sgma-labels)."),
    labels_asset: str = typer.Option("labels", "--labels-asset", help="Asset key of the label raster in --labels-collection items."),
    demo: bool = typer.Option(False, "--demo", help="Use the embedded synthetic demo archive for catalogue, AOI, window and labels."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where the demo archive is generated (default: the user cache)."),
    sen1floods11: Optional[Path] = typer.Option(None, "--sen1floods11", help="Sen1Floods11 folder (S1Hand/, S2Hand/, LabelHand/) instead of a catalogue."),
    files: Optional[list[str]] = typer.Option(None, "--files", help="MODALITY=PATTERN, repeatable: per-chip rasters of a modality (a pattern with {id}, a directory or a glob), e.g. s1='data/S1/{id}_S1Hand.tif'. Needs --label-files."),
    label_files: Optional[str] = typer.Option(None, "--label-files", help="Label rasters, one per chip (pattern with {id}, directory or glob); also overrides Sen1Floods11's LabelHand naming."),
    bands: Optional[list[str]] = typer.Option(None, "--bands", help="MODALITY=NAMES, repeatable: band names in file order (vv,vh) or NAME:BAND pairs (blue:2,green:B3; BAND = 1-based index over all pages or a band description)."),
    scale: Optional[list[str]] = typer.Option(None, "--scale", help="MODALITY=FACTOR, repeatable: physical value = raw x FACTOR (e.g. s2=0.0001 for DN)."),
    nodata: Optional[list[str]] = typer.Option(None, "--nodata", help="MODALITY=VALUE, repeatable: raw nodata value (default: the raster's tag; NaN is always nodata)."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help="Label value -> class, e.g. '0:dry,1:water,-1:nodata' (nodata/ignore = not scored). Default: values are class ids 0..K-1."),
    label_nodata: Optional[float] = typer.Option(None, "--label-nodata", help="Label value that means 'no label' (default: the raster's nodata tag)."),
    resolution: Optional[float] = typer.Option(None, "--resolution", help="Pixel size in metres, required for chips whose files have no CRS."),
    split_by: str = typer.Option("auto", "--split-by", help="--files / --sen1floods11: 'file' (whole chips to train/val/test), 'quadrant' (each chip's quadrant --test-quadrant is test) or 'auto' (file from 3 chips up; Sen1Floods11 default: quadrant)."),
    test_quadrant: int = typer.Option(3, "--test-quadrant", help="Sen1Floods11: held-out quadrant (0 NW, 1 NE, 2 SW, 3 SE)."),
    val_quadrant: Optional[int] = typer.Option(None, "--val-quadrant", help="Quadrant split: one quadrant for val (default none)."),
    chip_px: int = typer.Option(64, "--chip-px", help="Chip size in pixels."),
    block_px: int = typer.Option(144, "--block-px", help="Split block size in pixels (one split per block)."),
    guard_px: int = typer.Option(16, "--guard-px", help="Gap in pixels between chips of different blocks."),
    seed: int = typer.Option(0, "--seed", help="Seed of the block-to-split assignment."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing chip store."),
    as_json: bool = typer.Option(False, "--json", help="Print the store summary as JSON."),
) -> None:
    """Export training chips (per-modality arrays, masks, labels, blocked splits, train statistics)."""
    from sgma_batch import chips as chiplib
    from sgma_batch.errors import UsageError

    if files and sen1floods11 is not None:
        raise UsageError("give --files or --sen1floods11, not both")
    if files:
        if not label_files:
            raise UsageError("--files needs --label-files (one label raster per chip)")
        path = _import_files(files, label_files, out, bands=bands, scale=scale, nodata=nodata, label_map=label_map,
                             label_nodata=label_nodata, resolution=resolution, chip_px=chip_px, split_by=split_by,
                             test_quadrant=test_quadrant, val_quadrant=val_quadrant, guard_px=guard_px, seed=seed,
                             overwrite=overwrite)
    elif sen1floods11 is not None:
        path = chiplib.sen1floods11_chip_store(
            sen1floods11, out, test_quadrant=test_quadrant, val_quadrant=val_quadrant, chip_px=chip_px,
            guard_px=guard_px, labels=label_files, resolution=resolution,
            split_by="quadrant" if split_by == "auto" else split_by, overwrite=overwrite,
        )
    else:
        if demo:
            from sgma_batch.synthetic import ensure_demo_archive

            info = ensure_demo_archive(cache_dir or _cache_dir())
            catalog = catalog or str(info.catalog_path)
            if labels_collection is None:
                labels = labels or Path(info.label_path)
            aoi = aoi or _demo_aoi(info)
            start, end = start or _demo_window(info)[0], end or _demo_window(info)[1]
        if not (catalog and aoi and start and end and (labels or labels_collection)):
            raise UsageError("give --catalog, --aoi, --start, --end and --labels or --labels-collection "
                             "(or --demo, --sen1floods11 DIR, or --files MODALITY=PATTERN --label-files PATTERN)")
        if labels and labels_collection:
            raise UsageError("give --labels or --labels-collection, not both")
        path = chiplib.export_chips(
            catalog=catalog, aoi=aoi, start=start, end=end, labels=labels, labels_collection=labels_collection,
            labels_asset=labels_asset, label_map=label_map, label_nodata=label_nodata, out=out, chip_px=chip_px,
            block_px=block_px, guard_px=guard_px, seed=seed, overwrite=overwrite,
        )
    store = chiplib.ChipStore(path)
    summary = {"store": str(path), "counts": store.attrs["counts"], "modalities": store.modalities,
               "classes": [c["name"] for c in store.classes], "present": store.attrs.get("present_counts")}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        held = "; ".join(f"{m} in {sum(v.values())}" for m, v in (summary["present"] or {}).items())
        typer.echo(f"{path}: {summary['counts']} (chips holding each modality: {held})")


def _import_files(files, label_files, out, *, bands, scale, nodata, label_map, label_nodata, resolution, chip_px,
                  split_by, test_quadrant, val_quadrant, guard_px, seed, overwrite) -> Path:
    from sgma_batch.chip_files import ModalityFiles, import_chip_files, parse_assignments, parse_band_spec
    from sgma_batch.errors import UsageError

    patterns = parse_assignments(files, "--files")
    extra = {"--bands": parse_assignments(bands, "--bands"), "--scale": parse_assignments(scale, "--scale"),
             "--nodata": parse_assignments(nodata, "--nodata")}
    for flag, given in extra.items():
        unknown = sorted(set(given) - set(patterns))
        if unknown:
            raise UsageError(f"{flag} names {unknown}, which no --files gives")
    specs = []
    for m, pattern in patterns.items():
        names, select = parse_band_spec(extra["--bands"][m]) if m in extra["--bands"] else (None, None)
        try:
            sc = float(extra["--scale"].get(m, 1.0))
            nd = float(extra["--nodata"][m]) if m in extra["--nodata"] else None
        except ValueError as exc:
            raise UsageError(f"--scale / --nodata for {m}: {exc}") from None
        specs.append(ModalityFiles(m, pattern, bands=names, select=select, scale=sc, nodata=nd))
    return import_chip_files(specs, label_files, out, label_map=label_map, label_nodata=label_nodata,
                             resolution=resolution, chip_px=chip_px, split_by=split_by, test_quadrant=test_quadrant,
                             val_quadrant=val_quadrant, guard_px=guard_px, seed=seed, overwrite=overwrite)


def _cache_dir() -> Path:
    from sgma_batch.synthetic import default_cache_dir  # same cache rule as `run`

    return Path(default_cache_dir())


def _demo_aoi(info) -> str:
    """The whole demo archive as a bbox string (lon/lat)."""
    from odc.geo.geobox import GeoBox  # noqa: F401

    b = info.geobox.extent.to_crs("EPSG:4326").boundingbox
    return f"{b.left},{b.bottom},{b.right},{b.top}"


def _demo_window(info) -> tuple[str, str]:
    dates = getattr(info, "dates", None)
    if dates:
        ds = sorted(str(d)[:10] for d in dates)
        return ds[0], ds[-1]
    return "2000-01-01", "2100-01-01"


def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML training spec (flags override it)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name; rerunning the same name resumes."),
    chips_path: Optional[str] = typer.Option(None, "--chips", help="Chip store from `sgma-batch chips` (path or URL)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Ray Train storage folder or s3:// URL (default ./runs)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Final checkpoint folder or s3:// gs:// az:// URL (default <storage>/<name>/model)."),
    model: Optional[str] = typer.Option(None, "--model", help="Registered model name (see `sgma-batch model list`)."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma list: train on these modalities of the chips only (default: every modality some training chip holds)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs"),
    poly_power: Optional[float] = typer.Option(None, "--poly-power"),
    mas_weight: Optional[float] = typer.Option(None, "--mas-weight", help="Weight of the MAS CE term (0 = off)."),
    subset_prob: Optional[float] = typer.Option(None, "--subset-prob", help="Whole-modality dropout probability."),
    hole_prob: Optional[float] = typer.Option(None, "--hole-prob", help="Per-pixel (cloud-like) dropout probability."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="RobustSeg stage 2: frozen teacher checkpoint (path or URL)."),
    kd_reduction: Optional[str] = typer.Option(None, "--kd-reduction", help="RobustSeg KD over classes: mean (public code, default) or sum."),
    hpdm_variant: Optional[str] = typer.Option(None, "--hpdm-variant", help="RobustSeg HPDM: robustseg (public code, default) or hybrid."),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N epochs (and after the last)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="GPU workers with NCCL and bf16, or CPU with gloo."),
    threads_per_worker: Optional[int] = typer.Option(None, "--threads-per-worker"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train (or resume) a model on a chip store with Ray Train; writes a checkpoint with its card."""
    from sgma_batch.errors import UsageError
    from sgma_batch.train import TrainSpec, train as run_training

    mods = None if modalities is None else [m.strip() for m in modalities.split(",") if m.strip()]
    flags = dict(name=name, chips=chips_path, storage=storage, out=out, model=model, modalities=mods, epochs=epochs,
                 batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                 poly_power=poly_power, mas_weight=mas_weight, subset_prob=subset_prob, hole_prob=hole_prob,
                 teacher=teacher, kd_reduction=kd_reduction, hpdm_variant=hpdm_variant, val_every=val_every, workers=workers, gpu=gpu, threads_per_worker=threads_per_worker, seed=seed)
    if config is not None:
        spec = TrainSpec.from_yaml(config, **flags)
    else:
        if name is None or chips_path is None:
            raise UsageError("give --name and --chips (or --config spec.yaml)")
        spec = TrainSpec.build(**{k: v for k, v in flags.items() if v is not None})
    _init_ray()
    result = run_training(spec)
    last = result.history[-1] if result.history else {}
    if as_json:
        typer.echo(json.dumps({"checkpoint": str(result.checkpoint), "epochs": result.epochs,
                               "model_hash": result.model_hash, "last": last}, indent=2))
    else:
        typer.echo(f"{result.checkpoint} ({result.epochs} epochs, val average "
                   f"{last.get('val_average', float('nan')):.2f}, last-1 {last.get('val_last1', float('nan')):.2f})")


def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)


def evaluate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint, path or URL (default: the shipped demo model)."),
    data: str = typer.Option(..., "--data", "-d", help="Chip store (path or URL)."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    protocol: str = typer.Option("all", "--protocol", help="emm, rmm, nm or all."),
    convention: str = typer.Option("both", "--convention", help="dropped, zero-filled or both."),
    batch_size: int = typer.Option(8, "--batch-size"),
    seed: int = typer.Option(0, "--seed", help="Seed of the RMM / NM corruption."),
    device: str = typer.Option("cpu", "--device"),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout instead of the markdown table."),
) -> None:
    """Missing-modality evaluation (EMM / RMM / NM of MODEL.md) with Average, Top-1, Last-1 and E(p)."""
    from sgma_batch.errors import UsageError
    from sgma_batch.evaluate import CONVENTIONS, PROTOCOLS, evaluate_checkpoint

    protocols = PROTOCOLS if protocol == "all" else tuple(p.strip() for p in protocol.split(","))
    conventions = CONVENTIONS if convention == "both" else (convention,)
    bad = [p for p in protocols if p not in PROTOCOLS] + [c for c in conventions if c not in CONVENTIONS]
    if bad:
        raise UsageError(f"unknown protocol/convention {bad}; use emm|rmm|nm|all and dropped|zero-filled|both")
    if model is None:
        from sgma_batch.models import default_checkpoint

        model = default_checkpoint()
    report = evaluate_checkpoint(model, data, split=split, protocols=protocols, conventions=conventions,
                                 batch_size=batch_size, seed=seed, device=device)
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else report.to_markdown())


def register(app: typer.Typer) -> None:
    app.command("chips")(chips)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
