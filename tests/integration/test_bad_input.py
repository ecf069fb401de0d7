"""The bad-input catalogue: what a user gets wrong, driven through the real CLI (a fresh process each).

Every case must end with one ``error: ...`` line on stderr (no traceback without ``--debug``), its own
exit code from ``sgma_batch.errors``, nothing on stdout, and an existing store left exactly as it was:
most cases point ``--out`` at a finished store and check it afterwards, byte for byte.
``docs/reliability.md`` lists the same cases with the messages users see.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_helpers as rh
import run_archive

pytestmark = pytest.mark.integration

WINDOW = ["--start", "2024-06-01", "--end", "2024-06-30"]
TILING = ["--tile-px", "128", "--halo-px", "16"]


def _bbox() -> str:
    return ",".join(f"{v:.6f}" for v in run_archive.aoi_lonlat())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """An archive, checkpoints (good and bad), AOI files, and a finished store, built once."""
    root = tmp_path_factory.mktemp("bad")
    w: dict[str, Path] = {"root": root}
    w["catalog"] = run_archive.build_archive(root / "archive")
    w["model"] = rh.make_checkpoint(root / "model")
    # a checkpoint whose card describes other weights (4 classes; the weights have 7)
    w["mismatched"] = root / "mismatched"
    shutil.copytree(w["model"], w["mismatched"])
    card = json.loads((w["mismatched"] / "card.json").read_text())
    card["arguments"]["num_classes"] = 4
    card["classes"] = card["classes"][:4]
    (w["mismatched"] / "card.json").write_text(json.dumps(card))
    # a model trained for optical only: the archive has S1 and DEM
    w["s2only"] = rh.make_checkpoint(root / "s2only", modalities={"s2": 10})
    # a model whose S1 input has 3 bands (vv, vh, and one the sensor does not have)
    w["threeband"] = _three_band_s1_model(root / "threeband")
    # a model with other classes than the existing store
    w["otherclasses"] = _other_classes_model(root / "otherclasses")
    # AOI files
    (root / "notjson.geojson").write_text("{this is not json")
    (root / "empty.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    (root / "nogeom.geojson").write_text(json.dumps({"type": "Feature", "geometry": None, "properties": {}}))
    (root / "around-pole.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [  # wraps 360°
        [[-180, 89], [-60, 89], [60, 89], [179, 89], [-180, 89]]]}))
    (root / "projected.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [
        [[500300, 4999800], [503500, 4999800], [503500, 4997600], [500300, 4997600], [500300, 4999800]]]}))
    (root / "notgeojson.json").write_text(json.dumps({"name": "my field", "coords": [1, 2]}))
    (root / "a-file").write_text("not a directory")
    # corrupt COGs: both S1 scenes' VV assets overwritten with garbage (the DEM is fine)
    w["corrupt"] = _archive_copy(w["catalog"], root / "corrupt")
    for f in ("s1-a_vv.tif", "s1-b_vv.tif"):
        (w["corrupt"].parent / f).write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    # NaN-only bands: every asset holds only NaN / nodata
    w["nan"] = _archive_copy(w["catalog"], root / "nan")
    for tif in w["nan"].parent.glob("*.tif"):
        with rasterio.open(tif, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
            ds.write(np.full((ds.height, ds.width), np.nan, np.float32), 1)
    # a finished store that every other case must leave untouched
    w["store"] = root / "good.zarr"
    r = rh.cli("run", "--aoi", _bbox(), *WINDOW, "--catalog", str(w["catalog"]), "--model", str(w["model"]),
               *TILING, "--out", str(w["store"]), "--sequential", "--json")
    assert r.returncode == 0, r.stderr
    return w


def _archive_copy(catalog: Path, dest: Path) -> Path:
    shutil.copytree(catalog.parent, dest)
    return dest / catalog.name


def _three_band_s1_model(path: Path) -> Path:
    import torch

    from sgma_model import ModelCard, create_model, save_checkpoint
    from sgma_model.testing import CLASSES, card_modalities

    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities={"s1": 3, "dem": 1}, num_classes=len(CLASSES))
    mods = [m for m in card_modalities() if m["name"] in ("s1", "dem")]
    mods[0] = {**mods[0], "bands": [*mods[0]["bands"], {"name": "angle", "common_name": "angle", "mean": 0.0,
                                                            "std": 1.0}]}
    save_checkpoint(model, path, ModelCard.for_model(model, mods, CLASSES))
    return path


def _other_classes_model(path: Path) -> Path:
    import torch

    from sgma_model import ModelCard, create_model, save_checkpoint
    from sgma_model.testing import CLASSES, card_modalities

    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2, "dem": 1}, num_classes=2)
    save_checkpoint(model, path, ModelCard.for_model(model, card_modalities(), [("dry", "#bfa27a"),
                                                                                  ("water", "#1f78b4")]))
    return path


def _snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _fresh(w: dict[str, Path], name: str) -> list[str]:
    return ["--out", str(w["root"] / f"{name}.zarr")]


# (case id, argument builder, exit code, a fragment of the one-line message)
CASES = [
    ("aoi-missing-file", lambda w: ["--aoi", str(w["root"] / "nope.geojson")], 10, "cannot read AOI file"),
    ("aoi-not-json", lambda w: ["--aoi", str(w["root"] / "notjson.geojson")], 11, "is not JSON"),
    ("aoi-json-not-geojson", lambda w: ["--aoi", str(w["root"] / "notgeojson.json")], 11, "not GeoJSON"),
    ("aoi-empty-collection", lambda w: ["--aoi", str(w["root"] / "empty.geojson")], 12, "no features"),
    ("aoi-null-geometry", lambda w: ["--aoi", str(w["root"] / "nogeom.geojson")], 12, "null geometry"),
    ("aoi-projected-no-crs", lambda w: ["--aoi", str(w["root"] / "projected.geojson")], 14, "CRS84"),
    ("aoi-over-size-guard", lambda w: ["--aoi", "5,40,25,55"], 15, "guard"),
    ("aoi-around-pole", lambda w: ["--aoi", str(w["root"] / "around-pole.geojson")], 16, "pole"),
    ("dates-invalid", lambda w: ["--start", "2024-13-45"], 22, "cannot parse time"),
    ("dates-reversed", lambda w: ["--start", "2024-07-01", "--end", "2024-06-01"], 22, "before it starts"),
    ("search-empty", lambda w: ["--start", "2031-01-01", "--end", "2031-01-31"], 4, "no scenes"),
    ("catalog-missing", lambda w: ["--catalog", str(w["root"] / "nope.json")], 20, "does not exist"),
    ("collection-unknown", lambda w: ["--collections", "s1=sentinel-1-nope"], 21, "sentinel-1-nope"),
    ("model-missing", lambda w: ["--model", str(w["root"] / "no-model")], 30, "no-model"),
    # a model that does not fit must be refused before a new store is created
    ("model-card-mismatch", lambda w: ["--model", str(w["mismatched"]), *_fresh(w, "m1")], 31, "needs"),
    ("model-band-count", lambda w: ["--model", str(w["threeband"]), *_fresh(w, "m2")], 32, "angle"),
    ("model-other-modalities", lambda w: ["--model", str(w["s2only"]), *_fresh(w, "m3")], 33, "offers only"),
    ("store-other-grid", lambda w: ["--res", "20"], 40, "different layout"),
    ("store-other-classes", lambda w: ["--model", str(w["otherclasses"])], 40, "different layout"),
    ("out-unwritable", lambda w: ["--out", str(w["root"] / "a-file" / "m.zarr")], 41, "writable"),
    ("usage-tile-px", lambda w: ["--tile-px", "100"], 2, "multiple of 16"),
    ("usage-zarr-format", lambda w: ["--zarr-format", "5"], 2, "zarr-format"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code_and_loses_nothing(world, case):
    case_id, build, code, fragment = case
    before = _snapshot(world["store"])
    base = {"--aoi": _bbox(), "--start": WINDOW[1], "--end": WINDOW[3], "--catalog": str(world["catalog"]),
            "--model": str(world["model"]), "--out": str(world["store"]), "--tile-px": "128", "--halo-px": "16"}
    extra = build(world)
    for k, v in zip(extra[::2], extra[1::2]):
        base[k] = v
    args = [x for kv in base.items() for x in kv]
    r = rh.cli("run", *args, "--sequential", "--json")
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    line = rh.one_line_error(r.stderr)
    print(f"CASE {case_id} | {code} | {line}")  # shown with -rP: the table in docs/reliability.md
    assert fragment in line, line
    assert len(line) < 400 and r.stdout == ""
    assert _snapshot(world["store"]) == before  # nothing already written is lost or changed
    if base["--out"] != str(world["store"]):
        assert not Path(base["--out"]).exists()


def test_debug_shows_the_traceback(world):
    r = rh.cli("--debug", "run", "--aoi", str(world["root"] / "notjson.geojson"), "--out",
               str(world["root"] / "x.zarr"), "--sequential")
    assert r.returncode != 0 and "Traceback" in r.stderr and "AOINotGeoJSONError" in r.stderr


def test_corrupt_cogs_degrade_the_tiles_and_name_the_assets(world, tmp_path):
    out = tmp_path / "corrupt.zarr"
    r = rh.cli("run", "--aoi", _bbox(), *WINDOW, "--catalog", str(world["corrupt"]), "--model",
               str(world["model"]), "--tile-px", "256", "--halo-px", "16", "--out", str(out), "--sequential",
               "--json")
    assert r.returncode == 3, r.stderr[-3000:]  # partial: mapped from the DEM, S1 recorded absent
    assert "Traceback" not in r.stderr
    s = json.loads(r.stdout)
    assert s["degraded"] == s["tiles"] and s["failed"] == 0
    for rec in rh.manifest(out).values():
        assert rec.modalities == ("dem",)
        assert {"s1/s1-a", "s1/s1-b"} <= set(rec.errors), rec.errors


def test_nan_only_bands_are_an_error_not_an_empty_map(world, tmp_path):
    out = tmp_path / "nan.zarr"
    r = rh.cli("run", "--aoi", _bbox(), *WINDOW, "--catalog", str(world["nan"]), "--model", str(world["model"]),
               *TILING, "--out", str(out), "--sequential", "--json")
    assert r.returncode == 62, r.stderr[-3000:]
    line = rh.one_line_error(r.stderr)
    assert "no valid pixel" in line
    # the tiles are recorded (a rerun with fixed data recomputes them), none of them claims a class
    recs = rh.manifest(out).values()
    assert recs and all(rec.status == "nodata" for rec in recs)
