"""The report's pictures: pre | post | prediction (| label) panels and a scale bar.

Each panel is a PNG data URI (the page stays one self-contained file) shown at the pixel size
given with it, so the scale bar, computed from the geotransform, is true on the page.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

from damnet import storage
from damnet.quicklook import to_display

PREDICTED = np.array([230, 30, 30], dtype=np.float32)  # red: predicted change
LABELLED = np.array([255, 200, 0], dtype=np.float32)  # amber: labelled change (audit tiles)
M_PER_DEGREE = 111_320.0  # metres per degree of longitude at the equator (WGS84, to 0.1 %)
Panel = dict[str, Any]


def data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def tint(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``rgb`` dimmed, with ``mask`` pixels painted in ``colour`` (what the legend names)."""
    out = rgb.astype(np.float32) * 0.7
    hit = mask > 0
    out[hit] = 0.35 * out[hit] + 0.65 * colour
    return out.astype(np.uint8)


def _nice(length: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``length``."""
    k = 10 ** math.floor(math.log10(length))
    return max(m * k for m in (1, 2, 5) if m * k <= length)


def scale_bar(transform: Sequence[float] | Affine | None, crs: str | CRS | None, bounds_y: float,
              source_px: int, shown_px: int) -> dict | None:
    """A scale bar for a picture of ``source_px`` raster columns shown ``shown_px`` wide.

    ``{"px": bar width on the page, "label": "20 m", "note": ...}``; None without a
    georeference. Geographic CRSs (EPSG:4326) are converted at latitude ``bounds_y`` (the
    picture's centre) and say so; other linear units are converted to metres.
    """
    if transform is None or crs is None or source_px <= 0 or shown_px <= 0:
        return None
    t = transform if isinstance(transform, Affine) else Affine(*list(transform)[:6])
    if t.is_identity:
        return None
    ref: CRS = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    pixel = abs(t.a)
    note = ""
    if ref.is_geographic:
        metres_per_px = pixel * M_PER_DEGREE * math.cos(math.radians(bounds_y))
        note = f"converted at latitude {bounds_y:.2f}\N{DEGREE SIGN}: the scale holds east-west at that latitude"
    else:
        try:
            metres_per_px = pixel * float(ref.linear_units_factor[1])
        except Exception:  # noqa: BLE001 - a CRS without linear units: no honest scale
            return None
    per_shown_px = metres_per_px * source_px / shown_px
    if not per_shown_px > 0:
        return None
    length = _nice(per_shown_px * shown_px * 0.4)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    return {"px": max(1, round(length / per_shown_px)), "label": label, "note": note,
            "gsd": f"{metres_per_px:.3g} m per pixel"}


def _read_rgb(path: str, shape: tuple[int, int], bounds=None) -> np.ndarray:
    with storage.local_copy(path) as local, rasterio.open(local) as src:
        window = src.window(*bounds) if bounds is not None and src.crs is not None else None
        img = src.read([1, 2, 3] if src.count >= 3 else [1, 1, 1], window=window, out_shape=(3, *shape),
                       boundless=window is not None, resampling=Resampling.average)
    return to_display(img)


def _find(root: str, names: Sequence[str], stem: str) -> str | None:
    store = storage.storage_for(root)
    for folder in names:
        for ext in (".tif", ".tiff", ".png", ".jpg"):
            uri = storage.join(root, folder, stem + ext)
            if store.exists(uri):
                return uri
    return None


def scene_figure(imagery: str, scene: dict, max_px: int = 320) -> dict | None:
    """pre | post | prediction of one predicted scene, at most ``max_px`` wide each."""
    pre = _find(imagery, ("pre", "A"), scene["name"])
    post = _find(imagery, ("post", "B"), scene["name"])
    if pre is None or post is None or not storage.storage_for(scene["change"]).exists(scene["change"]):
        return None
    with storage.local_copy(scene["change"]) as local, rasterio.open(local) as chg:
        f = max(chg.width, chg.height) / max_px
        shape = (max(1, round(chg.height / max(f, 1))), max(1, round(chg.width / max(f, 1))))
        change = chg.read(1, out_shape=shape, resampling=Resampling.nearest)
        bounds, transform, crs, width = chg.bounds, chg.transform, chg.crs, chg.width
    pre_rgb, post_rgb = _read_rgb(pre, shape, bounds), _read_rgb(post, shape, bounds)
    panels = [{"title": "pre", "src": data_uri(pre_rgb)}, {"title": "post", "src": data_uri(post_rgb)},
              {"title": "prediction", "src": data_uri(tint(post_rgb, change, PREDICTED))}]
    return {"panels": panels, "width": shape[1], "height": shape[0],
            "scale": scale_bar(transform, crs, (bounds.bottom + bounds.top) / 2, width, shape[1])}


def _tile_change(tile: dict, pair: dict | None, scene: dict | None) -> np.ndarray | None:
    """The predicted change map under one tile (from the predict step's map of its scene)."""
    if scene is None or not storage.storage_for(scene["change"]).exists(scene["change"]):
        return None
    w = tile.get("window") or {}
    size = (int(w.get("height", 0)), int(w.get("width", 0)))
    if not all(size):
        return None
    with storage.local_copy(scene["change"]) as local, rasterio.open(local) as src:
        if src.crs is not None and tile.get("bounds"):
            window = from_bounds(*tile["bounds"], transform=src.transform)
        else:  # not georeferenced: the map starts at the scene area's corner
            area = (pair or {}).get("area") or {}
            window = Window(w["col_off"] - area.get("col_off", 0), w["row_off"] - area.get("row_off", 0),
                            size[1], size[0])
        return src.read(1, window=window, out_shape=size, boundless=True, fill_value=0)


def _png(uri: str) -> np.ndarray | None:
    store = storage.storage_for(uri)
    if not store.exists(uri):
        return None
    return np.asarray(Image.open(io.BytesIO(store.get_bytes(uri))).convert("RGB"))


def _label(uri: str | None) -> np.ndarray | None:
    if not uri or not storage.storage_for(uri).exists(uri):
        return None
    with storage.local_copy(uri) as local, rasterio.open(local) as src:
        return src.read(1)


def tile_figure(images: str | None, tile_id: str, tile: dict | None, pair: dict | None, scene: dict | None,
                label_uri: str | None, shown_px: int = 128) -> dict:
    """pre | post | prediction (| label) of one selected tile, each ``shown_px`` wide."""
    pre = _png(storage.join(images, f"{tile_id}_pre.png")) if images else None
    post = _png(storage.join(images, f"{tile_id}_post.png")) if images else None
    panels: list[Panel] = []
    if pre is not None and post is not None:
        panels += [{"title": "pre", "src": data_uri(pre)}, {"title": "post", "src": data_uri(post)}]
        change = _tile_change(tile, pair, scene) if tile is not None else None
        if change is not None and change.shape == post.shape[:2]:
            panels.append({"title": "prediction", "src": data_uri(tint(post, change, PREDICTED))})
        label = _label(label_uri)
        if label is not None and label.shape == post.shape[:2]:
            panels.append({"title": "label", "src": data_uri(tint(post, label, LABELLED))})
    scale = None
    if tile is not None and post is not None:
        b = tile.get("bounds") or [0, 0, 0, 0]
        scale = scale_bar(tile.get("transform"), tile.get("crs"), (b[1] + b[3]) / 2, post.shape[1], shown_px)
    return {"panels": panels, "width": shown_px, "scale": scale}
