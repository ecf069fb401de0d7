"""The sensor-profile protocol: how one kind of scene is parsed from STAC and harmonised."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from sgma_batch.errors import UnsupportedSceneError
from sgma_batch.scenes import AssetRef, Scene
from sgma_batch.sensors import _items as it

log = logging.getLogger(__name__)


class SensorProfile:
    """Base class of the sensor profiles. Instances are stateless and safe to share across processes.

    Subclasses set ``name``, ``modality``, ``bands`` (canonical data bands in model order),
    ``mask_bands`` (auxiliary categorical bands read for masking, nearest resampling) and
    ``collections`` (the public collection ids they read, in preference order), and implement
    :meth:`asset_keys` and :meth:`harmonise`.

    Harmonised arrays hold physical values (reflectance, dB, metres) as float32; invalid pixels
    are ``False`` in the valid mask and hold 0.0 in the data (never NaN, so they cannot poison a model).
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    bands: ClassVar[tuple[str, ...]]
    mask_bands: ClassVar[tuple[str, ...]] = ()
    collections: ClassVar[tuple[str, ...]] = ()
    auto_select: ClassVar[bool] = True  # may be chosen from a catalogue's collection list unasked
    #: Canonical band of each file band for multi-band assets whose item names no band, by band count
    #: ("" = a band the profile does not read), e.g. the 13 L1C bands of a Sen1Floods11 S2 chip.
    file_band_orders: ClassVar[Mapping[int, tuple[str, ...]]] = MappingProxyType({})
    #: What the scenes are, for the model-card check (``--allow-domain-shift``): processing level and units.
    product: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- parsing -------------------------------------------------------------------------------------
    def asset_keys(self, item: Mapping[str, Any]) -> dict[str, str]:
        """Map canonical band name -> asset key for this item (bands and mask bands found)."""
        raise NotImplementedError

    def extra(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Profile-specific harmonisation facts stored in ``Scene.extra``."""
        return {}

    def canonical_band(self, name: str) -> str | None:
        """The canonical band a catalogue's band name means for this profile (None: not one it reads)."""
        low = name.strip().lower()
        return low if low in (*self.bands, *self.mask_bands) else None

    def band_index(self, item: Mapping[str, Any], key: str, band: str) -> int:
        """1-based band of asset ``key``'s file that holds ``band``: by the asset's band entries' names, else
        by :attr:`file_band_orders` for its band count; 1 for a single-band asset."""
        asset = item["assets"][key]
        entries = it.band_entries(asset)
        if len(entries) <= 1:
            return 1
        for i, entry in enumerate(entries):
            if any(self.canonical_band(n) == band for n in it.band_names(entry)):
                return i + 1
        order = self.file_band_orders.get(len(entries), ())
        if band in order:
            return order.index(band) + 1
        raise UnsupportedSceneError(
            f"asset {key!r} of STAC item {item.get('id')} holds {len(entries)} bands but none is named {band!r}; "
            f"name its bands in eo:bands (or bands) of the item"
        )

    def asset_scale_offset(self, item: Mapping[str, Any], asset: Mapping[str, Any]) -> tuple[float, float]:
        """Scale/offset recorded on the AssetRef. Defaults to identity: :meth:`harmonise` applies units."""
        return 1.0, 0.0

    def scene_from_item(self, item: Mapping[str, Any], *, signer: str | None = None) -> Scene:
        """Normalise one STAC Item (a dict) into a :class:`Scene`.

        Args:
            item: the STAC Item as a JSON mapping, asset hrefs absolute.
            signer: name of the href signer applied at read time (see :mod:`sgma_batch.stac_io`).
        """
        props = item.get("properties") or {}
        keys = self.asset_keys(item)
        missing = [b for b in self.bands if b not in keys]
        if missing:
            raise UnsupportedSceneError(
                f"STAC item {item.get('id')} ({item.get('collection')}) lacks assets for bands {missing} of the "
                f"{self.name} profile; choose another collection with --collections"
            )
        assets: dict[str, AssetRef] = {}
        item_epsg, item_tf, item_shape = it.epsg_of(props), it.transform_of(props), it.shape_of(props)
        for band, key in keys.items():
            raw = item["assets"][key]
            scale, offset = self.asset_scale_offset(item, raw)
            index = self.band_index(item, key, band)
            assets[band] = AssetRef(
                href=raw["href"],
                band=band,
                key=key,
                index=index,
                nodata=it.nodata_of(raw, index),
                scale=scale,
                offset=offset,
                epsg=it.epsg_of(raw) or item_epsg,
                transform=it.transform_of(raw) or item_tf,
                shape=it.shape_of(raw) or item_shape,
            )
        extra = dict(self.extra(item))
        if signer:
            extra["signer"] = signer
        cloud = props.get("eo:cloud_cover")
        return Scene(
            id=str(item["id"]),
            collection=str(item.get("collection") or ""),
            modality=self.modality,
            sensor=self.name,
            datetime=it.item_datetime(item),
            geometry=item["geometry"],
            bbox=it.bbox_of(item),
            assets=it.freeze(assets),
            epsg=item_epsg,
            transform=item_tf,
            shape=item_shape,
            cloud_cover=float(cloud) if isinstance(cloud, (int, float)) else None,
            orbit_state=props.get("sat:orbit_state"),
            updated=props.get("updated"),
            extra=it.freeze(extra),
        )

    # -- use -----------------------------------------------------------------------------------------
    def check_map_grid(self, scene: Scene) -> None:
        """Raise :class:`UnsupportedSceneError` when the scene cannot be put on a map grid."""

    def harmonise(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw arrays as read (band -> (H, W)) -> (data (C, H, W) float32 physical, valid (H, W) bool)."""
        raise NotImplementedError

    # -- shared helpers ------------------------------------------------------------------------------
    def _stack(
        self, scene: Scene, arrays: Mapping[str, np.ndarray], dtype: Any = np.float64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stack ``self.bands`` as ``dtype`` (C, H, W) and the per-band nodata/finite validity (H, W).

        The validity is tested on each band as given (its own dtype), so it does not depend on ``dtype``.
        """
        raw = self._raw_bands(scene, arrays)
        data = np.empty((len(raw), *raw[0].shape), dtype)  # (C, H, W), filled band by band: one pass each
        valid = np.ones(raw[0].shape, bool)  # (H, W)
        for i, (band, a) in enumerate(zip(self.bands, raw, strict=True)):
            data[i] = a
            self._band_valid(scene, band, a, valid)
        return data, valid

    def _raw_bands(self, scene: Scene, arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """``self.bands`` as given, checked to be all there and on one grid."""
        missing = [b for b in self.bands if b not in arrays]
        if missing:
            raise UnsupportedSceneError(f"scene {scene.id}: no arrays for bands {missing} of profile {self.name}")
        raw = [np.asarray(arrays[b]) for b in self.bands]
        shapes = {a.shape for a in raw}
        if len(shapes) != 1:
            raise UnsupportedSceneError(f"scene {scene.id}: bands have different shapes {sorted(shapes)}; read them on one grid")
        return raw

    @staticmethod
    def _band_valid(scene: Scene, band: str, a: np.ndarray, valid: np.ndarray) -> None:
        """Clear ``valid`` (H, W) in place where band ``a`` (as read, its own dtype) is non-finite or nodata."""
        if a.dtype.kind in "fc":
            valid &= np.isfinite(a)
        ref = scene.assets.get(band)
        nodata = ref.nodata if ref is not None else None
        if nodata is not None and np.isfinite(nodata):
            valid &= a != nodata

    @staticmethod
    def _zero_invalid(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Set every band of ``data`` (C, H, W) to 0 where ``valid`` (H, W) is False, in place."""
        np.copyto(data, data.dtype.type(0), where=~valid)
        return data
