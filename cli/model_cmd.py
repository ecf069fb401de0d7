"""``sgma-batch model list`` and ``sgma-batch model info CHECKPOINT``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

model_app = typer.Typer(help="Inspect registered model architectures and checkpoints.", no_args_is_help=True)


@model_app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the registered model names."""
    from sgma_model import list_models as _list

    names = _list()
    typer.echo(json.dumps(names) if as_json else "\n".join(names))


@model_app.command("info")
def info(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory (model.safetensors + card.json): a "
                                                "path or an s3:// gs:// az:// https:// URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole model card as JSON.")] = False,
    stac: Annotated[bool, typer.Option(
        "--stac", help="Print a STAC Item with the Machine Learning Model extension (inputs, bands, normalisation, "
                       "classes, framework, weights sha256) for catalogues.")] = False,
) -> None:
    """Show a checkpoint's model card: architecture, modalities and bands, classes, metrics."""
    from sgma_model.checkpoint import read_card

    if stac:
        from sgma_model.stac import mlm_item

        typer.echo(json.dumps(mlm_item(checkpoint), indent=2))
        return
    card = read_card(checkpoint)
    _check_weights(checkpoint, card.weights_sha256)
    if as_json:
        typer.echo(json.dumps(card.to_dict(), indent=2))
        return
    typer.echo(card.summary())


def _check_weights(checkpoint: str, sha256: str | None) -> None:
    """The weights file beside a local card exists and has the card's sha256 (CardMismatchError, 31), as
    ``load_checkpoint`` checks: ``info`` must not describe weights that are not there."""
    from pathlib import Path

    from sgma_model.checkpoint import WEIGHTS_FILE, _sha256_file
    from sgma_model.errors import CardMismatchError, CheckpointError

    if "://" in checkpoint:
        return  # object storage: load_checkpoint verifies when the weights are fetched
    base = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    weights = base / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {checkpoint}; give a checkpoint directory written by "
                              "save_checkpoint")
    if sha256 is not None and _sha256_file(weights) != sha256:
        raise CardMismatchError(f"{weights} does not match the sha256 in its card; the files come from different saves")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
