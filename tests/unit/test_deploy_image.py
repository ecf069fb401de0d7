"""The container images, checked offline with Docker's own Dockerfile parser (``dockerfile`` package)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import dockerfile
import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGES = {"Dockerfile": "rayproject/ray:2.60.0-py311-gpu", "Dockerfile.cpu": "rayproject/ray:2.60.0-py311-cpu"}


def _commands(name: str) -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DEPLOY / name))


def _pip_installs(cmds) -> list[list[str]]:
    """Every ``pip install`` in RUN instructions, as argument lists (after ``install``)."""
    out = []
    for cmd in cmds:
        if cmd.cmd != "RUN":
            continue
        lexer = shlex.shlex(" ".join(cmd.value), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):  # a shell separator ends one command
                if argv[:2] == ["pip", "install"]:
                    out.append(argv[2:])
                argv = []
            else:
                argv.append(token)
    return out


def _resolve_args(cmds, text: str) -> str:
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1] for c in cmds if c.cmd == "ARG" and "=" in c.value[0]}
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_base_image_is_the_pinned_ray_image(name: str) -> None:
    froms = [c for c in _commands(name) if c.cmd == "FROM"]
    assert [f.value[0] for f in froms] == [IMAGES[name]]
    assert not froms[0].value[0].endswith(":latest")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_runs_as_a_non_root_user(name: str) -> None:
    users = [c.value[0] for c in _commands(name) if c.cmd == "USER"]
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0")
    # files are copied for that user, not root
    for c in _commands(name):
        if c.cmd == "COPY":
            assert any(f.startswith("--chown=ray") for f in c.flags), c.original


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_torch_is_pinned_to_the_build_for_the_image(name: str) -> None:
    cmds = _commands(name)
    installs = _pip_installs(cmds)
    torch = [_resolve_args(cmds, a) for argv in installs for a in argv if a.startswith("torch")]
    assert torch == ["torch==2.13.0"], torch
    torch_install = next(argv for argv in installs if any(a.startswith("torch") for a in argv))
    index = torch_install[torch_install.index("--index-url") + 1]
    if name == "Dockerfile":
        # "-gpu" is Ray's CUDA 12.1.1 image; torch 2.13.0 has no cu121 build, so a CUDA 12 build is named
        # explicitly and the build checks both the wheel's tag and that its CUDA major is the image's
        tag = _resolve_args(cmds, index).removeprefix("https://download.pytorch.org/whl/")
        assert tag in ("cu126", "cu128", "cu129"), index  # CUDA 12 builds that torch 2.x ships; never cu121
        run = " ".join(c.original for c in cmds if c.cmd == "RUN" and "torch.version.cuda" in c.original)
        assert "CUDA_VERSION" in run and "torch.version.cuda.split('.')[0] == image" in run
        assert "torch.__version__.endswith('+${TORCH_CUDA}')" in run
    else:
        assert index == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_other_install_is_constrained_by_the_pinned_list(name: str) -> None:
    installs = _pip_installs(_commands(name))
    package = [argv for argv in installs if "." in argv]
    assert package and all("-c" in argv for argv in package)
    for argv in installs:
        for a in argv:
            if not a.startswith("-") and a not in (".",) and "/" not in a:
                assert "==" in a or "${" in a, f"unpinned requirement {a!r} in {name}"
    copied = [c.value for c in _commands(name) if c.cmd == "COPY"]
    assert any(v[0] == "deploy/constraints.txt" for v in copied)


def test_constraints_pin_every_runtime_dependency_exactly() -> None:
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    direct = [Requirement(r) for r in requires("sgma-batch") if "extra ==" not in r]
    missing = [r.name for r in direct if canonicalize_name(r.name) not in pins and r.name != "torch"]
    assert missing == []
    assert pins["ray"] == "2.60.0" and "torch" not in pins
    for r in direct:  # each pin satisfies pyproject's range
        if r.name != "torch":
            assert r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True), (r, pins[r.name])


def test_a_broken_dockerfile_fails_these_checks(tmp_path: Path) -> None:
    """Test the test: unpinned torch and a root user are caught."""
    bad = (DEPLOY / "Dockerfile").read_text().replace('"torch==${TORCH_VERSION}"', "torch")
    bad = bad.replace("USER ray\nCMD", "USER root\nCMD")
    (tmp_path / "Dockerfile").write_text(bad)
    cmds = dockerfile.parse_file(str(tmp_path / "Dockerfile"))
    assert [c.value[0] for c in cmds if c.cmd == "USER"][-1] == "root"
    assert [a for argv in _pip_installs(cmds) for a in argv if a.startswith("torch")] == ["torch"]


def test_build_context_filter_admits_what_the_copies_need() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/*") for line in ignore if line.startswith("!")}
    for name in IMAGES:
        for c in _commands(name):
            if c.cmd == "COPY":
                assert c.value[0] in allowed, c.value[0]
        assert (DEPLOY / f"{name}.dockerignore").read_text() == "\n".join(ignore) + "\n"
