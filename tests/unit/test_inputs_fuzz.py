"""Property-based tests (Hypothesis) of every reader of user files: AOI, job spec, model card, manifest
record. The property: whatever the bytes, a reader returns a typed value or raises the SgmaError /
ModelError of its kind (one line, an exit code) - never another exception, never a hang.

Inputs are drawn two ways: structured (JSON/YAML documents built from each format's own vocabulary, so
the draws reach deep into validation) and raw (arbitrary bytes and text).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgma_batch.errors import SgmaError
from sgma_model.errors import ModelError

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["2024-06-01", "2024-02-30", "9999-12-31", "10000-01-01", "EPSG:4326", "NaN", ""]),
)


def json_values(keys: list[str]) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=5),
                                st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), inner, max_size=5)),
        max_leaves=30,
    )


def _one_line(err: BaseException) -> None:
    assert isinstance(getattr(err, "exit_code", None), int)
    assert str(err).strip() and "\n" not in str(err).strip()


def _dump(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, allow_nan=True))


# -- AOI ------------------------------------------------------------------------------------------------------
AOI_KEYS = ["type", "coordinates", "features", "geometry", "geometries", "properties", "bbox", "crs"]
AOI_TYPES = ["Polygon", "MultiPolygon", "Feature", "FeatureCollection", "GeometryCollection", "Point",
             "LineString", "polygon"]
coords = st.recursive(st.floats(min_value=-400, max_value=400) | scalars,
                      lambda inner: st.lists(inner, max_size=6), max_leaves=40)
geometry = st.fixed_dictionaries({"type": st.sampled_from(AOI_TYPES) | scalars, "coordinates": coords})
aoi_docs = st.one_of(
    geometry,
    st.fixed_dictionaries({"type": st.just("Feature"), "geometry": geometry | json_values(AOI_KEYS)}),
    st.fixed_dictionaries({"type": st.just("FeatureCollection"),
                           "features": st.lists(st.fixed_dictionaries({"type": st.just("Feature"),
                                                                       "geometry": geometry}), max_size=3)
                           | json_values(AOI_KEYS)}),
    json_values(AOI_KEYS),
)


def _load_aoi(path: Path) -> None:
    from sgma_batch.aoi import load_aoi

    try:
        aoi = load_aoi(str(path))
    except SgmaError as err:
        _one_line(err)
        assert 10 <= err.exit_code <= 19
        return
    assert aoi.geometry.is_valid and math.isfinite(aoi.area_km2)


@FUZZ
@given(doc=aoi_docs)
def test_aoi_reader_on_structured_documents(tmp_path, doc):
    f = tmp_path / "aoi.geojson"
    _dump(f, doc)
    _load_aoi(f)


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_aoi_reader_on_raw_bytes(tmp_path, data):
    f = tmp_path / "aoi.geojson"
    f.write_bytes(data)
    _load_aoi(f)


# -- job spec -------------------------------------------------------------------------------------------------
SPEC_KEYS = ["aois", "periods", "stores", "name", "path", "bbox", "start", "end", "every", "model", "catalog",
             "tile_px", "res_m", "crs", "zarr_format", "executor"]
period = st.fixed_dictionaries({"start": scalars | st.dates(), "end": scalars | st.dates()},
                               optional={"every": st.sampled_from(["month", "quarter", "year", "day"]),
                                         "name": scalars})
spec_docs = st.one_of(
    st.fixed_dictionaries({
        "aois": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "../x", ""]) | scalars},
                                               optional={"bbox": st.lists(scalars, max_size=5),
                                                         "path": scalars}), max_size=3) | scalars,
        "periods": st.lists(period, max_size=3) | scalars,
        "stores": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["s", "t"]) | scalars,
                                                  "path": st.sampled_from(["o/{aoi}_{period}.zarr", "o/{x}.zarr",
                                                                           "ftp://h/x", ""]) | scalars}),
                           max_size=2) | scalars,
    }, optional={k: scalars for k in ("tile_px", "res_m", "crs", "zarr_format", "executor")}),
    json_values(SPEC_KEYS),
)


def _load_spec(path: Path) -> None:
    from sgma_batch.reprocess import expand_spec, load_spec

    try:
        spec, base = load_spec(path)
        entries = expand_spec(spec, base)
    except SgmaError as err:
        _one_line(err)
        return
    assert all(e.period.start <= e.period.end for e in entries)


@FUZZ
@given(doc=spec_docs)
def test_spec_reader_on_structured_documents(tmp_path, doc):
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(json.loads(json.dumps(doc, default=str)), allow_unicode=True))
    _load_spec(f)


@FUZZ
@given(data=st.binary(max_size=300) | st.text(alphabet=st.characters(codec="utf-8"), max_size=300).map(str.encode))
def test_spec_reader_on_raw_bytes(tmp_path, data):
    f = tmp_path / "job.yaml"
    f.write_bytes(data)
    _load_spec(f)


# -- model card -----------------------------------------------------------------------------------------------
def _good_card() -> dict:
    from sgma_batch.models import default_checkpoint

    return json.loads((default_checkpoint() / "card.json").read_text())


GOOD_CARD = _good_card()


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


CARD_PATHS = _paths(GOOD_CARD)[1:]


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(CARD_PATHS), json_values(["name", "mean", "std", "bands"])),
                      min_size=1, max_size=3))
def test_card_reader_on_mutated_cards(tmp_path, edits):
    from sgma_model import read_card

    card = json.loads(json.dumps(GOOD_CARD))
    for path, value in edits:
        target = card
        try:
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this path
    _dump(tmp_path / "card.json", card)
    try:
        got = read_card(tmp_path)
    except (ModelError, SgmaError) as err:
        _one_line(err)
        assert 30 <= err.exit_code <= 39
        return
    assert all(math.isfinite(b.mean) and math.isfinite(b.std) and b.std > 0
               for m in got.modalities for b in m.bands)
    assert 1 <= len(got.classes) <= 1024


@FUZZ
@given(data=st.binary(max_size=300))
def test_card_reader_on_raw_bytes(tmp_path, data):
    from sgma_model import read_card

    (tmp_path / "card.json").write_bytes(data)
    with pytest.raises((ModelError, SgmaError)) as err:
        read_card(tmp_path)
    _one_line(err.value)


# -- manifest record ------------------------------------------------------------------------------------------
RECORD_KEYS = ["tile_id", "status", "index", "region", "content_hash", "scenes", "modalities", "errors",
               "schema_version", "seconds"]


@FUZZ
@given(doc=json_values(RECORD_KEYS) | st.binary(max_size=200))
def test_manifest_record_reader(doc):
    from sgma_batch.store.record import TileRecord

    text = doc if isinstance(doc, bytes) else json.dumps(doc, allow_nan=True)
    try:
        rec = TileRecord.from_json(text, source="manifest record r0_c0.json")
    except SgmaError as err:
        _one_line(err)
        assert 40 <= err.exit_code <= 49
        return
    assert isinstance(rec.tile_id, str)
