"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``card.json`` (the model card).

Loading never unpickles: weights come from safetensors, everything else from JSON. The card records the
registry name and constructor arguments, the modalities with their bands (canonical names, common
names, normalisation mean/std), the classes (names, colours), free-form training metadata, and the
sha256 of the weights file, which ``load_checkpoint`` verifies.

A checkpoint directory is a local path or an object-storage URL (``s3://bucket/models/v3``, ``gs://``,
``az://``; ``https://`` to load only), read and written with obstore, configured from the standard
environment variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials; see ``sgma_batch.storage``, which
``sgma_model`` does not import). On object storage the weights are one PUT and the card another, after them,
as on disk each is a temporary file renamed into place: a reader that finds the card finds its weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgma_model.errors import BandMismatchError, CardMismatchError, CheckpointError

if TYPE_CHECKING:  # torch stays out of read_card's import path for cheap CLI use
    import torch

    from sgma_model.model import MultiModalSegmenter

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = 1


@dataclass(frozen=True)
class BandInfo:
    """One input band: canonical name (sgma_batch.scenes), common name, normalisation statistics."""

    name: str
    common_name: str | None
    mean: float
    std: float


@dataclass(frozen=True)
class ModalityInfo:
    """One modality: name, STAC collection hint, bands in model order."""

    name: str
    bands: tuple[BandInfo, ...]
    collection_hint: str | None = None


@dataclass(frozen=True)
class ClassInfo:
    name: str
    color: str


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _jsonable(obj: Any) -> Any:
    """A JSON round trip that keeps key order (modality order matters)."""
    return json.loads(json.dumps(obj, allow_nan=False))


