"""The Typer app ``sgma-batch``.

Commands live in one module each (``cli/<name>_cmd.py``) and register themselves through a
``register(app)`` function; every heavy import happens inside the command body, so
``sgma-batch --help`` loads neither torch nor ray, rasterio, xarray or zarr.

Errors that users can cause carry an ``exit_code``; they are printed as one line on stderr (with the
traceback only under ``--debug``) and the process exits with that code.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from sgma_batch import __version__
from sgma_batch.errors import Terminated

COMMAND_MODULES: tuple[str, ...] = (
    "cli.model_cmd",
    "cli.archive_cmd",
    "cli.search_cmd",
    "cli.run_cmd",
    "cli.train_cmd",
    "cli.reprocess_cmd",
)

app = typer.Typer(
    name="sgma-batch",
    help="Map land cover, water and floods from incomplete optical/SAR/DEM archives with SGMA on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"sgma-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from sgma_batch.redact import install_log_redaction  # light: no heavy imports

    install_log_redaction(tracebacks=debug)  # no token, password or (without --debug) traceback in a log line


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a command module not written yet
        if exc.name != _name:
            raise
        continue
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map user-facing errors to one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="sgma-batch", standalone_mode=True)
    except Terminated:
        # SIGTERM: run_mosaic has killed its actors and shut Ray down on the way here. Exit now, past the
        # interpreter's finalisation, where Ray's core worker aborts (SIGABRT) after a SIGTERM.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(Terminated.exit_code)
    except SystemExit as stop:
        cause: BaseException | None = stop
        while cause is not None:  # click turns Ctrl-C (SIGINT) into "Aborted!" and exit 1: make it 130
            if isinstance(cause, KeyboardInterrupt):
                sys.exit(130)
            cause = cause.__cause__ or cause.__context__
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        from sgma_batch.redact import redact

        code = getattr(exc, "exit_code", None)
        if debug or not isinstance(code, int):  # the traceback, redacted like every other output
            import traceback

            sys.stderr.write(redact(traceback.format_exc()))
            sys.stderr.flush()
            if getattr(exc, "hard_exit", False):
                os._exit(code if isinstance(code, int) else 1)
            sys.exit(code if isinstance(code, int) and debug else 1)

        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.echo(f"error: {redact(message)}", err=True)
        if getattr(exc, "hard_exit", False):  # a thread stuck in ray.init: do not wait for it at exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
