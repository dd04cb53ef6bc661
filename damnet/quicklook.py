"""8-bit quicklooks for people: pre | post | label side by side."""

from __future__ import annotations

import numpy as np
from PIL import Image

from damnet import storage


def to_display(img: np.ndarray, percentiles=(1.0, 99.0)) -> np.ndarray:
    """(3, H, W) of any dtype -> (H, W, 3) uint8; non-8-bit data gets a percentile stretch."""
    if img.dtype == np.uint8:
        return np.moveaxis(img, 0, -1)
    out = np.empty(img.shape[1:] + (3,), dtype=np.uint8)
    for b in range(3):
        lo, hi = np.percentile(img[b], percentiles)
        out[..., b] = np.clip((img[b] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return out


def side_by_side(pre: np.ndarray, post: np.ndarray, label: np.ndarray | None = None,
                 gap: int = 6) -> np.ndarray:
    """One (H, W', 3) uint8 picture of the dates and, if given, the change label in white."""
    panels = [to_display(pre), to_display(post)]
    if label is not None:
        panels.append(np.repeat((label > 0).astype(np.uint8)[..., None] * 255, 3, axis=-1))
    h = panels[0].shape[0]
    sep = np.full((h, gap, 3), 255, dtype=np.uint8)
    parts = []
    for i, p in enumerate(panels):
        parts += [sep] * (i > 0) + [p]
    return np.concatenate(parts, axis=1)


def save_png(uri: str, rgb: np.ndarray) -> None:
    with storage.storage_for(uri).writing(uri, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", optimize=True)