@dataclass(frozen=True)
class ModelCard:
    """The JSON model card of a checkpoint."""

    architecture: str
    arguments: dict[str, Any]
    modalities: tuple[ModalityInfo, ...]
    classes: tuple[ClassInfo, ...]
    training: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def for_model(
        cls,
        model: MultiModalSegmenter,
        modalities: Sequence[ModalityInfo | Mapping[str, Any]],
        classes: Sequence[ClassInfo | Mapping[str, Any] | tuple[str, str]],
        training: Mapping[str, Any] | None = None,
    ) -> ModelCard:
        """A card for a model made by ``create_model``; modality/class entries as records or dicts."""
        if model.architecture is None:
            raise CheckpointError(
                "the model was not made by create_model; build it with create_model(name, ...)"
            )
        card = cls(
            architecture=model.architecture,
            arguments=_jsonable(model.arguments),
            modalities=tuple(_modality(m) for m in modalities),
            classes=tuple(_class(c) for c in classes),
            training=dict(training or {}),
        )
        card.check_model(model)
        return card

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        _check_card_values(data)  # before anything is built from it: no NaN statistics, no absurd sizes
        fmt = data.get("format", CARD_FORMAT)
        if fmt != CARD_FORMAT:
            raise CheckpointError(
                f"model card format {fmt!r} is not the one this sgma_model reads ({CARD_FORMAT}); "
                "upgrade sgma-batch or re-save the checkpoint"
            )
        try:
            return cls(
                architecture=str(data["architecture"]),
                arguments=dict(data["arguments"]),
                modalities=tuple(_modality(m) for m in data["modalities"]),
                classes=tuple(_class(c) for c in data["classes"]),
                training=dict(data.get("training") or {}),
                weights_sha256=data.get("weights_sha256"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"model card is incomplete or malformed ({exc!r}); re-save the checkpoint"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "architecture": self.architecture,
            "arguments": self.arguments,
            "modalities": [
                {
                    "name": m.name,
                    "collection_hint": m.collection_hint,
                    "bands": [
                        {"name": b.name, "common_name": b.common_name, "mean": b.mean, "std": b.std}
                        for b in m.bands
                    ],
                }
                for m in self.modalities
            ],
            "classes": [{"name": c.name, "color": c.color} for c in self.classes],
            "training": self.training,
            "weights_sha256": self.weights_sha256,
        }

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def model_hash(self) -> str:
        """sha256 (hex) over the canonical card JSON, which includes the weights' sha256."""
        return hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def modality(self, name: str) -> ModalityInfo:
        for m in self.modalities:
            if m.name == name:
                return m
        raise BandMismatchError(
            f"modality {name!r} is not in the model card (has {', '.join(self.modality_names)})"
        )

    def band_names(self, modality: str) -> tuple[str, ...]:
        return tuple(b.name for b in self.modality(modality).bands)

    def band_counts(self) -> dict[str, int]:
        return {m.name: len(m.bands) for m in self.modalities}

    def normalise(self, modality: str, array: Any) -> Any:
        """(x - mean) / std per band of a (C, H, W) numpy array or torch tensor, float32."""
        bands = self.modality(modality).bands
        if array.shape[0] != len(bands):
            raise BandMismatchError(
                f"modality {modality!r} needs {len(bands)} bands ({', '.join(b.name for b in bands)}), "
                f"got {array.shape[0]}"
            )
        if hasattr(array, "detach"):  # torch
            import torch

            mean = torch.tensor([b.mean for b in bands], dtype=torch.float32, device=array.device)
            std = torch.tensor([b.std for b in bands], dtype=torch.float32, device=array.device)
            shape = (-1,) + (1,) * (array.ndim - 1)
            return (array.float() - mean.view(shape)) / std.view(shape)
        import numpy as np

        mean = np.asarray([b.mean for b in bands], dtype=np.float32).reshape((-1,) + (1,) * (array.ndim - 1))
        std = np.asarray([b.std for b in bands], dtype=np.float32).reshape(mean.shape)
        return ((np.asarray(array, dtype=np.float32) - mean) / std).astype(np.float32)

    def check_model(self, model: MultiModalSegmenter) -> None:
        """Raise CardMismatchError naming the first modality/class field that does not describe ``model``."""
        if self.modality_names != model.modalities:
            raise CardMismatchError(
                f"card modalities ({', '.join(self.modality_names)}) are not the model's "
                f"({', '.join(model.modalities)}), in order"
            )
        for name, count in self.band_counts().items():
            if count != model.band_counts[name]:
                raise CardMismatchError(
                    f"card lists {count} bands for {name!r}, the model's stem takes {model.band_counts[name]}"
                )
        if len(self.classes) != model.num_classes:
            raise CardMismatchError(
                f"card lists {len(self.classes)} classes, the model has {model.num_classes}"
            )

    def summary(self) -> str:
        """Human-readable multi-line description (``sgma-batch model info``)."""
        lines = [f"architecture: {self.architecture}", f"model hash:   {self.model_hash[:16]}"]
        args = {k: v for k, v in self.arguments.items() if k != "modalities"}
        if args:
            lines.append("arguments:    " + ", ".join(f"{k}={v}" for k, v in sorted(args.items())))
        lines.append("modalities:")
        for m in self.modalities:
            hint = f" [{m.collection_hint}]" if m.collection_hint else ""
            lines.append(f"  {m.name}{hint}: " + ", ".join(b.name for b in m.bands))
        lines.append("classes:      " + ", ".join(f"{i}={c.name}" for i, c in enumerate(self.classes)))
        metrics = self.training.get("metrics")
        for key, value in sorted(self.training.items()):
            if key != "metrics":
                lines.append(f"training.{key}: {value}")
        if isinstance(metrics, dict):
            lines.append("metrics:")
            for key, value in metrics.items():
                lines.append(f"  {key}: {value}")
        return "\n".join(lines)


def _modality(m: ModalityInfo | Mapping[str, Any]) -> ModalityInfo:
    if isinstance(m, ModalityInfo):
        return m
    bands = tuple(
        b
        if isinstance(b, BandInfo)
        else BandInfo(str(b["name"]), b.get("common_name"), float(b["mean"]), float(b["std"]))
        for b in m["bands"]
    )
    for b in bands:
        if not b.std > 0:
            raise ValueError(f"band {b.name!r} of {m['name']!r} has std {b.std}; it must be > 0")
    return ModalityInfo(name=str(m["name"]), bands=bands, collection_hint=m.get("collection_hint"))


#: Bounds on a card's values, checked before any model is built from it (a card is user input).
MAX_CARD_DEPTH = 32
MAX_CARD_BYTES = 16 << 20
MAX_CLASSES = 1024
MAX_BANDS = 256
MAX_INT_ARGUMENT = 1 << 16


def _depth(value: Any) -> int:
    best, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, Mapping):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, d + 1) for x in v)
        else:
            continue
        best = max(best, d + 1)
    return best


