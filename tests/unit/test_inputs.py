"""Bounded readers (sgma_batch/inputs.py) and the typed checks of each input kind: AOI files, job specs,
model cards, manifest records, plan guards, --crs. Each bad input is one SgmaError with its exit code."""

from __future__ import annotations

import json
import math
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from sgma_batch.errors import AOIError, PlanTooLargeError, SpecError, StoreCorruptError, UsageError
from sgma_batch.inputs import (
    MAX_PLAN_PERIODS,
    check_plan_size,
    checked_crs,
    json_depth,
    load_json_file,
    load_yaml_file,
    read_text_bounded,
)


def test_only_regular_files_of_bounded_size_are_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening a FIFO for reading would wait for a writer forever
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 10)
    cases = {"/dev/zero": "not a regular file", str(fifo): "not a regular file", str(tmp_path): "directory",
             str(big): "above the 1,024-byte bound", str(binary): "not UTF-8",
             str(tmp_path / "nope"): "No such file"}
    for path, words in cases.items():
        t0 = time.monotonic()
        with pytest.raises(SpecError, match=words) as err:
            read_text_bounded(path, what="job spec", error=SpecError, max_bytes=1024)
        assert err.value.exit_code == 50 and "\n" not in str(err.value) and time.monotonic() - t0 < 2


def test_json_nesting_is_refused_before_the_parser_recurses(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(AOIError, match="nested deeper than 64"):
        load_json_file(deep, what="AOI file", error=AOIError)
    assert json_depth({"a": [[1], {"b": []}]}) == 4 and json_depth(1) == 0
    ok = tmp_path / "ok.json"
    ok.write_text('{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')  # in a string
    assert load_json_file(ok, what="AOI file", error=AOIError)["s"].startswith("[[[")


@pytest.mark.parametrize("text,words", [
    ("a: &x [1, 2]\nb: *x\n", "aliases"),  # the billion-laughs expansion needs aliases
    ("start: 2024-02-30\n", "cannot convert"),
    ("start: 2024-13-01\n", "cannot convert"),
    ("x: " + "[" * 100 + "]" * 100 + "\n", "nested deeper"),
    ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 60)), "nested deeper"),
    ("{unclosed: [1, 2\n", "not valid YAML"),
    ("a: 1\0\n", "NUL"),
])
def test_yaml_specs_without_aliases_impossible_dates_or_deep_nesting(tmp_path, text, words):
    f = tmp_path / "spec.yaml"
    f.write_text(text)
    with pytest.raises(SpecError, match=words) as err:
        load_yaml_file(f, what="job spec", error=SpecError, max_depth=16)
    assert "\n" not in str(err.value)


def _spec(tmp_path: Path, periods: str) -> Path:
    f = tmp_path / "job.yaml"
    f.write_text("aois: [{name: a, bbox: [15.0, 45.1, 15.05, 45.15]}]\n"
                 f"periods: {periods}\nstores: [{{name: s, path: 'out/{{aoi}}_{{period}}.zarr'}}]\n")
    return f


@pytest.mark.parametrize("periods,error,words", [
    ("[{start: 2024-02-30, end: 2024-03-01}]", SpecError, "cannot convert"),
    ("[{start: '10000-01-01', end: '10000-02-01'}]", SpecError, "start"),
    ("[{every: month, start: 0001-01-01, end: 9999-12-31}]", PlanTooLargeError, "time windows"),
    ("[{every: day, start: 2024-01-01, end: 2024-02-01}]", SpecError, "every"),
])
def test_bad_specs_are_one_line_errors(tmp_path, periods, error, words):
    from sgma_batch.reprocess import expand_spec, load_spec

    with pytest.raises(error, match=words) as err:
        spec, base = load_spec(_spec(tmp_path, periods))
        expand_spec(spec, base)
    assert "\n" not in str(err.value)


