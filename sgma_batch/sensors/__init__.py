"""Sensor profiles: one per kind of scene, registered by name; collections map to profiles.

``get_profile("s2-l2a")`` returns the profile; ``profile_for_collection("sentinel-1-rtc")`` the one
that reads a public collection. Register a new kind with :func:`register_profile`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sgma_batch.errors import UnknownCollectionError, UsageError
from sgma_batch.scenes import Scene
from sgma_batch.sensors.base import SensorProfile
from sgma_batch.sensors.dem import DEMGlo30Profile
from sgma_batch.sensors.s1 import S1DbProfile, S1GRDProfile, S1RTCProfile
from sgma_batch.sensors.s2 import SCL_INVALID, S2L1CProfile, S2L2AProfile

__all__ = [
    "SCL_INVALID",
    "SensorProfile",
    "get_profile",
    "list_profiles",
    "profile_for_collection",
    "register_profile",
    "scene_from_item",
]

_PROFILES: dict[str, SensorProfile] = {}


def register_profile(profile: SensorProfile) -> SensorProfile:
    """Add a profile instance to the registry under ``profile.name`` (returns it)."""
    _PROFILES[profile.name] = profile
    return profile


for _cls in (S2L2AProfile, S2L1CProfile, S1RTCProfile, S1DbProfile, S1GRDProfile, DEMGlo30Profile):
    register_profile(_cls())


def list_profiles() -> tuple[str, ...]:
    return tuple(sorted(_PROFILES))


def get_profile(profile: str | SensorProfile | type[SensorProfile]) -> SensorProfile:
    """A profile by name, class or instance; an unknown name fails with the known ones."""
    if isinstance(profile, SensorProfile):
        return profile
    if isinstance(profile, type) and issubclass(profile, SensorProfile):
        return profile()
    try:
        return _PROFILES[profile]
    except KeyError:
        raise UsageError(f"unknown sensor profile {profile!r}; known: {', '.join(list_profiles())}") from None


def profile_for_collection(collection: str) -> SensorProfile:
    """The profile that reads a known public collection id."""
    for prof in _PROFILES.values():
        if collection in prof.collections:
            return prof
    known = sorted(c for p in _PROFILES.values() for c in p.collections)
    raise UnknownCollectionError(
        f"no sensor profile knows collection {collection!r}; known: {', '.join(known)}; or name its profile: "
        f"--collections <modality>={collection}:<profile> (profiles: {', '.join(list_profiles())})"
    )


def scene_from_item(item: Mapping[str, Any], profile: str | SensorProfile | None = None, *, signer: str | None = None) -> Scene:
    """Parse a STAC Item dict with the named profile, or the one its collection implies."""
    prof = get_profile(profile) if profile is not None else profile_for_collection(str(item.get("collection")))
    return prof.scene_from_item(item, signer=signer)