def _check_card_values(data: Mapping[str, Any]) -> None:
    """Refuse cards whose values would build something absurd: deep nesting, NaN/infinite or non-positive
    statistics, more classes or bands than any model has, a ``num_classes`` argument that differs from the
    class list, integer arguments above 65536 (the constructor would allocate them)."""
    if not isinstance(data, Mapping):
        raise CheckpointError("model card is not a JSON object; re-save the checkpoint")
    if _depth(data) > MAX_CARD_DEPTH:
        raise CheckpointError(f"model card is nested deeper than {MAX_CARD_DEPTH} levels; re-save the checkpoint")
    classes, modalities, arguments = data.get("classes"), data.get("modalities"), data.get("arguments")
    if isinstance(classes, list) and not 1 <= len(classes) <= MAX_CLASSES:
        raise CheckpointError(f"model card lists {len(classes)} classes; a model has 1 to {MAX_CLASSES}")
    if isinstance(modalities, list):
        for m in modalities:
            bands = m.get("bands") if isinstance(m, Mapping) else None
            if not isinstance(bands, list):
                continue
            if not 1 <= len(bands) <= MAX_BANDS:
                raise CheckpointError(f"model card lists {len(bands)} bands for {m.get('name')!r}; 1 to {MAX_BANDS}")
            for b in bands:
                if not isinstance(b, Mapping):
                    continue
                for key in ("mean", "std"):
                    v = b.get(key)
                    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    if not ok or (key == "std" and not v > 0):
                        raise CheckpointError(
                            f"band {b.get('name')!r} of {m.get('name')!r} has {key} {v!r} in the model card; "
                            f"it must be a finite number{' > 0' if key == 'std' else ''}: re-save the checkpoint")
    if isinstance(arguments, Mapping):
        stack = list(arguments.items())
        while stack:
            key, v = stack.pop()
            if isinstance(v, Mapping):
                stack.extend(v.items())
            elif isinstance(v, (list, tuple)):
                stack.extend((key, x) for x in v)
            elif isinstance(v, float) and not math.isfinite(v):
                raise CheckpointError(f"model card argument {key!r} is {v!r}; re-save the checkpoint")
            elif isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT_ARGUMENT <= v <= MAX_INT_ARGUMENT:
                raise CheckpointError(
                    f"model card argument {key!r} is {v:,}, above {MAX_INT_ARGUMENT:,}; no model has that many "
                    "(refused before anything is allocated): re-save the checkpoint")
        n = arguments.get("num_classes")
        if isinstance(classes, list) and isinstance(n, int) and n != len(classes):
            raise CardMismatchError(
                f"model card says num_classes {n} but lists {len(classes)} classes; re-save the checkpoint")


def _class(c: ClassInfo | Mapping[str, Any] | tuple[str, str]) -> ClassInfo:
    if isinstance(c, ClassInfo):
        return c
    if isinstance(c, Mapping):
        return ClassInfo(str(c["name"]), str(c["color"]))
    name, color = c
    return ClassInfo(str(name), str(color))