def test_a_series_that_ends_in_the_last_year_stops_there(tmp_path):
    from sgma_batch.reprocess import expand_spec, load_spec

    spec, base = load_spec(_spec(tmp_path, "[{every: year, start: 9990-01-01, end: 9999-12-31}]"))
    entries = expand_spec(spec, base)
    assert len(entries) == 10 and entries[-1].period.end.year == 9999


def test_plan_guards_refuse_nan_and_infinity():
    for kwargs in ({"pixels": math.nan}, {"tiles": math.inf}, {"periods": MAX_PLAN_PERIODS + 1},
                   {"pixels": 1e300}):
        with pytest.raises(PlanTooLargeError) as err:
            check_plan_size(**kwargs)
        assert err.value.exit_code == 18
    check_plan_size(pixels=1e6, tiles=10, periods=12)


@pytest.mark.parametrize("crs", ["EPSG:999999", "not a crs", "EPSG:4326", "+proj=longlat", "", "x" * 5000])
def test_bad_crs_is_a_usage_error(crs):
    with pytest.raises(UsageError) as err:
        checked_crs(crs)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_good_crs_pass():
    assert checked_crs("EPSG:3035") == "EPSG:3035" and checked_crs(None) is None


def test_run_spec_refuses_nan_and_infinite_numbers():
    from pydantic import ValidationError

    from sgma_batch.run import RunSpec

    for field in ({"res_m": math.nan}, {"res_m": math.inf}, {"max_area_km2": math.nan},
                  {"max_area_km2": -1.0}, {"connect_timeout_s": math.inf}):
        with pytest.raises(ValidationError):
            RunSpec(aoi="1,2,3,4", out="x.zarr", **field)


# -- model cards --------------------------------------------------------------------------------------------
def _card() -> dict:
    from sgma_batch.models import default_checkpoint

    return json.loads((default_checkpoint() / "card.json").read_text())


@pytest.mark.parametrize("edit,words", [
    (lambda c: c["modalities"][0]["bands"][0].update(mean=math.nan), "finite"),
    (lambda c: c["modalities"][0]["bands"][0].update(std=math.inf), "finite"),
    (lambda c: c["modalities"][0]["bands"][0].update(std=0.0), "> 0"),
    (lambda c: c["modalities"][0]["bands"][0].update(mean="12"), "finite"),
    (lambda c: c["arguments"].update(num_classes=10**9), "above 65,536"),
    (lambda c: c["arguments"].update(num_classes=8), "num_classes 8 but lists 7"),
    (lambda c: c["arguments"]["modalities"].update(s2=10**7), "above 65,536"),
    (lambda c: c.update(classes=[]), "0 classes"),
    (lambda c: c.update(classes=[{"name": str(i), "color": "#000000"} for i in range(5000)]), "5000 classes"),
    (lambda c: c.update(training={"x": json.loads("[" * 40 + "]" * 40)}), "nested deeper"),
])
def test_malformed_cards_are_refused_before_any_allocation(tmp_path, edit, words):
    from sgma_model import read_card
    from sgma_model.errors import CheckpointError

    card = _card()
    edit(card)
    (tmp_path / "card.json").write_text(json.dumps(card))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=words) as err:
            read_card(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.exit_code in (30, 31) and "\n" not in str(err.value)
    assert peak < 50 << 20  # refused from the JSON alone: nothing model-sized was allocated


def test_deep_or_huge_card_files_are_refused(tmp_path):
    from sgma_model import read_card
    from sgma_model.errors import CheckpointError

    (tmp_path / "card.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_card(tmp_path)
    with open(tmp_path / "card.json", "wb") as fh:
        fh.truncate(20 << 20)  # sparse: 20 MiB of NULs
    with pytest.raises(CheckpointError, match="bytes, above"):
        read_card(tmp_path)


def test_a_record_nested_past_the_parsers_limit_is_a_corrupt_record():
    from sgma_batch.store.record import TileRecord

    with pytest.raises(StoreCorruptError, match="not JSON"):
        TileRecord.from_json("[" * 100_000, source="manifest record r0_c0.json")
