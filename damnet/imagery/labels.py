"""Reading change-label files as 0/1 change, whatever their mode.

Labels (:class:`LabelReading`) may be grey, grey+alpha, RGB, RGBA or palette images, 0/1
or 0..255 with anti-aliased edges: a pixel's value is the largest of its colour
components (a palette entry's colour, composited over black by its alpha), a 0/1 label is
read as 0/255, and a pixel is change when its value is above the label threshold
(:data:`DEFAULT_LABEL_THRESHOLD`, 127).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from damnet.errors import ImageryError
from damnet.imagery.raster import describe_bands, open_raster, read_padded

#: A label pixel is change when its value (0..255 scale) is above this.
DEFAULT_LABEL_THRESHOLD = 127


def check_label_threshold(threshold: int) -> int:
    """``threshold`` as an int in 0..254, or a ValueError saying why not."""
    if isinstance(threshold, bool) or not float(threshold).is_integer() or not 0 <= threshold <= 254:
        raise ValueError(f"label threshold must be a whole number in 0..254 (a pixel is change "
                         f"when its 0..255 value is above it), got {threshold!r}")
    return int(threshold)


@dataclass(frozen=True)
class LabelReading:
    """How the pixels of one label file become 0/1 change (see :func:`label_reading`).

    A pixel's *value* is the largest of its colour components (grey: the grey value;
    palette: the largest component of its palette colour), multiplied by ``alpha / full``
    where the image has an alpha band or palette transparency (composited over black: a
    transparent pixel is no change). A label whose values all lie in 0..1 (0/1 masks) is
    scaled to 0..255 first. The pixel is change when its value is above ``threshold``.
    """

    path: str
    kind: str  #: "grey", "grey+alpha", "RGB", "RGBA" or "palette"
    bands: tuple[int, ...]  #: the bands read: colour band(s), then alpha if any
    alpha_full: float | None  #: the alpha value of an opaque pixel; None without alpha
    lut: np.ndarray | None  #: palette index -> value (0..255), for palette labels
    scale: float  #: 255 for a 0..1 label, else 1
    threshold: int
    levels: int  #: distinct values in the file (on the 0..255 scale, rounded up)
    changed: float  #: share of the file's pixels that read as change

    def values(self, raw: np.ndarray, scaled: bool = True) -> np.ndarray:
        """(len(bands), H, W) raw pixels -> (H, W) float32 values (0..255 when ``scaled``)."""
        colour = raw[:-1] if self.alpha_full is not None else raw
        if self.lut is not None:
            index = colour[0].astype(np.int64)
            value = np.where((index >= 0) & (index < self.lut.size),
                             self.lut[np.clip(index, 0, self.lut.size - 1)], 0).astype(np.float32)
        else:
            value = colour.max(axis=0).astype(np.float32)
        if self.alpha_full is not None:
            value = value * (raw[-1].astype(np.float32) / self.alpha_full)
        return value * self.scale if scaled else value

    def binary(self, raw: np.ndarray) -> np.ndarray:
        """(len(bands), H, W) raw pixels -> (H, W) uint8 0/1 change."""
        return (self.values(raw) > self.threshold).astype(np.uint8)

    def note(self) -> str | None:
        """A line for the manifest when the label is anything but a plain binary mask."""
        if self.levels <= 2 and self.kind != "palette":
            return None
        how = {"grey": "grey", "grey+alpha": "grey x alpha", "RGB": "max(R,G,B)",
               "RGBA": "max(R,G,B) x alpha", "palette": "max(R,G,B) of the palette colour"}
        return (f"{self.path}: {self.kind} label with {self.levels} value levels read as "
                f"change where {how[self.kind]}{' (0/1 scaled to 0/255)' if self.scale != 1 else ''}"
                f" > {self.threshold}: {self.changed:.2%} of its pixels")


def _label_kind(src, path: Path | str) -> tuple[str, tuple[int, ...], bool]:
    ci = src.colorinterp
    if src.count == 1:
        return ("palette" if ci[0] == ColorInterp.palette else "grey"), (1,), False
    if src.count == 2 and ci[1] == ColorInterp.alpha:
        return "grey+alpha", (1, 2), True
    if src.count == 3 and ColorInterp.alpha not in ci:
        return "RGB", (1, 2, 3), False
    if src.count == 4 and ci[3] == ColorInterp.alpha:
        return "RGBA", (1, 2, 3, 4), True
    raise ImageryError(path, f"label has {describe_bands(src)}; a label must be grey (1 band), "
                       "grey+alpha, RGB, RGBA or a palette image")


def _palette_lut(src, path: Path | str) -> np.ndarray:
    try:
        cmap = src.colormap(1)
    except ValueError:
        raise ImageryError(path, "label is a palette image without a colour table") from None
    lut = np.zeros(max(cmap) + 1 if cmap else 1, np.float32)
    for index, (r, g, b, *a) in cmap.items():
        lut[index] = max(r, g, b) * ((a[0] if a else 255) / 255)
    return lut


def label_reading(src, path: Path | str, threshold: int = DEFAULT_LABEL_THRESHOLD) -> LabelReading:
    """Inspect a label file (its mode and, in blocks of rows, all its values) and say how it
    is read; an :class:`ImageryError` naming the file when it cannot be read as a label.

    Refused: other band layouts (e.g. 4 bands without alpha), negative or non-finite values,
    values above 255 (other than 0/1 masks), and a label with non-zero values none of which
    is above the threshold (a class-index label read with the 0..255 threshold would be all
    no change: set the threshold, e.g. 0, to read it).
    """
    threshold = check_label_threshold(threshold)
    kind, bands, has_alpha = _label_kind(src, path)
    dtype = np.dtype(src.dtypes[bands[-1] - 1])
    alpha_full = (float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0) if has_alpha else None
    lut = _palette_lut(src, path) if kind == "palette" else None
    probe = LabelReading(str(path), kind, bands, alpha_full, lut, 1.0, threshold, 0, 0.0)
    # Histograms of ceil(value) on both candidate scales: value > t <=> ceil(value) > t.
    hist_255, hist_1 = np.zeros(257, np.int64), np.zeros(257, np.int64)
    vmin, vmax = math.inf, -math.inf
    rows = max(1, (1 << 22) // max(1, src.width * len(bands)))
    try:
        for row in range(0, src.height, rows):
            win = Window(0, row, src.width, min(rows, src.height - row))
            value = probe.values(src.read(list(bands), window=win), scaled=False).ravel()
            if not np.isfinite(value).all():
                raise ImageryError(path, "label has NaN or infinite values")
            vmin, vmax = min(vmin, float(value.min())), max(vmax, float(value.max()))
            hist_255 += np.bincount(np.clip(np.ceil(value), 0, 256).astype(np.int64), minlength=257)
            hist_1 += np.bincount(np.clip(np.ceil(value * 255), 0, 256).astype(np.int64), minlength=257)
    except RasterioIOError as exc:
        raise ImageryError(path, f"label cannot be read ({exc})") from None
    if vmin < 0:
        raise ImageryError(path, f"label has negative values (down to {vmin:g}); a label is 0/1 "
                           "or 0..255")
    if vmax > 255:
        raise ImageryError(path, f"label values reach {vmax:g}; a label is 0/1 or 0..255 "
                           "(8-bit), change where the value is above the label threshold")
    scale, hist = (255.0, hist_1) if vmax <= 1 else (1.0, hist_255)
    changed = int(hist[threshold + 1 :].sum())
    if changed == 0 and hist[1:].sum() > 0:
        raise ImageryError(path, f"label has non-zero values (up to {vmax:g}) but none above the "
                           f"label threshold {threshold}, so it would read as no change at all; "
                           "for class numbers (1, 2, ...) set the label threshold to 0")
    return replace(probe, scale=scale, levels=int((hist > 0).sum()),
                   changed=changed / max(1, int(hist.sum())))


def read_label_window(path: Path | str, window: Window,
                      threshold: int = DEFAULT_LABEL_THRESHOLD) -> np.ndarray:
    """The (h, w) 0/1 change of ``window`` of a label file (any mode :func:`label_reading`
    accepts), padded with no change where the window reaches outside the file."""
    src = open_raster(Path(path))
    with src:
        reading = label_reading(src, path, threshold)
        try:
            raw, _ = read_padded(src, reading.bands, window, masked=False)
        except RasterioIOError as exc:
            raise ImageryError(path, f"cannot be read at window {window} ({exc})") from None
    return reading.binary(raw)
