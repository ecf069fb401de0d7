"""Quicklook PNGs of a store: the class map with a legend, and what drove each decision."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from sgma_batch.store.layout import CLASS_NODATA, ROBUSTNESS_SCALE, _quiet_zarr


def _coarsest_fitting(root: Any, name: str, max_px: int) -> np.ndarray:
    """``name`` from the finest overview no larger than ``max_px`` (subsampled if none is small enough)."""
    arr = root[name]
    if max(arr.shape[-2:]) > max_px and "overviews" in root:
        for f in sorted(int(k) for k in root["overviews"].group_keys()):
            arr = root["overviews"][str(f)][name]
            if max(arr.shape[-2:]) <= max_px:
                break
    data = np.asarray(arr[...])
    if max(data.shape[-2:]) > max_px:
        step = -(-max(data.shape[-2:]) // max_px)
        data = data[..., ::step, ::step]
    return data


def _save_png(image: Any, png: Path | str) -> None:
    """Save a PIL image to a path or an object-storage URL (one PUT)."""
    from sgma_batch import storage

    if isinstance(png, Path):
        png.parent.mkdir(parents=True, exist_ok=True)
        image.save(png)
        return
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    storage.write_bytes(png, buf.getvalue())


@_quiet_zarr
def render_quicklook(path: str | Path, png: str | Path, *, max_px: int = 1024) -> Path | str:
    """A PNG of the class map (from the finest overview no larger than ``max_px``) with a legend."""
    import zarr
    from PIL import Image, ImageDraw

    from sgma_batch import storage

    path, png = storage.location(path), storage.location(png)
    root = zarr.open_group(storage.zarr_store(path, read_only=True), mode="r")
    attrs = root.attrs.asdict()
    classes = [(c["name"], c["color"]) for c in attrs["sgma:classes"]]
    data = _coarsest_fitting(root, "class", max_px)
    palette = np.full((256, 4), (255, 255, 255, 0), np.uint8)
    for i, (_, color) in enumerate(classes):
        palette[i] = (*bytes.fromhex(color.lstrip("#")), 255)
    rgba = palette[data]  # (H, W, 4)
    h, w = data.shape
    row_h, legend_w = 18, 150
    canvas = Image.new("RGBA", (w + legend_w, max(h, row_h * (len(classes) + 2))), (255, 255, 255, 255))
    canvas.paste(Image.fromarray(rgba, "RGBA"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + 8, 4), "class", fill=(0, 0, 0, 255))
    for i, (name, color) in enumerate(classes):
        y = 4 + row_h * (i + 1)
        draw.rectangle((w + 8, y, w + 22, y + 12), fill=color, outline=(0, 0, 0, 255))
        draw.text((w + 28, y), name, fill=(0, 0, 0, 255))
    _save_png(canvas, png)
    return png


#: Robustness composite: which channel shows which modality's fusion weight.
DRIVER_CHANNELS = {"s2": 0, "s1": 1, "dem": 2}  # red, green, blue


@_quiet_zarr
def render_drivers(path: str | Path, png: str | Path, *, max_px: int = 1024) -> Path | str:
    """A PNG of what drove each decision: the robustness maps as RGB (S2 red, S1 green, DEM blue; a pure
    colour = one sensor decided, a mix = shared) beside the confidence (dark = unsure), from overviews."""
    import zarr
    from PIL import Image, ImageDraw

    from sgma_batch import storage

    path, png = storage.location(path), storage.location(png)
    root = zarr.open_group(storage.zarr_store(path, read_only=True), mode="r")
    modalities = list(root.attrs.asdict()["sgma:modalities"])
    valid = _coarsest_fitting(root, "class", max_px) != CLASS_NODATA  # (h, w)
    rob = _coarsest_fitting(root, "robustness", max_px)  # (M, h, w) uint8, weights x 254 (255 = nodata)
    rob = np.minimum((rob.astype(np.uint16) * 255 + ROBUSTNESS_SCALE // 2) // ROBUSTNESS_SCALE, 255).astype(np.uint8)
    conf = _coarsest_fitting(root, "confidence", max_px)  # (h, w) uint8
    h, w = valid.shape
    outside = (250, 235, 215)  # nodata: a pale beige, told apart from confident (white) pixels
    rgb = np.full((h, w, 3), outside, np.uint8)
    comp = np.zeros((h, w, 3), np.uint8)
    for i, m in enumerate(modalities):
        if m in DRIVER_CHANNELS:
            comp[..., DRIVER_CHANNELS[m]] = rob[i]
    rgb[valid] = comp[valid]
    gray = np.full((h, w, 3), outside, np.uint8)
    gray[valid] = conf[valid][:, None]
    gap, legend_w, row_h = 8, 170, 18
    canvas = Image.new("RGB", (2 * w + gap + legend_w, max(h, row_h * 8)), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    canvas.paste(Image.fromarray(gray, "RGB"), (w + gap, 0))
    draw = ImageDraw.Draw(canvas)
    x = 2 * w + gap + 8
    draw.text((x, 4), "left: decided by", fill=(0, 0, 0))
    for i, (name, color) in enumerate((("S2 optical", "#ff0000"), ("S1 SAR", "#00ff00"), ("DEM", "#0000ff"))):
        y = 4 + row_h * (i + 1)
        draw.rectangle((x, y, x + 14, y + 12), fill=color, outline=(0, 0, 0))
        draw.text((x + 20, y), name, fill=(0, 0, 0))
    y = 4 + row_h * 5
    draw.text((x, y), "right: confidence", fill=(0, 0, 0))
    for j in range(100):  # a 0..1 ramp
        v = int(j * 255 / 99)
        draw.line((x + j, y + row_h, x + j, y + row_h + 10), fill=(v, v, v))
    draw.text((x, y + row_h + 12), "0", fill=(0, 0, 0))
    draw.text((x + 94, y + row_h + 12), "1", fill=(0, 0, 0))
    _save_png(canvas, png)
    return png
