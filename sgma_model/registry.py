"""Registry of named model constructors and the one factory ``create_model``.

Names are ``<kind>_<size>`` with kinds ``sgma`` (SGF + MAS), ``sgf_only`` (SGF, no MAS), ``mas_only``
(mean fusion + MAS sampling uniformly over present modalities, since mean fusion's robustness is
uniform), ``mean_fusion`` and ``concat_fusion``, and sizes ``tiny``, ``small``, ``base`` — so the paper's
2x2 ablation runs from names alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sgma_model.encoder import ENCODER_SIZES
from sgma_model.errors import UnknownModelError
from sgma_model.model import MultiModalSegmenter

ModelFn = Callable[..., MultiModalSegmenter]

_REGISTRY: dict[str, ModelFn] = {}

DEFAULT_MODALITIES: Mapping[str, int] = {"s2": 10, "s1": 2, "dem": 1}
DECODER_DIMS: Mapping[str, int] = {"tiny": 128, "small": 256, "base": 512}

# kind -> (fusion, mas, mas_sampling); the sampling rule only matters where mas is True
KINDS: Mapping[str, tuple[str, bool, str]] = {
    "sgma": ("sgf", True, "softmin"),
    "sgf_only": ("sgf", False, "softmin"),
    "mas_only": ("mean", True, "uniform"),
    "mean_fusion": ("mean", False, "softmin"),
    "concat_fusion": ("concat", False, "softmin"),
}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register a constructor under ``name``."""

    def deco(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    modalities: Mapping[str, int] | None = None,
    num_classes: int = 7,
    **kwargs: Any,
) -> MultiModalSegmenter:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        modalities: modality name -> band count, in model order (default s2:10, s1:2, dem:1).
        num_classes: K.
        **kwargs: extra constructor arguments (e.g. ``decoder_dim``, ``dropout``, ``head_dim``).
    """
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    mods = {str(k): int(v) for k, v in (modalities or DEFAULT_MODALITIES).items()}
    model = fn(modalities=mods, num_classes=int(num_classes), **kwargs)
    model.architecture = name
    model.arguments = {"modalities": mods, "num_classes": int(num_classes), **kwargs}
    return model


def _make(kind: str, size: str) -> ModelFn:
    fusion, mas, sampling = KINDS[kind]

    def build(modalities: Mapping[str, int], num_classes: int, **kwargs: Any) -> MultiModalSegmenter:
        kwargs.setdefault("decoder_dim", DECODER_DIMS[size])
        kwargs.setdefault("mas_sampling", sampling)
        return MultiModalSegmenter(
            modalities, num_classes, ENCODER_SIZES[size], fusion=fusion, mas=mas, **kwargs
        )

    build.__name__ = f"{kind}_{size}"
    build.__doc__ = f"{kind} with the {size} encoder."
    return build


for _kind in KINDS:
    for _size in ENCODER_SIZES:
        register_model(f"{_kind}_{_size}")(_make(_kind, _size))
