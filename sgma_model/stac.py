"""A STAC Item for a checkpoint with the Machine Learning Model (MLM) extension, so catalogues can list it.

``sgma-batch model info CKPT --stac`` prints it. Built from the model card and the weights file (read once
to hash it; never unpickled, torch is not imported): per modality one ``mlm:input`` with its bands in model
order and their z-score statistics, one ``mlm:output`` with the card's classes, the framework (PyTorch and
the installed version), the architecture and its arguments, and the weights and card as assets with their
size and sha256 (``file:checksum``, a multihash). The hrefs are absolute (``file://`` or the checkpoint's
URL): the item describes the checkpoint where it is, wherever the item is stored.

STAC 1.1.0, MLM v1.5.2, classification v1.1.0 (the version MLM references), file v2.1.0.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from datetime import UTC, date, datetime, time
from importlib import metadata
from pathlib import Path
from typing import Any

from sgma_model.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    _card_location,
    _url_join,
    _url_read,
    read_card,
)
from sgma_model.errors import CardMismatchError, CheckpointError

STAC_VERSION = "1.1.0"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
#: sha2-256 multihash prefix (code 0x12, 32 bytes): ``file:checksum`` is a multihash in hex
SHA256_MULTIHASH = "1220"


def _utc(value: datetime | date | float, *, end_of_day: bool = False) -> str:
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, UTC)
    elif not isinstance(value, datetime):
        value = datetime.combine(value, time(23, 59, 59) if end_of_day else time(0, 0, 0))
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def _weights(path: str | os.PathLike[str]) -> tuple[str, str, int, int, str]:
    """(weights href, card href, weights size, parameter count, weights sha256) of a checkpoint."""
    card_loc, base = _card_location(path)
    if isinstance(base, str):
        loc: str | Path = _url_join(base, WEIGHTS_FILE)
        raw = _url_read(loc)
        if raw is None:
            raise CheckpointError(f"no {WEIGHTS_FILE} in {path}; give a checkpoint directory written by save_checkpoint")
        digest, size, header = hashlib.sha256(raw).hexdigest(), len(raw), raw[: 8 + 100_000_000]
        hrefs = (str(loc), str(card_loc))
    else:
        loc = base / WEIGHTS_FILE
        if not loc.is_file():
            raise CheckpointError(f"no {WEIGHTS_FILE} in {path}; give a checkpoint directory written by save_checkpoint")
        h = hashlib.sha256()
        with loc.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        with loc.open("rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0] if loc.stat().st_size >= 8 else 0
            header = struct.pack("<Q", n) + fh.read(min(n, 100_000_000))
        digest, size = h.hexdigest(), loc.stat().st_size
        hrefs = (loc.resolve().as_uri(), Path(card_loc).resolve().as_uri())
    return hrefs[0], hrefs[1], size, _parameters(header, loc), digest


def _parameters(header: bytes, where: Any) -> int:
    """Number of values in a safetensors file, from its JSON header (8-byte little-endian length first)."""
    try:
        (n,) = struct.unpack("<Q", header[:8])
        tensors = json.loads(header[8 : 8 + n])
        return sum(math.prod(t["shape"]) for k, t in tensors.items() if k != "__metadata__")
    except (struct.error, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{where} is not a safetensors file; re-save the checkpoint") from None


def _band_names(card: ModelCard) -> dict[tuple[str, str], str]:
    """The STAC band name of each (modality, band): the card's band name, ``modality_band`` where two
    modalities share one."""
    seen: dict[str, int] = {}
    for m in card.modalities:
        for b in m.bands:
            seen[b.name] = seen.get(b.name, 0) + 1
    return {(m.name, b.name): (b.name if seen[b.name] == 1 else f"{m.name}_{b.name}")
            for m in card.modalities for b in m.bands}


def _times(card: ModelCard, fallback: float) -> dict[str, Any]:
    """The training imagery's window (start/end) and when training finished (``created``)."""
    training = card.training if isinstance(card.training, dict) else {}
    source = (training.get("data") or {}).get("source") or {}
    history = training.get("history") or []
    finished = [e.get("finished_at") for e in history if isinstance(e, dict) and isinstance(e.get("finished_at"), (int, float))]
    created = _utc(max(finished) if finished else fallback)
    out: dict[str, Any] = {"created": created}
    try:
        start, end = date.fromisoformat(str(source["start"])[:10]), date.fromisoformat(str(source["end"])[:10])
    except (KeyError, ValueError):
        return {**out, "datetime": created}
    return {**out, "datetime": None, "start_datetime": _utc(start), "end_datetime": _utc(end, end_of_day=True)}


