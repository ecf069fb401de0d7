"""Copernicus DEM (GLO-30 / GLO-90) profile: one ``elevation`` band in metres."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sgma_batch.scenes import DEM_BANDS, Scene
from sgma_batch.sensors.base import SensorProfile


class DEMGlo30Profile(SensorProfile):
    """Copernicus DEM conventions: asset ``data`` (float32 metres); a nodata value when the catalogue gives one."""

    name = "dem-glo30"
    modality = "dem"
    bands = DEM_BANDS
    collections = ("cop-dem-glo-30", "cop-dem-glo-90", "nasadem", "alos-dem")

    def asset_keys(self, item: Mapping[str, Any]) -> dict[str, str]:
        assets = item.get("assets") or {}
        for key in ("data", "elevation", "dem", "DEM"):
            if key in assets:
                return {"elevation": key}
        data_keys = sorted(k for k, a in assets.items() if "data" in (a.get("roles") or []))
        return {"elevation": data_keys[0]} if len(data_keys) == 1 else {}

    def harmonise(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Elevation in metres; nodata and non-finite are invalid."""
        data, valid = self._stack(scene, arrays, np.float32)  # (1, H, W)
        return self._zero_invalid(data, valid), valid
