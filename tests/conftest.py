"""Shared fixtures: one session-scoped local Ray cluster (tests only turn token auth off), and the tiny
S1 + DEM archive and untrained checkpoint of ``tests/integration/run_archive.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))


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