def mlm_item(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The MLM STAC Item of the checkpoint at ``path`` (a directory, its card.json, or their URL).

    Raises:
        CheckpointError: no card or weights, or the weights are not safetensors.
        CardMismatchError: the weights are not the ones the card records (sha256).
    """
    card = read_card(path)
    weights_href, card_href, size, n_params, digest = _weights(path)
    if card.weights_sha256 is not None and digest != card.weights_sha256:
        raise CardMismatchError(f"{weights_href} does not match the sha256 in its card; the files come from "
                                "different saves")
    names = _band_names(card)
    bands = [{"name": names[(m.name, b.name)], "description": f"{m.name} {b.name}"
              + (f" ({b.common_name})" if b.common_name and b.common_name != b.name else "")}
             for m in card.modalities for b in m.bands]
    inputs = [{
        "name": m.name,
        "description": f"{m.name} bands in model order" + (f", from {m.collection_hint}" if m.collection_hint else "")
                       + "; a missing modality is left out of the input (SGMA fuses the modalities present)",
        "bands": [names[(m.name, b.name)] for b in m.bands],
        "input": {"shape": [-1, len(m.bands), -1, -1], "dim_order": ["batch", "bands", "height", "width"],
                  "data_type": "float32"},
        "value_scaling": [{"type": "z-score", "mean": b.mean, "stddev": b.std} for b in m.bands],
        "resize_type": None,
        "pre_processing_function": None,
    } for m in card.modalities]
    classes = [{"value": i, "name": re.sub(r"[^0-9A-Za-z_-]", "_", c.name), "description": c.name,
                "color_hint": c.color.lstrip("#").upper()} for i, c in enumerate(card.classes)]
    output = {
        "name": "class probabilities",
        "description": "per-pixel class logits; argmax gives the class, softmax the probabilities",
        "tasks": ["semantic-segmentation"],
        "result": {"shape": [-1, len(card.classes), -1, -1], "dim_order": ["batch", "class", "height", "width"],
                   "data_type": "float32"},
        "classification:classes": classes,
        "post_processing_function": None,
    }
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    training = card.training if isinstance(card.training, dict) else {}
    name = str(training.get("run_name") or card.architecture)
    properties: dict[str, Any] = {
        "title": f"sgma-batch model {name} ({card.architecture})",
        "description": "Multi-modal land-cover segmentation (SGMA: S2 optical, S1 SAR, DEM) that keeps working "
                       "when modalities are missing; checkpoint written by sgma-batch.",
        **_times(card, fallback=datetime.now(UTC).timestamp()),
        "mlm:name": name,
        "mlm:architecture": card.architecture,
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:total_parameters": n_params,
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:accelerator": None,  # CPU or a CUDA GPU: not constrained to one
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": "runs on CPU or on one CUDA GPU",
        "mlm:input": inputs,
        "mlm:output": [output],
        "mlm:hyperparameters": {k: v for k, v in card.arguments.items() if k != "modalities"},
        "bands": bands,
        "sgma:model_hash": card.model_hash,
        "sgma:modalities": list(card.modality_names),
    }
    if torch_version is not None:
        properties["mlm:framework_version"] = torch_version
    metrics = training.get("metrics")
    if isinstance(metrics, dict):
        properties["sgma:metrics"] = metrics
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM, CLASSIFICATION, FILE],
        "id": f"sgma-model-{re.sub(r'[^0-9A-Za-z_-]', '_', name)}-{card.model_hash[:12]}",
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": {
            "weights": {
                "href": weights_href,
                "type": "application/octet-stream; application=safetensors",
                "title": f"{card.architecture} weights (safetensors)",
                "roles": ["mlm:model", "mlm:weights", "data"],
                "mlm:artifact_type": "safetensors.torch.save_file",
                "bands": bands,
                "file:size": size,
                "file:checksum": SHA256_MULTIHASH + digest,
            },
            "card": {
                "href": card_href,
                "type": "application/json",
                "title": f"model card ({CARD_FILE}): architecture, arguments, bands, statistics, classes",
                "roles": ["metadata"],
            },
        },
    }
