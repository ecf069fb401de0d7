"""``sgma-batch reprocess --spec jobs.yaml``: incremental runs over AOIs x periods x output stores."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def reprocess(
    spec: Path = typer.Option(..., "--spec", help="Job spec YAML: aois, periods, stores (see deploy/README.md)."),
    report: Path | None = typer.Option(
        None, "--report",
        help="Write the JSON report to this file; {started} in the name becomes the UTC start, e.g. 20250101T030000Z.",
    ),
    break_lock: bool = typer.Option(
        False, "--break-lock", help="Remove a stale run lock left in a store by a killed job, then run."
    ),
    force: bool = typer.Option(False, "--force", help="With --break-lock: also when its owner may be alive."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the spec and list the entries; run nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report on stdout."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial",
        help="Exit 0, not 3, when some tiles or entries degraded or failed (the report still lists them).",
    ),
) -> None:
    """Re-run every (AOI, period, store) of a job spec; only tiles whose inputs changed are recomputed.

    Each store is locked for the whole job (exit 42 when another job holds it); the summary table goes
    to stderr, the JSON report to --report and, with --json, to stdout.
    """
    from sgma_batch.reprocess import expand_spec, format_summary, load_spec
    from sgma_batch.reprocess import reprocess as run_reprocess

    job, base_dir = load_spec(spec)
    entries = expand_spec(job, base_dir)
    if dry_run:
        listing = [
            {"store": e.store_name, "aoi": e.aoi_name, "period": e.period.name, "start": e.period.start.isoformat(),
             "end": e.period.end.isoformat(), "out": e.store}
            for e in entries
        ]
        if as_json:
            typer.echo(json.dumps(listing, indent=2))
        else:
            for row in listing:
                typer.echo(f"{row['store']}\t{row['aoi']}\t{row['period']}\t{row['out']}")
        return
    result = run_reprocess(entries, spec_path=str(spec), break_lock=break_lock, force=force)
    typer.echo(format_summary(result), err=True)
    from sgma_batch.redact import redact_obj

    payload = json.dumps(redact_obj(result.to_dict()), indent=2)
    if report is not None:
        started = result.started.replace("-", "").replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
        report = Path(str(report).replace("{started}", started))  # one report per run, never overwritten
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(payload + "\n")
        except OSError as exc:  # the runs are done and their stores written: say so, with the report's path
            from sgma_batch.errors import StoreUnwritableError

            raise StoreUnwritableError(f"the job ran (exit {result.exit_code}) but its report {report} cannot be "
                                       f"written ({exc.strerror or exc}); choose a writable --report") from None
    if as_json:
        typer.echo(payload)
    if result.exit_code == 3 and allow_partial:
        typer.echo("partial result accepted (--allow-partial): see the report's entries", err=True)
        return
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    app.command("reprocess")(reprocess)
