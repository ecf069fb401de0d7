"""`chips` from a catalogue with a user's label raster: a 0/1 water mask with -1 = no label and no nodata
tag, mapped with --label-map; the store's classes and labels follow the map."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from sgma_batch import chips
from sgma_batch.errors import ChipStoreError

pytestmark = pytest.mark.integration


def test_catalogue_chips_with_a_label_map(tmp_path):
    from sgma_batch.aoi import load_aoi
    from sgma_batch.synthetic import generate_archive

    info = generate_archive(tmp_path / "arch", seed=3, size_km=(2, 2), dates=1)
    with rasterio.open(info.label_path) as src:
        prof, raw = dict(src.profile), src.read(1)
    mask = np.where(raw == 255, -1, (raw <= 2).astype(np.int16)).astype(np.int16)  # a 0/1 mask
    mask[:, :40] = -1  # a strip without labels
    water = tmp_path / "water.tif"
    with rasterio.open(water, "w", **{**prof, "dtype": "int16", "nodata": None}) as dst:
        dst.write(mask, 1)
    dates = sorted(str(d)[:10] for d in info.dates)
    b = info.geobox.extent.to_crs("EPSG:4326").boundingbox
    aoi = load_aoi((b.left, b.bottom, b.right, b.top))
    kw = dict(catalog=info.catalog_path, aoi=aoi, start=dates[0], end=dates[-1], labels=water, chip_px=32,
              block_px=96, guard_px=16)
    with pytest.raises(ChipStoreError, match=r"label values \[-1\]"):
        chips.export_chips(out=tmp_path / "a.zarr", label_map="0:dry,1:water", **kw)
    store = chips.ChipStore(chips.export_chips(out=tmp_path / "b.zarr", label_map="0:dry,1:water,-1:nodata", **kw))
    assert [c["name"] for c in store.classes] == ["dry", "water"]
    lab = np.asarray(store.group["label"][:])
    origin = np.asarray(store.group["origin"][:])
    # the chip grid is the label raster's, cropped to the AOI: chip i is mask[r0 + row:..., c0 + col:...]
    from affine import Affine

    c0, r0 = (round(v) for v in ~prof["transform"] * Affine(*store.attrs["source"]["affine"]) * (0, 0))
    assert (lab == 255).any() and (lab == 1).any() and (lab == 0).any()
    for i in range(len(lab)):
        r, c = origin[i] + (r0, c0)
        want = mask[r:r + 32, c:c + 32]
        assert np.array_equal(lab[i] == 255, want == -1) and np.array_equal(lab[i][want >= 0], want[want >= 0])
