"""The container images, checked offline with Docker's own Dockerfile parser (``dockerfile`` package), the
pinned dependency list against the environment the tests run in, and the GPU smoke test."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGES = {"Dockerfile": "rayproject/ray:2.60.0-py311-cu128", "Dockerfile.cpu": "rayproject/ray:2.60.0-py311-cpu"}


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
    cmds = _commands(name)
    froms = [c for c in cmds if c.cmd == "FROM"]
    assert [f.value[0] for f in froms] == ["${BASE_IMAGE}"]
    # the default is the tag; a digest pin comes in as --build-arg BASE_IMAGE=...@sha256:... (README, step 1)
    arg = next(c.value[0] for c in cmds if c.cmd == "ARG" and c.value[0].startswith("BASE_IMAGE="))
    assert arg == f"BASE_IMAGE={IMAGES[name]}"
    text = (DEPLOY / name).read_text()
    assert f"--build-arg BASE_IMAGE={IMAGES[name]}@sha256:" in text


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dependencies_are_installed_before_the_sources_are_copied(name: str) -> None:
    """A code edit rebuilds only the last layer: nothing of the package is copied before the pinned install."""
    cmds = list(_commands(name))
    deps = next(i for i, c in enumerate(cmds) if c.cmd == "RUN" and "-r /home/ray/constraints.txt" in c.original)
    copies = [(i, c.value[0]) for i, c in enumerate(cmds) if c.cmd == "COPY"]
    assert [src for i, src in copies if i < deps] == ["deploy/constraints.txt"]
    package = next(i for i, c in enumerate(cmds) if c.cmd == "RUN" and "--no-deps" in c.original)
    assert package > max(i for i, _ in copies)
    assert "pip check" in cmds[package].original  # the finished environment is consistent


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
        # one CUDA stack: torch's wheel index is the base image's CUDA, and the build checks both agree
        tag = _resolve_args(cmds, index).removeprefix("https://download.pytorch.org/whl/")
        base_cuda = IMAGES[name].rsplit("-", 1)[1]
        assert tag == base_cuda == "cu128", (tag, base_cuda)
        run = " ".join(c.original for c in cmds if c.cmd == "RUN" and "torch.version.cuda" in c.original)
        assert "CUDA_VERSION" in run and "torch.version.cuda == image" in run
        assert "torch.__version__.endswith('+${TORCH_CUDA}')" in run
    else:
        assert index == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_other_install_is_the_pinned_list(name: str) -> None:
    installs = _pip_installs(_commands(name))
    assert ["-r", "/home/ray/constraints.txt"] in installs
    package = [argv for argv in installs if "." in argv]
    assert package and all("--no-deps" in argv and "-c" in argv for argv in package)
    for argv in installs:
        for a in argv:
            if not a.startswith("-") and a not in (".",) and "/" not in a:
                assert "==" in a or "${" in a, f"unpinned requirement {a!r} in {name}"


@pytest.mark.integration  # a subprocess
def test_constraints_are_exactly_what_the_tests_run_with() -> None:
    """deploy/constraints.txt == deploy/pin_constraints.py run in this (tested) environment."""
    proc = subprocess.run([sys.executable, str(DEPLOY / "pin_constraints.py")], capture_output=True, text=True,
                          timeout=120, check=True)
    pinned = (DEPLOY / "constraints.txt").read_text()
    differ = sorted(set(pinned.splitlines()) ^ set(proc.stdout.splitlines()))
    assert differ == [], f"regenerate: python deploy/pin_constraints.py > deploy/constraints.txt ({differ[:6]})"


def test_constraints_pin_every_runtime_dependency_exactly() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = [Requirement(r) for r in project["dependencies"]]
    missing = [r.name for r in direct if canonicalize_name(r.name) not in pins and r.name != "torch"]
    assert missing == []
    assert pins["ray"] == "2.60.0" and "torch" not in pins
    for r in direct:  # each pin satisfies pyproject's range
        if r.name != "torch":
            assert r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True), (r, pins[r.name])


# -- the GPU smoke test -----------------------------------------------------------------------------------
SMOKE = DEPLOY / "kuberay" / "smoke-test"


@pytest.mark.integration  # a subprocess
def test_the_smoke_script_runs_one_bf16_batch_of_the_shipped_model() -> None:
    proc = subprocess.run([sys.executable, str(SMOKE / "gpu_smoke.py"), "--device", "cpu", "--batch", "1",
                           "--px", "64"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["dtype"] == "torch.bfloat16" and out["batch"][0] == 1 and out["modalities"]


@pytest.mark.integration  # a subprocess
def test_the_smoke_script_refuses_a_cpu_build_on_the_gpu_path() -> None:
    import torch

    proc = subprocess.run([sys.executable, str(SMOKE / "gpu_smoke.py")], capture_output=True, text=True, timeout=300,
                          check=False)
    if torch.version.cuda is None:
        assert proc.returncode == 1 and "CPU build" in proc.stderr
    else:  # a CUDA build here: it passes only with a GPU
        assert (proc.returncode == 0) == torch.cuda.is_available()


def test_the_smoke_job_is_restricted_asks_for_one_gpu_and_uses_the_production_image() -> None:
    from test_deploy_manifests import render, restricted_violations, validate_builtin

    docs = render(SMOKE)
    job = next(d for d in docs if d["kind"] == "Job")
    validate_builtin(job)
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    prod = render(DEPLOY / "kuberay" / "overlays" / "production")
    gpu_images = {ct["image"] for d in prod if d["kind"] == "RayCluster"
                  for g in d["spec"]["workerGroupSpecs"] for ct in g["template"]["spec"]["containers"]
                  if "sgma-batch" in ct["image"]}
    assert gpu_images == {c["image"]}
    script = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert script["gpu_smoke.py"] == (SMOKE / "gpu_smoke.py").read_text()
    assert c["command"][-1].endswith("/" + next(iter(script)))
    readme = (DEPLOY / "README.md").read_text()
    assert readme.index("kubectl apply -k deploy/kuberay/smoke-test") < \
        readme.index("kubectl apply -k deploy/kuberay/overlays/production")  # the operator runs it first


def test_a_broken_dockerfile_fails_these_checks(tmp_path: Path) -> None:
    """Test the test: unpinned torch and a root user are caught."""
    bad = (DEPLOY / "Dockerfile").read_text().replace('"torch==${TORCH_VERSION}"', "torch")
    assert bad != (DEPLOY / "Dockerfile").read_text()
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
