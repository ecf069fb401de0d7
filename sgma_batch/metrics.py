"""Tile metrics through Ray's metrics API, scraped by Prometheus from every Ray node (port 8080).

``record_tile(record, px_km2)`` is called once per committed manifest record in the driver (every
executor). Under Ray (``ray.is_initialized()``) it updates, with Ray's ``ray_`` prefix on export:

- ``sgma_batch_tiles`` (counter, tag ``status``: computed, degraded, failed, nodata)
- ``sgma_batch_area_km2`` (counter): area of the committed tiles; ``rate(...[5m]) * 3600`` is km2/h
- ``sgma_batch_km2_per_hour`` (gauge): committed km2 per hour since this run's first tile
- ``sgma_batch_read_seconds`` and ``sgma_batch_model_seconds`` (histograms): per tile, from its timing

Without Ray it does nothing and never imports Ray. ``deploy/kuberay/components/monitoring`` holds the
PodMonitor and the Grafana dashboard that read these.
"""

from __future__ import annotations

import sys
import time
from typing import Any

STATUSES = ("computed", "degraded", "failed", "nodata")
SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]


class _Metrics:
    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tiles = Counter("sgma_batch_tiles", "Tiles committed to the manifest, by status", tag_keys=("status",))
        self.area = Counter("sgma_batch_area_km2", "Area of the committed tiles (km2)")
        self.rate = Gauge("sgma_batch_km2_per_hour", "Committed km2 per hour since the run's first tile")
        self.read_s = Histogram("sgma_batch_read_seconds", "Read time per tile (s)", boundaries=SECONDS_BOUNDARIES)
        self.model_s = Histogram(
            "sgma_batch_model_seconds", "Model (forward + blend) time per tile (s)", boundaries=SECONDS_BOUNDARIES
        )
        self.t0: float | None = None
        self.km2 = 0.0


_metrics: _Metrics | None = None


def _active() -> _Metrics | None:
    """The metrics of this process when Ray is initialised in it, else None (no Ray import)."""
    global _metrics
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def _field(record: Any, name: str) -> Any:
    """``record.name`` of a typed manifest record, or ``record[name]`` of its JSON form."""
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def record_tile(record: Any, px_km2: float) -> None:
    """Count one committed tile: its status, area (``region`` in pixels x ``px_km2``) and timings."""
    m = _active()
    if m is None:
        return
    now = time.monotonic()
    if m.t0 is None:
        m.t0 = now
    status = _field(record, "status")
    m.tiles.inc(1, tags={"status": status if status in STATUSES else "failed"})
    region = _field(record, "region")
    if region:
        (y0, y1), (x0, x1) = region
        km2 = (y1 - y0) * (x1 - x0) * px_km2
        if km2 > 0:
            m.area.inc(km2)
            m.km2 += km2
        m.rate.set(m.km2 / max(now - m.t0, 1.0) * 3600.0)
    timing = _field(record, "timing")
    if timing is not None:
        read_s, infer_s = _field(timing, "read_s"), _field(timing, "infer_s")
        if read_s is not None:
            m.read_s.observe(float(read_s))
        if infer_s is not None:
            m.model_s.observe(float(infer_s))


def reset() -> None:
    """Forget this process's metric objects (a new run in the same process starts its own rate)."""
    global _metrics
    _metrics = None
