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
    if as_json:
        typer.echo(json.dumps(card.to_dict(), indent=2))
        return
    typer.echo(card.summary())


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
