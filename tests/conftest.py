"""Shared fixtures: one session-scoped local Ray cluster (tests only turn token auth off), the tiny
S1 + DEM archive and untrained checkpoint of ``tests/integration/run_archive.py``, and the demo archive
generated once per session.

Tiers (markers declared in pyproject.toml): every test under ``tests/integration/`` is marked
``integration`` here; a test under ``tests/unit/`` that leaves the process (a subprocess, a server, Ray,
kubectl), builds COG archives or trains a model carries ``integration`` in its own file, so
``pytest -m "not integration"`` is the pure unit tier (under a minute on 2 idle cores). ``slow`` marks
heavy CPU work (training, backbone-sized models, large stores), in-process or not: a ``slow`` test is in
the integration tier too (marked here), so the unit tier leaves it out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parent / "integration"
sys.path.insert(0, str(INTEGRATION))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``integration`` every test under tests/integration/ (a file there needs no marker of its own)
    and every ``slow`` test, so that ``-m "not integration"`` leaves both out."""
    for item in items:
        if INTEGRATION in Path(item.path).resolve().parents or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 2 CPUs and no dashboard, shut down at the end of the session."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A fresh tiny archive per module (``items.json``): a module may add scenes to its own."""
    import run_archive

    return run_archive.build_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained ``sgma_tiny`` checkpoint (seed 0); read-only, so one per session."""
    import run_archive

    return run_archive.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def demo_cache_home(tmp_path_factory) -> Path:
    """An ``XDG_CACHE_HOME`` whose ``sgma-batch/`` holds the demo archive, generated once per session.

    Pass it as ``XDG_CACHE_HOME`` to a command that defaults to the demo archive, or use
    ``ensure_demo_archive(demo_cache_home / "sgma-batch")``. Shared by the session: do not write into it.
    """
    from sgma_batch.synthetic import ensure_demo_archive

    home = tmp_path_factory.mktemp("xdg-cache")
    ensure_demo_archive(home / "sgma-batch")
    return home
