"""The generic file-pair chip importer on real Sen1Floods11 files rearranged as users' archives are:
SAR-only, optical-only, two-page TIFFs without a CRS, other label names, chips lacking a modality."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from sgma_batch import chips
from sgma_batch.chip_files import LabelMap, ModalityFiles, import_chip_files, read_raster, resolve_files
from sgma_batch.errors import ChipStoreError

REPO = Path(__file__).resolve().parents[2]
S1F11 = REPO.parent / "shared" / "data" / "sen1floods11"
CID = "Spain_7370579"
QUADS = [(0, 0), (0, 256), (256, 0), (256, 256)]


def _read(sub: str) -> tuple[np.ndarray, dict]:
    with rasterio.open(S1F11 / sub / f"{CID}_{sub}.tif") as src:
        return src.read(), dict(src.profile)


@pytest.fixture(scope="module")
def real():
    s1, p1 = _read("S1Hand")
    s2, p2 = _read("S2Hand")
    lab, pl = _read("LabelHand")
    return {"s1": s1, "s2": s2, "label": lab[0], "p1": p1, "p2": p2, "pl": pl}


def _write_geotiff(path: Path, data: np.ndarray, profile: dict, r: int, c: int, size: int = 256, **extra) -> None:
    t = window_transform(Window(c, r, size, size), profile["transform"])
    prof = {**profile, "width": size, "height": size, "transform": t, "count": data.shape[0], **extra}
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data[:, r:r + size, c:c + size])


def _two_page_tiff(path: Path, bands: np.ndarray) -> None:
    """One page per band, no georeferencing (what some SAR tools write)."""
    pages = [Image.fromarray(np.ascontiguousarray(b)) for b in bands]
    pages[0].save(path, save_all=True, append_images=pages[1:])


@pytest.fixture(scope="module")
def sar_dir(tmp_path_factory, real):
    """SAR-only archive: <id>_sar.tif two-page (VV page, VH page) without CRS, labels <id>_mask.tif."""
    root = tmp_path_factory.mktemp("sar")
    (root / "s1").mkdir()
    (root / "masks").mkdir()
    for q, (r, c) in enumerate(QUADS):
        _two_page_tiff(root / "s1" / f"chip{q}_sar.tif", real["s1"][:, r:r + 256, c:c + 256])
        Image.fromarray(real["label"][r:r + 256, c:c + 256].astype(np.int16)).save(root / "masks" / f"chip{q}_mask.tif")
    return root


def test_two_page_tiff_yields_both_bands(sar_dir, real):
    r = read_raster(sar_dir / "s1" / "chip1_sar.tif")
    assert r.data.shape == (2, 256, 256) and r.crs is None
    np.testing.assert_array_equal(r.data[1], real["s1"][1, 0:256, 256:512])  # VH from page 2


def test_sar_only_chips_without_crs_need_a_resolution_and_leave_nothing_on_error(sar_dir, tmp_path, real):
    s1 = ModalityFiles("s1", str(sar_dir / "s1" / "{id}_sar.tif"), bands=("vv", "vh"))
    labels = str(sar_dir / "masks" / "{id}_mask.tif")
    out = tmp_path / "sar.zarr"
    with pytest.raises(ChipStoreError, match="--resolution"):
        import_chip_files([s1], labels, out, label_map="0:dry,1:water,-1:nodata")
    assert not out.exists()
    import_chip_files([s1], labels, out, label_map="0:dry,1:water,-1:nodata", resolution=10.0, split_by="file")
    store = chips.ChipStore(out)
    assert store.modalities == {"s1": ("vv", "vh")}
    assert [c["name"] for c in store.classes] == ["dry", "water"]
    assert store.attrs["source"]["resolution"] == 10.0
    assert sum(store.attrs["counts"].values()) == 4 * 16  # 4 files x 16 chips of 64 px
    assert store.present().all()
    # the first chip of file chip0 is the real VV / VH / label at (0, 0)
    i = int(np.flatnonzero(np.asarray(store.group["source_index"][:]) == 0)[0])
    vv = np.asarray(store.group["s1"][i])
    np.testing.assert_array_equal(vv, np.nan_to_num(real["s1"][:, :64, :64]))
    lab = np.asarray(store.group["label"][i])
    raw = real["label"][:64, :64]
    assert np.array_equal(lab == 255, raw == -1) and np.array_equal(lab[raw >= 0], raw[raw >= 0])


def test_label_values_outside_the_map_are_an_error(sar_dir, tmp_path):
    s1 = ModalityFiles("s1", str(sar_dir / "s1" / "{id}_sar.tif"), bands=("vv", "vh"))
    with pytest.raises(ChipStoreError, match=r"label values \[-1\]"):
        import_chip_files([s1], str(sar_dir / "masks" / "{id}_mask.tif"), tmp_path / "x.zarr",
                          label_map="0:dry,1:water", resolution=10.0)
    assert not (tmp_path / "x.zarr").exists()
    # without a map, -1 is not a class id either; --label-nodata makes it "no label"
    with pytest.raises(ChipStoreError, match="not class ids"):
        import_chip_files([s1], str(sar_dir / "masks" / "{id}_mask.tif"), tmp_path / "y.zarr", resolution=10.0)
    import_chip_files([s1], str(sar_dir / "masks" / "{id}_mask.tif"), tmp_path / "z.zarr", resolution=10.0,
                      label_nodata=-1)
    assert [c["name"] for c in chips.ChipStore(tmp_path / "z.zarr").classes] == ["class_0", "class_1"]


def test_label_map_parsing():
    lm = LabelMap.parse("0:dry,1:water#1f78b4,2:water,-1:nodata")
    assert dict(lm.values) == {0: 0, 1: 1, 2: 1, -1: 255}
    assert [c["name"] for c in lm.classes] == ["dry", "water"] and lm.classes[1]["color"] == "#1f78b4"
    for bad in ("0-dry", "x:dry", "0:dry,0:wet", "-1:nodata"):
        with pytest.raises(ChipStoreError):
            LabelMap.parse(bad)


def test_sen1floods11_layout_without_s2hand_and_with_other_label_names(tmp_path, real):
    """Two chips: one with S1 only (its optical scene was cloudy), one with both; labels named _Label.tif."""
    root = tmp_path / "s1f11"
    for d in ("S1Hand", "S2Hand", "Labels"):
        (root / d).mkdir(parents=True)
    for q, (r, c) in enumerate(QUADS[:2]):
        _write_geotiff(root / "S1Hand" / f"c{q}_S1Hand.tif", real["s1"], real["p1"], r, c)
        _write_geotiff(root / "Labels" / f"c{q}_Label.tif", real["label"][None], real["pl"], r, c)
    _write_geotiff(root / "S2Hand" / "c1_S2Hand.tif", real["s2"], real["p2"], *QUADS[1])
    out = chips.sen1floods11_chip_store(root, tmp_path / "s.zarr", labels=str(root / "Labels" / "{id}_Label.tif"),
                                        chip_px=64, guard_px=0)
    store = chips.ChipStore(out)
    src = np.asarray(store.group["source_index"][:])
    present = store.present()
    s2 = list(store.modalities).index("s2")
    ids = [c["id"] for c in store.attrs["source"]["chips"]]
    assert ids == ["c0", "c1"]
    assert not present[src == 0, s2].any() and present[src == 1, s2].all()
    assert present[:, list(store.modalities).index("s1")].all()
    assert not np.asarray(store.group["s2_mask"][:])[src == 0].any()
    assert store.attrs["source"]["chips"][0]["present"] == ["s1"]
    assert store.attrs["present_counts"]["s2"]["train"] == 12  # c1's three training quadrants x 4 chips


def test_a_modality_with_no_valid_pixel_is_stored_absent_not_refused(tmp_path, real):
    """An optical-only archive whose every S2 file is nodata (0): S2 stored absent; no training pixel."""
    root = tmp_path / "a"
    (root / "s2").mkdir(parents=True)
    (root / "s1").mkdir()
    (root / "lab").mkdir()
    zeros = np.zeros_like(real["s2"])
    for q, (r, c) in enumerate(QUADS[:3]):
        _write_geotiff(root / "s2" / f"k{q}.tif", zeros, real["p2"], r, c)
        _write_geotiff(root / "s1" / f"k{q}.tif", real["s1"], real["p1"], r, c)
        _write_geotiff(root / "lab" / f"k{q}.tif", real["label"][None], real["pl"], r, c, nodata=-1)
    out = import_chip_files(
        [ModalityFiles("s2", str(root / "s2"), select=tuple(range(2, 9)) + (9, 12, 13), scale=1e-4),
         ModalityFiles("s1", str(root / "s1"))],
        str(root / "lab"), tmp_path / "a.zarr", label_map="0:dry,1:water",
    )
    store = chips.ChipStore(out)
    from sgma_batch.scenes import MODALITY_BANDS

    assert store.modalities["s2"] == tuple(MODALITY_BANDS["s2"])  # 10 bands selected: the canonical names
    assert not store.present()[:, 0].any() and store.present()[:, 1].all()
    assert store.train_pixels("s2") == 0 and store.train_pixels("s1") > 0
    assert store.attrs["source"]["split_by"] == "file"  # 3 files -> whole files per split


def test_resolve_files_patterns(tmp_path):
    for n in ("a_S1Hand.tif", "b_S1Hand.tif", "notes.txt"):
        (tmp_path / n).write_text("x")
    assert sorted(resolve_files(str(tmp_path / "{id}_S1Hand.tif"))) == ["a", "b"]
    assert sorted(resolve_files(str(tmp_path))) == ["a_S1Hand", "b_S1Hand"]
    assert sorted(resolve_files(str(tmp_path / "a_*.tif"))) == ["a_S1Hand"]


@pytest.mark.integration  # the CLI in a subprocess
def test_cli_sar_only_import_and_clean_errors(sar_dir, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from cli.app import main; main()", "chips", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300, check=False)

    base = ["--files", f"s1={sar_dir}/s1/{{id}}_sar.tif", "--label-files", f"{sar_dir}/masks/{{id}}_mask.tif",
            "--bands", "s1=vv,vh", "--label-map", "0:dry,1:water,-1:nodata"]
    p = run(*base, "--out", str(tmp_path / "c.zarr"))
    assert p.returncode == 51 and "--resolution" in p.stderr and "Traceback" not in p.stderr
    p = run(*base, "--resolution", "10", "--out", str(tmp_path / "c.zarr"))
    assert p.returncode == 0, p.stderr
    assert "s1 in 64" in p.stdout
    p = run("--files", "s1", "--label-files", "x", "--out", str(tmp_path / "d.zarr"))
    assert p.returncode == 51 and "MODALITY=VALUE" in p.stderr


def test_constant_modality_is_absent(real, tmp_path):
    from sgma_batch.chips import constant_modality

    s1 = np.nan_to_num(real["s1"][:, :64, :64])
    ok = np.ones((64, 64), bool)
    assert not constant_modality(s1, ok)
    assert constant_modality(np.zeros((10, 64, 64), np.float32), ok)  # zero-filled optical marked valid
    assert constant_modality(np.full((2, 64, 64), -9999.0, np.float32), ok)  # fill value without a nodata tag
    one = np.zeros((64, 64), bool)
    one[3, 3] = True
    assert not constant_modality(s1, one)  # one pixel: nothing to judge
    varied = s1.copy()
    varied[0] = 7.0  # one band constant, the other not: data
    assert not constant_modality(varied, ok)
    # the importer stores a constant file as absent
    root = tmp_path / "c"
    for d in ("s1", "lab"):
        (root / d).mkdir(parents=True)
    for q, (r, c) in enumerate(QUADS[:3]):
        data = real["s1"] if q else np.zeros_like(real["s1"])
        _write_geotiff(root / "s1" / f"k{q}.tif", data, {**real["p1"], "nodata": None}, r, c)
        _write_geotiff(root / "lab" / f"k{q}.tif", real["label"][None], real["pl"], r, c, nodata=-1)
    store = chips.ChipStore(import_chip_files([ModalityFiles("s1", str(root / "s1"))], str(root / "lab"),
                                              tmp_path / "c.zarr", label_map="0:dry,1:water"))
    # k0's only modality is constant: the chip holds nothing and is skipped, the others are imported
    assert store.attrs["source"]["skipped"] == ["k0"]
    assert [c["id"] for c in store.attrs["source"]["chips"]] == ["k1", "k2"] and store.present().all()
