"""Print ``name==version`` for every runtime dependency of sgma-batch installed in this environment.

Used to regenerate ``deploy/constraints.txt`` from a venv the tests passed in. torch, triton and the
``nvidia-*`` wheels are left out on purpose: the Dockerfiles pick the torch build for their CUDA.
"""

from __future__ import annotations

import importlib.metadata as md

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SKIP_PREFIXES = ("torch", "triton", "nvidia-", "sgma-batch")
EXTRA: tuple[str, ...] = ()  # extra packages to pin beside sgma-batch


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``roots`` and everything they require (with the extras they ask for)."""
    seen: dict[tuple[str, tuple[str, ...]], str] = {}
    stack = [(r, ()) for r in roots]
    while stack:
        name, extras = stack.pop()
        key = (canonicalize_name(name), tuple(sorted(extras)))
        if key in seen:
            continue
        try:
            dist = md.distribution(key[0])
        except md.PackageNotFoundError:
            continue
        seen[key] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                stack.append((req.name, tuple(req.extras)))
    return {name: version for (name, _), version in seen.items()}


def main() -> None:
    pins = closure(("sgma-batch", *EXTRA))
    for name in sorted(pins):
        if not name.startswith(SKIP_PREFIXES):
            print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
