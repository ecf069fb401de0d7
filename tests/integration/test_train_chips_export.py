"""`chips` from a synthetic archive reads the same pixels as `run` would for the same GeoBox."""

from __future__ import annotations

import numpy as np
import pytest

from sgma_batch import chips

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from sgma_batch.synthetic import generate_archive

    return generate_archive(tmp_path_factory.mktemp("arch"), seed=3, size_km=(3, 3))


def _window(info):
    dates = sorted(str(d)[:10] for d in getattr(info, "dates", ()) or ())
    return (dates[0], dates[-1]) if dates else ("2000-01-01", "2100-01-01")


def test_export_matches_read_modality_on_the_chip_geobox(archive, tmp_path):
    from sgma_batch.aoi import load_aoi
    from sgma_batch.colocate import plan_cell
    from sgma_batch.read import read_modality
    from sgma_batch.search import search_scenes
    from sgma_batch.sensors import get_profile

    start, end = _window(archive)
    b = archive.geobox.extent.to_crs("EPSG:4326").boundingbox
    aoi = load_aoi((b.left, b.bottom, b.right, b.top))
    path = chips.export_chips(catalog=archive.catalog_path, aoi=aoi, start=start, end=end,
                              labels=archive.label_path, out=tmp_path / "c.zarr", chip_px=32, block_px=96,
                              guard_px=16)
    store = chips.ChipStore(path)
    assert sum(store.attrs["counts"].values()) == len(store.split) > 0
    assert store.attrs["counts"]["train"] > 0
    grid, r_off, c_off = chips._crop_to_aoi(chips.label_geobox(archive.label_path), aoi.geometry)
    scenes = search_scenes(archive.catalog_path, aoi, start, end, modalities=["s2", "s1", "dem"], allow_empty=True)
    assert scenes["dem"], "the DEM must be found although its item date is outside the window"
    origin = np.asarray(store.group["origin"][:])
    checked = 0
    for i in (0, len(origin) // 2, len(origin) - 1):
        r, c = origin[i]
        chip_box = grid[r:r + 32, c:c + 32]
        block_box = grid[(r // 96) * 96:(r // 96) * 96 + 96, (c // 96) * 96:(c // 96) * 96 + 96]
        plan = plan_cell(block_box.extent.to_crs("EPSG:4326").geom, scenes, start, end)
        for m in store.modalities:
            cands = tuple(plan.candidates.get(m, ()))
            if not cands:
                assert not np.asarray(store.group[f"{m}_mask"][i]).any()
                continue
            data, valid = read_modality(cands, chip_box, get_profile(cands[0].sensor))
            np.testing.assert_array_equal(np.asarray(store.group[f"{m}_mask"][i]), valid)
            np.testing.assert_allclose(np.asarray(store.group[m][i]), np.where(valid, data, 0), rtol=1e-6)
            checked += 1
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(archive.label_path) as src:
            lab = src.read(1, window=Window(c_off + c, r_off + r, 32, 32))
        np.testing.assert_array_equal(np.asarray(store.group["label"][i]), lab)
    assert checked >= 3
    # statistics from the train split only, finite and positive std
    for m, st in store.stats.items():
        assert np.all(np.isfinite(st["mean"])) and np.all(np.asarray(st["std"]) > 0)


def test_labels_from_a_stac_collection_equal_the_raster_source(archive, tmp_path):
    """`labels_collection="sgma-labels"` finds the item's `labels` asset: same chips as the raster path."""
    from sgma_batch.aoi import load_aoi

    start, end = _window(archive)
    b = archive.geobox.extent.to_crs("EPSG:4326").boundingbox
    aoi = load_aoi((b.left, b.bottom, b.right, b.top))
    kw = dict(catalog=archive.catalog_path, aoi=aoi, start=start, end=end, chip_px=32, block_px=96, guard_px=16)
    by_raster = chips.ChipStore(chips.export_chips(labels=archive.label_path, out=tmp_path / "r.zarr", **kw))
    by_stac = chips.ChipStore(chips.export_chips(labels_collection="sgma-labels", out=tmp_path / "s.zarr", **kw))
    assert by_stac.attrs["source"]["labels_collection"] == "sgma-labels"
    assert by_stac.attrs["source"]["labels_item"].startswith("sgma-synthetic-labels")
    assert [c["name"] for c in by_stac.classes] == [c["name"] for c in by_raster.classes]
    for name in ("label", "split", "origin", "s2", "s1_mask"):
        np.testing.assert_array_equal(np.asarray(by_stac.group[name][:]), np.asarray(by_raster.group[name][:]))
    assert (np.asarray(by_stac.group["label"][:]) != 255).any()
    with pytest.raises(Exception, match="not in"):
        chips.export_chips(labels_collection="no-such-labels", out=tmp_path / "x.zarr", **kw)
