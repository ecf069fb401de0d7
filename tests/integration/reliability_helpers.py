"""Shared pieces of the reliability suite (fault, bad-input and security tests): a seeded checkpoint, the
CLI as a user runs it, store snapshots for bitwise comparison, and process-tree bookkeeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sgma_batch.store import TileRecord, read_manifest

REPO = Path(__file__).resolve().parents[2]
# Tests turn Ray token auth off; a short GDAL HTTP timeout makes injected stalls cost seconds, not minutes.
CLI_ENV = {"RAY_AUTH_MODE": "disabled", "GDAL_HTTP_TIMEOUT": "2", "GDAL_HTTP_CONNECTTIMEOUT": "2"}


def make_checkpoint(path: Path, *, seed: int = 1, modalities: dict[str, int] | None = None) -> Path:
    """A seeded ``sgma_tiny`` checkpoint (safetensors + card) for S2/S1/DEM (or the given modalities)."""
    import torch

    from sgma_model import ModelCard, create_model, save_checkpoint
    from sgma_model.testing import CLASSES, card_modalities

    mods = modalities or {"s2": 10, "s1": 2, "dem": 1}
    torch.manual_seed(seed)
    model = create_model("sgma_tiny", modalities=mods, num_classes=len(CLASSES))
    card_mods = [m for m in card_modalities() if m["name"] in mods]
    save_checkpoint(model, path, ModelCard.for_model(model, card_mods, CLASSES))
    return path


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.app", *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **CLI_ENV, **(extra or {})}


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``sgma-batch ARGS`` in a fresh process, as a user runs it."""
    return subprocess.run(cli_args(*args), capture_output=True, text=True, env=cli_env(env), cwd=REPO,
                          timeout=timeout)


def one_line_error(stderr: str) -> str:
    """The user-facing error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def store_arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of a Zarr store (overviews included), by path: the store's data, for bitwise checks."""
    import zarr

    out: dict[str, np.ndarray] = {}
    root = zarr.open_group(str(store), mode="r")

    def walk(group: Any, prefix: str) -> None:
        for name, arr in group.arrays():
            out[prefix + name] = np.asarray(arr[...])
        for name, sub in group.groups():
            if name != "manifest":
                walk(sub, prefix + name + "/")

    walk(root, "")
    return out


def assert_same_store(a: Path, b: Path) -> None:
    x, y = store_arrays(a), store_arrays(b)
    assert sorted(x) == sorted(y)
    assert {"class", "confidence", "modality_mask", "robustness"} <= set(x)
    for k in x:
        assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), k


def manifest(store: Path) -> dict[str, TileRecord]:
    """The committed tile records of ``store`` by tile id (none when it has no manifest yet)."""
    return read_manifest(store)


def descendants(pid: int) -> list[int]:
    """All live descendant process ids of ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    """Kill the given processes (ones this test started), ignoring those already gone."""
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value (a synchronisation helper, not a timed assert)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise RuntimeError(f"gave up waiting for {what} after {timeout} s")
