"""After a run: a permanent asset error that took a modality from every tile is a setup error (63-66), while
anything less (one tile read it, a transient error, no valid data) stays a partial result (exit 3)."""

from __future__ import annotations

from sgma_batch.errors import AssetAccessDeniedError, AssetNotFoundError
from sgma_batch.preflight import setup_error_from_records
from sgma_batch.store.record import TileRecord

NOT_FOUND = "AssetNotFoundError: HTTP response code: 404: not found (404): check the asset URLs in the catalogue"


def _rec(i: int, *, used: tuple[str, ...] = (), errors: dict[str, str] | None = None) -> TileRecord:
    return TileRecord(tile_id=f"r0_c{i}", status="degraded" if errors else "computed", content_hash="h",
                      index=(0, i), region=((0, 16), (16 * i, 16 * i + 16)),
                      scenes={"s1": ("s1-a", "s1-b"), "dem": ("dem-1",)},
                      scenes_used={"dem": ("dem-1",), **({"s1": used} if used else {})},
                      modalities=("dem", *(("s1",) if used else ())), errors=errors or {})


def test_a_404_in_every_tile_is_a_setup_error():
    recs = [_rec(i, errors={"s1/s1-a": NOT_FOUND, "s1/s1-b": NOT_FOUND}) for i in range(3)]
    err = setup_error_from_records(recs)
    assert isinstance(err, AssetNotFoundError) and err.exit_code == 63
    assert str(err).startswith("s1: every one of the 3 tiles that needed it failed to read it for good (HTTP "
                               "response code: 404") and "\n" not in str(err)


def test_access_refused_keeps_its_own_code():
    denied = "AssetAccessDeniedError: HTTP response code: 403: access refused (401/403): give credentials"
    err = setup_error_from_records([_rec(i, errors={"s1/s1-a": denied}) for i in range(2)])
    assert isinstance(err, AssetAccessDeniedError) and err.exit_code == 64


def test_one_tile_that_read_it_keeps_the_partial_result():
    recs = [_rec(0, errors={"s1/s1-a": NOT_FOUND}), _rec(1, used=("s1-b",), errors={"s1/s1-a": NOT_FOUND})]
    assert setup_error_from_records(recs) is None


def test_transient_or_data_errors_are_not_setup_errors():
    transient = "RasterioIOError: HTTP response code: 503"
    assert setup_error_from_records([_rec(i, errors={"s1/s1-a": transient}) for i in range(2)]) is None
    mixed = [_rec(0, errors={"s1/s1-a": NOT_FOUND}), _rec(1, errors={"s1/s1-a": NOT_FOUND, "s1/s1-b": transient})]
    assert setup_error_from_records(mixed) is None
    assert setup_error_from_records([_rec(0), _rec(1)]) is None  # all fine


def test_a_map_projected_grd_names_its_units_in_metadata():
    """A GRD whose raster:bands say dB is passed through as dB (named with s1-grd on a map grid), else linear."""
    import numpy as np

    from sgma_batch.sensors import get_profile

    def item(unit: str | None) -> dict:
        rb = [{"data_type": "float32", **({"unit": unit} if unit else {})}]
        return {"type": "Feature", "id": "g", "collection": "sentinel-1-grd",
                "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
                "bbox": [0, 0, 1, 1],
                "properties": {"datetime": "2024-01-01T00:00:00Z", "proj:epsg": 32631,
                               "proj:transform": [10, 0, 500000, 0, -10, 5000000], "proj:shape": [2, 2]},
                "assets": {p: {"href": f"/x/{p}.tif", "roles": ["data"], "raster:bands": rb} for p in ("vv", "vh")}}

    prof = get_profile("s1-grd")
    db, lin = prof.scene_from_item(item("dB")), prof.scene_from_item(item(None))
    assert db.extra["linear"] is False and lin.extra["linear"] is True
    arrays = {"vv": np.full((2, 2), -12.0), "vh": np.full((2, 2), -19.0)}
    data, valid = prof.harmonise(db, arrays)
    assert valid.all() and np.allclose(data[0], -12.0)  # dB kept, not dropped as "<= 0 linear"
    data, valid = prof.harmonise(lin, {"vv": np.full((2, 2), 0.1), "vh": np.full((2, 2), 0.01)})
    assert valid.all() and np.allclose(data[:, 0, 0], [-10.0, -20.0])


def test_the_level_an_item_states_is_checked_against_the_card():
    """An item that says S2MSI1C is L1C whatever profile reads it: exit 35 for an L2A model, a warning when
    allowed; the item's own S2MSI2A passes."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import pytest

    from sgma_batch.errors import DomainShiftError
    from sgma_batch.preflight import check_domain
    from sgma_batch.sensors import get_profile

    stac = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "stac"
    data = json.loads((stac / "earthsearch_sentinel-2-c1-l2a_10items.json").read_text())
    item = (data["features"] if isinstance(data, dict) else data)[0]
    card = SimpleNamespace(modalities=[SimpleNamespace(name="s2", collection_hint="sentinel-2-c1-l2a")])
    l2a = get_profile("s2-l2a").scene_from_item(item)
    assert check_domain(card, {"s2": [l2a]}) == []
    item = json.loads(json.dumps(item))
    item["properties"]["s2:product_type"] = "S2MSI1C"
    l1c = get_profile("s2-l2a").scene_from_item(item)
    with pytest.raises(DomainShiftError) as exc:
        check_domain(card, {"s2": [l1c]})
    assert exc.value.exit_code == 35 and "are L1C" in str(exc.value) and "--allow-domain-shift" in str(exc.value)
    assert len(check_domain(card, {"s2": [l1c]}, allow_domain_shift=True)) == 1


def test_units_against_the_data():
    """dB under a linear profile, linear under the dB profile, and S2 reflectance already in 0-1 are unit
    errors naming the fix; values that fit the profile pass."""
    from datetime import UTC, datetime

    import numpy as np
    import pytest

    from sgma_batch.errors import UnitMismatchError
    from sgma_batch.preflight import _check_scene_units
    from sgma_batch.scenes import Scene

    def scene(modality: str, sensor: str, linear: bool | None = None) -> Scene:
        extra = {} if linear is None else {"linear": linear}
        return Scene(id="x", collection="c", modality=modality, sensor=sensor, datetime=datetime(2024, 1, 1, tzinfo=UTC),
                     geometry={}, bbox=(0, 0, 1, 1), assets={}, extra=extra)

    rng = np.random.default_rng(0)
    db = rng.normal(-12, 3, 1000)
    linear = 10 ** (db / 10)
    with pytest.raises(UnitMismatchError, match=r"--collections s1=c:s1-db"):
        _check_scene_units(scene("s1", "s1-rtc", True), db)
    with pytest.raises(UnitMismatchError, match=r"--collections s1=c:s1-rtc"):
        _check_scene_units(scene("s1", "s1-db", False), linear)
    with pytest.raises(UnitMismatchError, match="already scaled to 0-1") as exc:
        _check_scene_units(scene("s2", "s2-l2a"), rng.uniform(0, 0.6, 1000))
    assert exc.value.exit_code == 67
    _check_scene_units(scene("s1", "s1-rtc", True), linear)  # fits: no error
    _check_scene_units(scene("s1", "s1-db", False), db)
    _check_scene_units(scene("s2", "s2-l2a"), rng.uniform(100, 6000, 1000))
