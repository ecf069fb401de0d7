"""The RayJob entrypoints are the CLI commands deploy/README.md documents, and they exist in the Typer app."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from test_deploy_manifests import rendered

REPO = Path(__file__).resolve().parents[2]
README = REPO / "deploy" / "README.md"


def _readme_commands() -> list[list[str]]:
    """Every `sgma-batch ...` invocation in the README's bash blocks (also after `ray job submit ... --`)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip().rstrip("&").strip()
            if "sgma-batch " not in line:
                continue
            argv = shlex.split(line)
            out.append(argv[argv.index("sgma-batch"):])
    return out


def _entrypoints() -> dict[str, list[str]]:
    """The entrypoint of every RayJob and RayCronJob as kustomize renders them, keyed by kind/name."""
    out = {}
    for overlay in ("production", "raycronjob"):
        for doc in rendered(overlay):
            if doc["kind"] == "RayJob":
                out[f"RayJob/{doc['metadata']['name']}"] = shlex.split(doc["spec"]["entrypoint"])
            elif doc["kind"] == "RayCronJob":
                out[f"RayCronJob/{doc['metadata']['name']}"] = shlex.split(doc["spec"]["jobTemplate"]["entrypoint"])
    return out


def _check_against_app(argv: list[str]) -> None:
    from cli.app import app

    group = typer.main.get_command(app)
    assert argv[0] == "sgma-batch"
    name = argv[1]
    assert name in group.commands, f"`sgma-batch {name}` is not registered (have: {sorted(group.commands)})"
    command = group.commands[name]
    options = {opt for p in command.params if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)}
    flags = [a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")]
    unknown = [f for f in flags if f not in options]
    assert unknown == [], f"`sgma-batch {name}` has no option(s) {unknown}"
    # and click accepts the whole argument list (types, required options, arity)
    ctx = command.make_context(f"sgma-batch {name}", list(argv[2:]), resilient_parsing=False)
    ctx.close()


def test_every_rayjob_entrypoint_is_documented_verbatim() -> None:
    entrypoints = _entrypoints()
    assert set(entrypoints) == {"RayJob/sgma-run", "RayJob/sgma-train", "RayJob/sgma-reprocess-template",
                                "RayCronJob/sgma-reprocess"}
    assert {argv[1] for argv in entrypoints.values()} == {"run", "train", "reprocess"}
    documented = [" ".join(c) for c in _readme_commands()]
    for name, argv in entrypoints.items():
        assert " ".join(argv) in documented, f"{name}: entrypoint not in deploy/README.md"


@pytest.mark.parametrize("argv", _readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_every_documented_command_exists_with_its_flags(argv: list[str]) -> None:
    _check_against_app(argv)


def test_the_check_catches_a_wrong_flag() -> None:
    argv = _entrypoints()["RayJob/sgma-reprocess-template"]
    _check_against_app(argv)
    with pytest.raises(AssertionError, match="no option"):
        _check_against_app([*argv, "--break-locks"])
    with pytest.raises(AssertionError, match="not registered"):
        _check_against_app(["sgma-batch", "reprocesss", "--spec", "x"])
