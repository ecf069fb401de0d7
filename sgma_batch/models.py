"""Where the shipped demo checkpoint lives."""

from __future__ import annotations

from pathlib import Path

import sgma_batch
from sgma_batch.errors import SgmaError


class DemoModelMissingError(SgmaError, FileNotFoundError):
    """The package was installed without its demo checkpoint."""

    exit_code = 30


def default_checkpoint() -> Path:
    """The demo checkpoint shipped in the package (``sgma_batch/assets/demo-model``).

    Raises:
        DemoModelMissingError: it is not there (a source checkout before training landed).
    """
    path = Path(sgma_batch.__file__).parent / "assets" / "demo-model"
    if not (path / "card.json").is_file() or not (path / "model.safetensors").is_file():
        raise DemoModelMissingError(
            f"no demo checkpoint at {path}; pass --model <checkpoint dir> (or train one with `sgma-batch train`)"
        )
    return path