def check_inputs(card: ModelCard, inputs_band_names: Mapping[str, Sequence[str]]) -> None:
    """Raise BandMismatchError unless every given modality's band names equal the card's, in order."""
    for modality, bands in inputs_band_names.items():
        expected = card.band_names(modality)
        if tuple(bands) != expected:
            raise BandMismatchError(
                f"modality {modality!r} has bands [{', '.join(bands)}], the model card needs "
                f"[{', '.join(expected)}]; read the card's bands in its order"
            )


# -- local paths and object-storage URLs -----------------------------------------------------------------
_URL_SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "http", "https")


def _is_url(path: str | os.PathLike[str]) -> bool:
    return isinstance(path, str) and path.split("://", 1)[0].lower() in _URL_SCHEMES and "://" in path


def _url_join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def _url_object(url: str) -> tuple[Any, str]:
    from obstore.store import from_url

    folder, _, name = url.rstrip("/").rpartition("/")
    return from_url(folder), name


def _url_read(url: str) -> bytes | None:
    """The object at ``url``, or None when there is none; other failures raise CheckpointError."""
    import obstore
    from obstore.exceptions import BaseError, NotFoundError

    try:
        client, name = _url_object(url)
        return bytes(obstore.get(client, name).bytes())
    except (FileNotFoundError, NotFoundError):
        return None
    except (BaseError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(f"cannot read {url}: {first}; check the URL and the AWS_*/GOOGLE_*/AZURE_* "
                              "environment") from None


def _url_write(url: str, data: bytes) -> None:
    import obstore
    from obstore.exceptions import BaseError

    try:
        client, name = _url_object(url)
        obstore.put(client, name, data)  # one PUT: atomic
    except (BaseError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(f"cannot write {url}: {first}; check the bucket and credentials") from None


def _card_location(path: str | os.PathLike[str]) -> tuple[str | Path, str | Path]:
    """(card file, checkpoint directory) of a checkpoint directory or its card.json, path or URL."""
    if _is_url(path):
        url = str(path).rstrip("/")
        if url.endswith("/" + CARD_FILE):
            return url, url[: -len(CARD_FILE) - 1]
        return _url_join(url, CARD_FILE), url
    p = Path(path)
    return (p / CARD_FILE, p) if p.is_dir() else (p, p.parent)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read the card of a checkpoint directory (or a card.json path, or their URLs) without the weights."""
    card_path, _ = _card_location(path)
    if isinstance(card_path, str):
        raw = _url_read(card_path)
        if raw is None:
            raise CheckpointError(f"no {CARD_FILE} at {path}; give a checkpoint directory written by save_checkpoint")
    elif not card_path.is_file():
        raise CheckpointError(
            f"no {CARD_FILE} at {path}; give a checkpoint directory written by save_checkpoint"
        )
    elif card_path.stat().st_size > MAX_CARD_BYTES:  # a card is kilobytes: refuse before reading it whole
        raise CheckpointError(f"{card_path} is {card_path.stat().st_size:,} bytes, above the {MAX_CARD_BYTES:,}-byte "
                              "bound of a model card; re-save the checkpoint")
    try:
        data = json.loads(raw.decode("utf-8") if isinstance(card_path, str) else card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {card_path}: {exc}; re-save the checkpoint") from None
    except RecursionError:  # nesting past the parser's limit
        raise CheckpointError(f"{card_path} is nested too deeply to be a model card; re-save the checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{card_path} is not a JSON object; re-save the checkpoint")
    return ModelCard.from_dict(data)


def save_checkpoint(model: MultiModalSegmenter, path: str | os.PathLike[str], card: ModelCard) -> ModelCard:
    """Write ``model.safetensors`` and ``card.json`` into directory ``path``; returns the saved card.

    The card must describe the model (see :meth:`ModelCard.for_model`); its ``weights_sha256`` is filled in.
    """
    from safetensors.torch import save_file

    if card.architecture != model.architecture or _jsonable(model.arguments) != card.arguments:
        raise CardMismatchError(
            f"card says {card.architecture} {card.arguments}, the model is {model.architecture} {model.arguments}"
        )
    card.check_model(model)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if _is_url(path):
        return _save_to_url(str(path).rstrip("/"), state, card)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tmp_w = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp_w), metadata={"architecture": card.architecture, "format": "pt"})
    os.replace(tmp_w, out / WEIGHTS_FILE)
    saved = ModelCard(
        architecture=card.architecture,
        arguments=card.arguments,
        modalities=card.modalities,
        classes=card.classes,
        training=card.training,
        weights_sha256=_sha256_file(out / WEIGHTS_FILE),
    )
    tmp_c = out / (CARD_FILE + ".tmp")
    tmp_c.write_text(json.dumps(saved.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp_c, out / CARD_FILE)
    log.info("saved checkpoint %s (%s, hash %s)", out, card.architecture, saved.model_hash[:12])
    return saved


def _save_to_url(url: str, state: dict[str, Any], card: ModelCard) -> ModelCard:
    """:func:`save_checkpoint` to object storage: the weights PUT, then the card PUT (the commit point)."""
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:  # save_file, as on disk: the same bytes (and hash) as a local save
        save_file(state, f"{tmp}/{WEIGHTS_FILE}", metadata={"architecture": card.architecture, "format": "pt"})
        weights = Path(tmp, WEIGHTS_FILE).read_bytes()
    _url_write(_url_join(url, WEIGHTS_FILE), weights)
    saved = ModelCard(architecture=card.architecture, arguments=card.arguments, modalities=card.modalities,
                      classes=card.classes, training=card.training,
                      weights_sha256=hashlib.sha256(weights).hexdigest())
    _url_write(_url_join(url, CARD_FILE), (json.dumps(saved.to_dict(), indent=2, allow_nan=False) + "\n").encode())
    log.info("saved checkpoint %s (%s, hash %s)", url, card.architecture, saved.model_hash[:12])
    return saved


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[MultiModalSegmenter, ModelCard]:
    """Load a checkpoint directory: build the model from the card, fill in the weights, eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    from sgma_model.registry import create_model

    card = read_card(path)
    _, base = _card_location(path)  # a directory or its card.json
    if isinstance(base, str):
        weights: str | Path = _url_join(base, WEIGHTS_FILE)
        raw = _url_read(weights)
        missing = raw is None
    else:
        weights, raw = base / WEIGHTS_FILE, None
        missing = not weights.is_file()
    if missing:
        raise CheckpointError(
            f"no {WEIGHTS_FILE} in {path}; give a checkpoint directory written by save_checkpoint"
        )
    digest = hashlib.sha256(raw).hexdigest() if raw is not None else _sha256_file(weights)  # type: ignore[arg-type]
    if card.weights_sha256 is not None and digest != card.weights_sha256:
        raise CardMismatchError(
            f"{weights} does not match the sha256 in its card; the files come from different saves"
        )
    try:
        if raw is not None:
            state = {k: v.to(map_location) for k, v in load(raw).items()}
        else:
            state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights} as safetensors: {exc}") from None
    try:
        model = create_model(card.architecture, **card.arguments)
    except (TypeError, ValueError) as exc:  # arguments the architecture does not take
        raise CardMismatchError(f"card arguments do not fit {card.architecture}: {exc}") from None
    card.check_model(model)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise CardMismatchError(f"tensor {name!r} of {card.architecture} is missing from {weights}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CardMismatchError(
                f"tensor {name!r} has shape {tuple(state[name].shape)} in {weights}, "
                f"{card.architecture} needs {tuple(tensor.shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CardMismatchError(f"tensor {extra[0]!r} in {weights} is not part of {card.architecture}")
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    return model, card
