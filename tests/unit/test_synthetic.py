"""The synthetic archive: determinism, real COGs, STAC structure, and class separability per modality."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from sgma_batch.synthetic import (
    CLASSES,
    DEMO_EPSG,
    DEMO_SIZE_KM,
    GENERATOR_VERSION,
    demo_aoi_path,
    demo_archive_info,
    demo_archive_name,
    generate_archive,
    generator_digest,
    make_geobox,
)
from sgma_batch.synthetic.archive import DEFAULT_ORIGIN_UTM, ensure_archive
from sgma_batch.synthetic.landscape import ground

REPO = Path(__file__).resolve().parents[2]
SMALL = {"seed": 1, "size_km": (3.0, 3.0), "dates": 4}  # an extent that holds every class
WATER, TREES, GRASS, CROPS, BUILT_UP, BARE, WETLAND = range(7)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return generate_archive(tmp_path_factory.mktemp("a") / "arch", **SMALL)


@pytest.fixture(scope="module")
def catalog(small):
    cat = pystac.Catalog.from_file(str(small.catalog_path))
    return {c.id: sorted(c.get_items(), key=lambda i: i.datetime) for c in cat.get_collections()}


def _read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as ds:
        return ds.read(1)


def test_classes_match_the_contract():
    assert CLASSES == (("water", "#1f78b4"), ("trees", "#33a02c"), ("grass", "#b2df8a"), ("crops", "#ffd92f"),
                       ("built_up", "#e31a1c"), ("bare", "#bfa27a"), ("wetland", "#6a3d9a"))


@pytest.mark.integration  # builds a COG archive
def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    again = generate_archive(tmp_path / "again", **SMALL)
    first, second = _hashes(small.root), _hashes(again.root)
    assert len(first) > 40 and first == second
    other = generate_archive(tmp_path / "other", **{**SMALL, "seed": 2})
    third = _hashes(other.root)
    labels = [k for k in first if k.endswith("labels.tif")]
    assert labels and all(first[k] != third.get(k) for k in labels if k in third)
    with rasterio.open(small.label_path) as a, rasterio.open(other.label_path) as b:
        assert (a.read(1) != b.read(1)).mean() > 0.3


def test_refuses_a_non_empty_folder(tmp_path):
    from sgma_batch.errors import StoreUnwritableError

    (tmp_path / "x").write_text("keep me")
    with pytest.raises(StoreUnwritableError):
        generate_archive(tmp_path, size_km=(1, 1), dates=1)
    assert (tmp_path / "x").read_text() == "keep me"


@pytest.mark.integration  # builds a COG archive
def test_every_raster_is_a_cog_in_the_utm_crs_with_overviews(small):
    tifs = [p for p in small.root.rglob("*") if p.suffix in (".tif", ".tiff")]
    assert len(tifs) >= 4 * 11 + 2
    for path in tifs:
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32633, path
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
            assert ds.block_shapes[0] == (512, 512) and ds.profile["tiled"], path
            assert ds.overviews(1), path
            assert ds.compression.name.lower() == "deflate"
            if "dem" not in path.name:
                assert ds.transform == small.geobox.affine and ds.shape == small.geobox.shape
            else:
                assert ds.res == (30.0, 30.0) and ds.transform.c == small.geobox.affine.c


@pytest.mark.integration  # builds a COG archive
def test_stac_catalog_structure_and_hrefs(small, catalog):
    assert set(catalog) == {"sentinel-2-c1-l2a", "sentinel-1-rtc", "cop-dem-glo-30", "sgma-labels"}
    s2_keys = {"blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22", "scl"}
    assert len(catalog["sentinel-2-c1-l2a"]) == 4
    for item in catalog["sentinel-2-c1-l2a"]:
        assert set(item.assets) == s2_keys
        p = item.properties
        assert p["s2:processing_baseline"] == "05.10" and p["earthsearch:boa_offset_applied"] is False
        # pystac migrates proj:epsg to proj:code on read (projection extension v2)
        assert (p.get("proj:epsg") == 32633 or p.get("proj:code") == "EPSG:32633") and 0.0 <= p["eo:cloud_cover"] <= 100.0
        assert p["created"] == p["updated"] and p["updated"].endswith("Z")
        for key, asset in item.assets.items():
            assert Path(asset.get_absolute_href()).is_file()
            assert not asset.href.startswith("/") and asset.media_type.endswith("profile=cloud-optimized")
            assert asset.extra_fields["proj:shape"] == list(small.geobox.shape)
            if key != "scl":
                band = asset.extra_fields["eo:bands"][0]
                assert band["common_name"] in (key, "rededge")
                assert asset.extra_fields["raster:bands"][0]["offset"] == -0.1
    covers = [i.properties["eo:cloud_cover"] for i in catalog["sentinel-2-c1-l2a"]]
    assert max(covers) - min(covers) > 20.0  # clear and cloudy dates
    for item in catalog["sentinel-1-rtc"]:
        assert set(item.assets) >= {"vv", "vh"}
        assert item.properties["sat:orbit_state"] in ("ascending", "descending")
        assert item.properties["sar:polarizations"] == ["VV", "VH"]
        assert "EPSG:32633" in (item.properties.get("proj:code"), f"EPSG:{item.properties.get('proj:epsg')}")
        assert all(Path(a.get_absolute_href()).is_file() for a in item.assets.values())
    (dem,) = catalog["cop-dem-glo-30"]
    assert Path(dem.assets["data"].get_absolute_href()).is_file()
    (label,) = catalog["sgma-labels"]
    assert Path(label.assets["labels"].get_absolute_href()).resolve() == small.label_path.resolve()
    names = [c["name"] for c in label.assets["labels"].extra_fields["classification:classes"]]
    assert names == [n for n, _ in CLASSES]
    # Items follow the real catalogues' layout: same property names as the Earth Search / PC samples.
    real = json.loads((REPO / ".." / "shared" / "data" / "stac" / "earthsearch_sentinel-2-c1-l2a_10items.json")
                      .read_text())["features"][0]
    ours = json.loads(Path(catalog["sentinel-2-c1-l2a"][0].get_self_href()).read_text())
    for key in ("eo:cloud_cover", "proj:epsg", "s2:processing_baseline", "created", "updated", "platform"):
        assert key in real["properties"] and key in ours["properties"]


@pytest.mark.integration  # builds a COG archive
def test_missing_pass_and_swath_edges(small, catalog):
    s1 = catalog["sentinel-1-rtc"]
    assert len(s1) < len(catalog["sentinel-2-c1-l2a"])  # a date without Sentinel-1
    partial = [i for i in s1 if (_read(i, "vv") == -32768).any()]
    assert partial and all((_read(i, "vv") > 0).mean() > 0.5 for i in s1)
    for item in partial:  # its footprint excludes the wedge
        assert item.properties["s1:valid_pixel_percentage"] < 95.0
    edged = [i for i in catalog["sentinel-2-c1-l2a"] if i.properties["s2:nodata_pixel_percentage"] > 0]
    assert edged
    for item in edged:
        scl, blue = _read(item, "scl"), _read(item, "blue")
        assert ((scl == 0) == (blue == 0)).all() and (scl == 0).any()


@pytest.mark.integration  # builds a COG archive
def test_scl_clouds_are_bright_and_clear_pixels_are_not(catalog):
    seen = 0
    for item in catalog["sentinel-2-c1-l2a"]:
        scl = _read(item, "scl")
        blue = (_read(item, "blue").astype(np.float32) - 1000) / 10000
        thick = scl == 9
        if thick.sum() > 100:
            seen += 1
            assert np.mean(blue[thick] > 0.35) > 0.99
        clear = np.isin(scl, (4, 5, 6))
        assert np.mean(blue[clear] < 0.2) > 0.99
        shadow = scl == 3
        if shadow.sum() > 100:
            assert np.median(blue[shadow]) < np.median(blue[clear])
    assert seen >= 1


def _class_stats(catalog, label):
    """Per-class mean reflectance (clear pixels of the clearest date) and mean SAR dB (all S1 dates)."""
    s2 = min(catalog["sentinel-2-c1-l2a"], key=lambda i: i.properties["eo:cloud_cover"])
    scl = _read(s2, "scl")
    keys = ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22"]
    refl = np.stack([(_read(s2, k).astype(np.float32) - 1000) / 10000 for k in keys])
    clear = np.isin(scl, (4, 5, 6))
    vv = np.stack([_read(i, "vv") for i in catalog["sentinel-1-rtc"]])
    vh = np.stack([_read(i, "vh") for i in catalog["sentinel-1-rtc"]])
    opt, sar = {}, {}
    for k in range(7):
        m = (label == k) & clear
        assert m.sum() > 50, f"class {CLASSES[k][0]} missing from the test extent"
        opt[k] = refl[:, m].mean(axis=1)
        ok = (vv > 0) & (label == k)[None]
        sar[k] = np.array([10 * np.log10(vv[ok].mean()), 10 * np.log10(vh[ok].mean())])
    return opt, sar


@pytest.mark.integration  # builds a COG archive
def test_modalities_separate_the_designed_class_pairs(small, catalog):
    with rasterio.open(small.label_path) as ds:
        label = ds.read(1)
    opt, sar = _class_stats(catalog, label)
    # built-up vs bare: same optics, SAR differs
    assert np.abs(opt[BUILT_UP] - opt[BARE]).max() < 0.01
    assert sar[BUILT_UP][0] - sar[BARE][0] > 8.0
    # crops vs grass: same SAR, red-edge / NIR differ
    assert np.abs(sar[CROPS] - sar[GRASS]).max() < 0.6
    assert opt[CROPS][4] - opt[GRASS][4] > 0.04 and opt[CROPS][6] - opt[GRASS][6] > 0.05
    assert np.abs(opt[CROPS][:3] - opt[GRASS][:3]).max() < 0.01
    # water vs wetland: optically close, SAR differs
    assert np.abs(opt[WATER] - opt[WETLAND]).max() < 0.02
    assert sar[WETLAND][0] - sar[WATER][0] > 6.0


@pytest.mark.integration  # builds a COG archive
def test_dem_is_lowest_and_flat_on_water(small, catalog):
    (dem_item,) = catalog["cop-dem-glo-30"]
    with rasterio.open(dem_item.assets["data"].get_absolute_href()) as ds:
        dem = ds.read(1)
        assert ds.dtypes[0] == "float32"
    with rasterio.open(small.label_path) as ds:
        label = ds.read(1)
    # The label at every DEM pixel centre (30 m = 3 x 10 m).
    sub = label[1::3, 1::3]
    dem = dem[: sub.shape[0], : sub.shape[1]]
    water, land = dem[sub == WATER], dem[~np.isin(sub, (WATER, WETLAND))]
    assert water.size > 20
    assert np.median(water) < np.percentile(land, 10)
    wet = dem[sub == WETLAND]
    assert np.median(wet) < np.median(land)


def test_ground_is_independent_of_the_window():
    x = 499_985.0 + 10 * np.arange(300)
    y = 5_300_035.0 - 10 * np.arange(260)
    whole = ground(x, y, seed=5)
    part = ground(x[123:250], y[77:200], seed=5)
    assert np.array_equal(whole.label[77:200, 123:250], part.label)
    assert np.array_equal(whole.elevation_m[77:200, 123:250], part.elevation_m)


def test_every_class_in_the_demo_extent_and_aoi_inside():
    from shapely.geometry import shape

    gbox = make_geobox(DEFAULT_ORIGIN_UTM, DEMO_SIZE_KM, DEMO_EPSG)
    a = gbox.affine
    x = a.c + 10 * (np.arange(gbox.shape[1]) + 0.5)
    y = a.f - 10 * (np.arange(gbox.shape[0]) + 0.5)
    frac = np.bincount(ground(x, y, seed=0).label.ravel(), minlength=7) / (gbox.shape[0] * gbox.shape[1])
    assert (frac > 0.005).all(), frac
    aoi = json.loads((REPO / "examples" / "demo-aoi.geojson").read_text())
    assert demo_aoi_path().read_text() == (REPO / "examples" / "demo-aoi.geojson").read_text()
    geom = shape(aoi["features"][0]["geometry"])
    extent = gbox.extent.to_crs("epsg:4326").geom
    assert extent.buffer(-0.005).contains(geom)  # inside with margin (~400 m)


@pytest.mark.integration  # builds a COG archive
def test_ensure_archive_builds_once_under_a_race(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        generate_archive(tmp, size_km=(1, 1), dates=1, seed=len(calls))

    threads = [threading.Thread(target=ensure_archive, args=(tmp_path / "arch", build)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tmp_path / "arch" / "catalog.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["arch"]  # no temp folder left
    before = _hashes(tmp_path / "arch")
    ensure_archive(tmp_path / "arch", build)
    assert _hashes(tmp_path / "arch") == before and len(calls) <= 2


def test_demo_cache_folder_is_tied_to_the_generator(tmp_path):
    """A changed generator (version constant, source, or demo parameters) never reuses an archive cached by
    another one. Generation and reuse themselves: test_search_cli (default catalogue)."""
    name = demo_archive_name()
    assert name.startswith(f"demo-archive-v{GENERATOR_VERSION}-") and name == demo_archive_name()
    assert demo_archive_name(version=GENERATOR_VERSION + 1) != name
    package = Path(generate_archive.__code__.co_filename).parent
    copy = tmp_path / "generator"
    copy.mkdir()
    for src in package.glob("*.py"):
        (copy / src.name).write_bytes(src.read_bytes())
    assert generator_digest(copy) == generator_digest()
    landscape = copy / "landscape.py"
    landscape.write_text(landscape.read_text().replace("_LAKE_NOISE = -0.40", "_LAKE_NOISE = -0.41"))
    patched = generator_digest(copy)
    assert patched != generator_digest() and demo_archive_name(source_digest=patched) != name
    info = demo_archive_info(tmp_path)
    assert info.root == tmp_path / name and info.catalog_path == tmp_path / name / "catalog.json"
    assert info.epsg == DEMO_EPSG and info.bounds.crs.epsg == DEMO_EPSG and len(info.dates) == 4


@pytest.mark.integration  # builds a COG archive
def test_cli_archive_synth_json(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    out = tmp_path / "cli-arch"
    result = CliRunner().invoke(app, ["archive", "synth", str(out), "--size-km", "1", "1.5", "--dates", "2",
                                      "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["shape"] == [150, 100] and summary["epsg"] == 32633 and len(summary["dates"]) == 2
    assert Path(summary["catalog"]).is_file() and Path(summary["labels"]).is_file()
