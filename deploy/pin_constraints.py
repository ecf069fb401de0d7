"""Print ``name==version`` for every runtime dependency of sgma-batch installed in this environment.

Regenerates ``deploy/constraints.txt`` (header included) from the venv the tests passed in; the images install
exactly these versions, and tests/unit/test_deploy_image.py compares the file with this script's output. torch, triton and the
``nvidia-*`` wheels are left out on purpose: the Dockerfiles pick the torch build for their CUDA.
"""

from __future__ import annotations

import importlib.metadata as md

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """# Pinned runtime dependencies of sgma-batch for the container images (pip -c constraints.txt).
# The versions are the ones the test suite runs against (Python 3.11, Ray 2.60.0). torch is not listed:
# each Dockerfile installs torch==2.13.0 from the wheel index matching its CUDA (or the CPU index).
# Regenerate from the venv the tests ran in: python deploy/pin_constraints.py > deploy/constraints.txt
# (tests/unit/test_deploy_image.py fails when a pin differs from the version installed there).
"""
SKIP_PREFIXES = ("torch", "triton", "nvidia-", "sgma-batch")
EXTRA: tuple[str, ...] = ()  # extra packages to pin beside sgma-batch


def closure(roots: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, str]:
    """Installed versions of ``roots`` (name, extras) and everything they require (with the extras they ask for)."""
    seen: dict[tuple[str, tuple[str, ...]], str] = {}
    stack = list(roots)
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


def project_requirements() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The runtime requirements in pyproject.toml (not the installed metadata, which may be stale)."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return tuple((r.name, tuple(sorted(r.extras))) for r in reqs if r.marker is None or r.marker.evaluate())


def main() -> None:
    pins = closure((*project_requirements(), *((e, ()) for e in EXTRA)))
    print(HEADER, end="")
    for name in sorted(pins):
        if not name.startswith(SKIP_PREFIXES):
            print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
