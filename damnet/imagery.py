"""Reading bi-temporal imagery: LEVIR-style folders and georeferenced scene pairs.

Two layouts are recognised in a region folder:

* ``A/``, ``B/``, optional ``label/`` (LEVIR-CD style): same-named PNG or TIFF images of
  the same size, one pair per name. No georeference is needed.
* ``pre/``, ``post/``, optional ``label/``: same-named GeoTIFF scenes with a CRS (e.g. OSCD:
  ``pre/abudhabi.tif``, ``post/abudhabi.tif``, ``label/abudhabi.tif``). The grids may
  differ: the post scene (and the label) are then resampled onto the pre grid, and only the
  overlap of the footprints is used.

Bands (:func:`parse_bands`) are chosen by 1-based number or by band description
(``B04,B03,B02`` for Sentinel-2 files whose bands are described ``"B04 red"`` ...).

Labels (:class:`LabelReading`) may be grey, grey+alpha, RGB, RGBA or palette images, 0/1
or 0..255 with anti-aliased edges: a pixel's value is the largest of its colour
components (a palette entry's colour, composited over black by its alpha), a 0/1 label is
read as 0/255, and a pixel is change when its value is above the label threshold
(:data:`DEFAULT_LABEL_THRESHOLD`, 127).

:func:`discover_pairs` finds the pairs; :func:`open_pair` opens and checks one of them and
gives windowed access on the pre grid, so scenes larger than memory can be tiled. Every
problem is an :class:`~damnet.errors.ImageryError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from damnet.errors import ImageryError, ImageryErrors

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LAYOUTS = {"levir": ("A", "B"), "geotiff": ("pre", "post")}
#: A label pixel is change when its value (0..255 scale) is above this.
DEFAULT_LABEL_THRESHOLD = 127
#: Folder names that hold labels in other datasets' layouts; ingest reads only ``label/``.
LABEL_LOOKALIKES = ("labels", "Label", "Labels", "mask", "masks", "gt", "GT", "cm")


@dataclass(frozen=True)
class PairFiles:
    """The files of one bi-temporal pair (``label`` may be absent)."""

    name: str
    pre: Path
    post: Path
    label: Path | None
    layout: str  #: "levir" or "geotiff"


def detect_layout(root: Path) -> str:
    for layout, (d1, d2) in LAYOUTS.items():
        if (root / d1).is_dir() and (root / d2).is_dir():
            return layout
    found = sorted(p.name + "/" for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    raise ImageryError(
        root, "not a region folder: expected A/ and B/ (LEVIR style) or pre/ and post/ "
        "(GeoTIFF pairs), each with an optional label/; "
        + (f"found {', '.join(found)}" if found else "found no sub-folders")
    )


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def discover_pairs(root: Path, require_labels: bool = False,
                   check_labels: bool = True) -> tuple[list[PairFiles], list[ImageryError]]:
    """Pair up the images of a region folder by file name (the stem: ``x.png`` and ``x.tif``
    pair up).

    Returns the complete pairs and one error per image that has no partner (or no label,
    when labels are required) and, unless ``check_labels`` is off, per label that has no
    image pair (a label named otherwise than its images would silently be unused).
    """
    root = Path(root)
    layout = detect_layout(root)
    d1, d2 = LAYOUTS[layout]
    first, second, labels = _images(root / d1), _images(root / d2), _images(root / "label")
    lookalikes = [] if labels else [n + "/" for n in LABEL_LOOKALIKES if (root / n).is_dir()]
    if lookalikes:
        log.warning("%s: has %s but no label/; labels are read from label/ only (rename the "
                    "folder to use them)", root, ", ".join(lookalikes))
    pairs, errors = [], []
    for name in sorted(set(first) | set(second)):
        if name not in second:
            errors.append(ImageryError(first[name], f"has no partner in {d2}/"))
            continue
        if name not in first:
            errors.append(ImageryError(second[name], f"has no partner in {d1}/"))
            continue
        label = labels.get(name)
        if label is None and require_labels:
            hint = f" (found {', '.join(lookalikes)}: rename it to label/)" if lookalikes else ""
            errors.append(ImageryError(first[name], "has no label in label/ but labels are "
                                       f"required{hint}"))
            continue
        pairs.append(PairFiles(name, first[name], second[name], label, layout))
    if check_labels:
        for name in sorted(set(labels) - set(first) - set(second)):
            errors.append(ImageryError(labels[name], f"label has no image named {name!r} in "
                                       f"{d1}/ or {d2}/; labels must be named like their images"))
    if not pairs and not errors:
        errors.append(ImageryError(root / d1, "contains no images (.png, .tif, .jpg)"))
    return pairs, errors


Band = int | str  #: a 1-based band number or a band description (or a word of it)


def parse_bands(text: str | Sequence[Band] | None) -> tuple[Band, ...] | None:
    """The R, G, B bands to read, by 1-based number or by band description.

    ``"3,2,1"`` -> ``(3, 2, 1)``; ``"B04,B03,B02"`` -> ``("B04", "B03", "B02")`` (resolved
    per file by :func:`resolve_bands`). None or ``""``: the image must have exactly 3 bands.
    """
    if text is None or text == "":
        return None
    items = [b.strip() if isinstance(b, str) else b for b in
             (text.split(",") if isinstance(text, str) else text)]
    bands = tuple(int(b) if isinstance(b, str) and b.isdigit() else b for b in items)
    if (len(bands) != 3 or any(b == "" for b in bands)
            or any(isinstance(b, int) and b < 1 for b in bands)):
        raise ValueError("bands must be three 1-based band numbers or band descriptions in "
                         f"R,G,B order (e.g. 3,2,1 or B04,B03,B02), got {text!r}")
    return bands


def _open(path: Path) -> rasterio.DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise ImageryError(path, f"cannot be read as an image ({exc})") from None


def _describe_bands(src) -> str:
    interp = [c.name for c in src.colorinterp]
    if src.count == 4 and ColorInterp.alpha in src.colorinterp:
        return "4 bands (RGBA)"
    if src.count == 1:
        return "1 band (single-band / grey)"
    return f"{src.count} bands ({', '.join(interp)})"


def _band_names(src) -> str:
    return ", ".join(f"{i} {d}" if d else str(i) for i, d in enumerate(src.descriptions, 1))


def resolve_bands(src, path: Path, bands: Sequence[Band]) -> tuple[int, ...]:
    """Band numbers for ``bands`` (numbers or descriptions) in ``src``, or an error naming
    ``path``. A name matches a band whose description equals it or has it as one of its
    words, case-insensitively: ``B04``, ``red`` and ``B04 red`` all match ``"B04 red"``."""
    asked = ",".join(map(str, bands))
    out = []
    for band in bands:
        if isinstance(band, int):
            if not 1 <= band <= src.count:
                raise ImageryError(path, f"has {src.count} band(s) ({_band_names(src)}); band "
                                   f"{band} does not exist (bands={asked})")
            out.append(band)
            continue
        key = band.lower()
        hits = [i for i, d in enumerate(src.descriptions, 1)
                if d and (d.lower() == key or key in d.lower().split())]
        if len(hits) != 1:
            what = "no band" if not hits else f"{len(hits)} bands ({', '.join(map(str, hits))})"
            raise ImageryError(path, f"has {what} described {band!r} among its {src.count} "
                               f"band(s) ({_band_names(src)}); bands={asked}")
        out.append(hits[0])
    return tuple(out)


def _check_bands(src, path: Path, bands: Sequence[Band] | None) -> tuple[int, ...]:
    if bands is None:
        if src.count != 3:
            raise ImageryError(
                path, f"has {_describe_bands(src)} where RGB (3 bands) is expected; "
                "choose the red, green and blue bands with bands=R,G,B"
            )
        return (1, 2, 3)
    return resolve_bands(src, path, bands)


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


def _label_kind(src, path: Path) -> tuple[str, tuple[int, ...], bool]:
    ci = src.colorinterp
    if src.count == 1:
        return ("palette" if ci[0] == ColorInterp.palette else "grey"), (1,), False
    if src.count == 2 and ci[1] == ColorInterp.alpha:
        return "grey+alpha", (1, 2), True
    if src.count == 3 and ColorInterp.alpha not in ci:
        return "RGB", (1, 2, 3), False
    if src.count == 4 and ci[3] == ColorInterp.alpha:
        return "RGBA", (1, 2, 3, 4), True
    raise ImageryError(path, f"label has {_describe_bands(src)}; a label must be grey (1 band), "
                       "grey+alpha, RGB, RGBA or a palette image")


def _palette_lut(src, path: Path) -> np.ndarray:
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
    src = _open(Path(path))
    with src:
        reading = label_reading(src, path, threshold)
        try:
            raw, _ = OpenPair._read_padded(src, reading.bands, window, masked=False)
        except RasterioIOError as exc:
            raise ImageryError(path, f"cannot be read at window {window} ({exc})") from None
    return reading.binary(raw)


@dataclass
class Stretch:
    """Per-band linear stretch to 0..255 (identity for 8-bit imagery)."""

    low: list[float]
    high: list[float]

    def apply(self, data: np.ndarray) -> np.ndarray:
        lo = np.asarray(self.low, dtype=np.float32)[:, None, None]
        hi = np.asarray(self.high, dtype=np.float32)[:, None, None]
        scaled = (data.astype(np.float32) - lo) / np.maximum(hi - lo, 1e-6)
        return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)


def percentile_stretch(src, bands: tuple[int, ...], percentiles=(2.0, 98.0),
                       max_pixels: int = 512) -> Stretch:
    """Robust stretch from a decimated read of the whole scene (bounded memory).

    8-bit data is kept as it is; any other type maps the ``percentiles`` of the valid pixels
    of each band to 0 and 255.
    """
    if src.dtypes[bands[0] - 1] == "uint8":
        return Stretch([0.0] * len(bands), [255.0] * len(bands))
    scale = max(src.width, src.height) / max_pixels
    shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
    data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest,
                    masked=True)
    lows, highs = [], []
    for band in data:
        valid = band.compressed()
        if valid.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        lo, hi = np.percentile(valid, percentiles)
        lows.append(float(lo))
        highs.append(float(hi if hi > lo else lo + 1))
    return Stretch(lows, highs)


def _stretch(src, bands, path: Path) -> Stretch:
    try:
        return percentile_stretch(src, bands)
    except RasterioIOError as exc:
        raise ImageryError(path, f"cannot be read ({exc})") from None


@dataclass
class OpenPair:
    """An opened, checked pair with windowed access on the pre-image grid.

    ``window`` is the part of the pre grid where both dates have data; reads outside the
    datasets are padded and masked.
    """

    files: PairFiles
    pre: rasterio.DatasetReader
    post: rasterio.io.DatasetReaderBase  # the post dataset or a WarpedVRT onto the pre grid
    label: rasterio.io.DatasetReaderBase | None
    bands_pre: tuple[int, ...]
    bands_post: tuple[int, ...]
    stretch_pre: Stretch
    stretch_post: Stretch
    window: Window
    notes: list[str] = field(default_factory=list)
    label_reading: LabelReading | None = None  #: how ``label``'s pixels become 0/1

    @property
    def transform(self):
        return self.pre.transform

    @property
    def crs(self):
        return self.pre.crs

    def _read(self, src, bands, window: Window, masked: bool, path: Path):
        """Read ``window`` (may reach outside ``src``); pad with 0 and mask what is outside."""
        try:
            return self._read_padded(src, bands, window, masked)
        except RasterioIOError as exc:
            raise ImageryError(path, f"cannot be read at window {window} ({exc})") from None

    @staticmethod
    def _read_padded(src, bands, window: Window, masked: bool):
        out = np.zeros((len(bands), int(window.height), int(window.width)), dtype=src.dtypes[0])
        valid = np.zeros((int(window.height), int(window.width)), dtype=bool)
        inner = window.intersection(Window(0, 0, src.width, src.height)) if _overlaps(
            window, src) else None
        if inner is not None:
            inner = inner.round_offsets().round_lengths()
            r0, c0 = int(inner.row_off - window.row_off), int(inner.col_off - window.col_off)
            h, w = int(inner.height), int(inner.width)
            out[:, r0 : r0 + h, c0 : c0 + w] = src.read(list(bands), window=inner)
            if masked:  # GDAL's dataset mask: alpha, internal mask, or any band not nodata
                valid[r0 : r0 + h, c0 : c0 + w] = src.dataset_mask(window=inner) > 0
            else:
                valid[r0 : r0 + h, c0 : c0 + w] = True
        return out, valid

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Pre and post as (3, h, w) uint8, the validity mask (h, w) and the 0/1 label or None."""
        f = self.files
        pre, v1 = self._read(self.pre, self.bands_pre, window, masked=True, path=f.pre)
        post, v2 = self._read(self.post, self.bands_post, window, masked=True, path=f.post)
        label = None
        if self.label is not None:
            reading = self.label_reading
            raw, _ = self._read(self.label, reading.bands, window, masked=False, path=f.label)
            label = reading.binary(raw)
        return self.stretch_pre.apply(pre), self.stretch_post.apply(post), v1 & v2, label

    def close(self) -> None:
        for ds in (self.label, self.post, self.pre):
            if ds is not None and not ds.closed:
                ds.close()


def _overlaps(window: Window, src) -> bool:
    return (window.col_off < src.width and window.row_off < src.height
            and window.col_off + window.width > 0 and window.row_off + window.height > 0)


def _same_grid(a, b) -> bool:
    return (a.crs == b.crs and a.width == b.width and a.height == b.height
            and a.transform.almost_equals(b.transform))


def _onto_grid(src, ref, resampling: Resampling, what: str, notes: list[str], path: Path):
    """``src`` itself when it shares ``ref``'s grid, else a lazy WarpedVRT onto that grid."""
    if _same_grid(src, ref):
        return src
    def res(ds) -> str:  # pixel size in the CRS's unit (degrees for EPSG:4326)
        unit = "deg" if ds.crs is not None and ds.crs.is_geographic else "m"
        return f"{abs(ds.res[0]):g} {unit}"

    notes.append(
        f"{path}: {what} resampled onto the pre grid ({src.crs.to_string() if src.crs else 'no CRS'}"
        f" {src.width}x{src.height} px of {res(src)} -> {ref.crs.to_string()} "
        f"{ref.width}x{ref.height} px of {res(ref)}, {resampling.name})"
    )
    log.warning(notes[-1])
    return WarpedVRT(src, crs=ref.crs, transform=ref.transform, width=ref.width,
                     height=ref.height, resampling=resampling, add_alpha=resampling != Resampling.nearest)


def _footprint_window(pre, post_src, path: Path) -> Window:
    """The window of the pre grid covered by the post scene; an error when they miss."""
    try:
        left, bottom, right, top = transform_bounds(post_src.crs, pre.crs, *post_src.bounds)
    except Exception as exc:  # noqa: BLE001 - GDAL raises many kinds here
        raise ImageryError(path, f"cannot transform its footprint to {pre.crs}: {exc}") from None
    pl, pb, pr, pt = pre.bounds
    il, ib, ir, it = max(left, pl), max(bottom, pb), min(right, pr), min(top, pt)
    if il >= ir or ib >= it:
        raise ImageryError(
            path, f"footprint does not overlap the pre scene {pre.name} "
            f"(post in {post_src.crs.to_string()}, pre in {pre.crs.to_string()}): nothing to compare"
        )
    win = from_bounds(il, ib, ir, it, pre.transform)
    col0, row0 = max(0, math.floor(win.col_off + 1e-6)), max(0, math.floor(win.row_off + 1e-6))
    col1 = min(pre.width, math.ceil(win.col_off + win.width - 1e-6))
    row1 = min(pre.height, math.ceil(win.row_off + win.height - 1e-6))
    return Window(col0, row0, col1 - col0, row1 - row0)


def open_pair(files: PairFiles, bands: Sequence[Band] | None = None,
              require_labels: bool = False,
              label_threshold: int = DEFAULT_LABEL_THRESHOLD) -> OpenPair:
    """Open and check one pair. Raises :class:`ImageryError` naming the file at fault.

    ``bands``: R, G, B band numbers or descriptions (:func:`parse_bands`), resolved in each
    file. ``label_threshold``: a label pixel is change when its 0..255 value is above it
    (:class:`LabelReading`).
    """
    opened: list = []
    try:
        pre = _open(files.pre)
        opened.append(pre)
        post = _open(files.post)
        opened.append(post)
        bands_pre = _check_bands(pre, files.pre, bands)
        bands_post = _check_bands(post, files.post, bands)
        label = reading = None
        if files.label is not None:
            label = _open(files.label)
            opened.append(label)
            reading = label_reading(label, files.label, label_threshold)
        elif require_labels:
            raise ImageryError(files.pre, "has no label but labels are required")
        notes: list[str] = []
        if files.layout == "levir":
            if (post.width, post.height) != (pre.width, pre.height):
                raise ImageryError(files.post, f"is {post.width}x{post.height} but "
                                   f"{files.pre} is {pre.width}x{pre.height}; A and B must match")
            if label is not None and (label.width, label.height) != (pre.width, pre.height):
                raise ImageryError(files.label, f"is {label.width}x{label.height} but the "
                                   f"images are {pre.width}x{pre.height}")
            window = Window(0, 0, pre.width, pre.height)
        else:
            for ds, path in ((pre, files.pre), (post, files.post)):
                if ds.crs is None:
                    raise ImageryError(path, "has no CRS; GeoTIFF pairs (pre/, post/) must be "
                                       "georeferenced (use an A/ B/ folder for plain images)")
            plain_label = label is not None and label.crs is None
            if plain_label:  # e.g. a PNG mask drawn on the pre scene's pixels
                if (label.width, label.height) != (pre.width, pre.height):
                    raise ImageryError(files.label, f"has no CRS and is {label.width}x"
                                       f"{label.height}, not the pre scene's {pre.width}x"
                                       f"{pre.height}: it cannot be placed on the pre grid")
                notes.append(f"{files.label}: label has no CRS; taken to lie on the pre grid "
                             f"(same size, {pre.width}x{pre.height})")
            window = _footprint_window(pre, post, files.post)
            post = _onto_grid(post, pre, Resampling.bilinear, "post image", notes, files.post)
            if post is not opened[1]:
                opened.append(post)
            if label is not None and not plain_label:
                _footprint_window(pre, label, files.label)
                warped = _onto_grid(label, pre, Resampling.nearest, "label", notes, files.label)
                if warped is not label:
                    opened.append(warped)
                label = warped
        if reading is not None and reading.note():
            notes.append(reading.note())
        return OpenPair(
            files, pre, post, label, bands_pre, bands_post,
            _stretch(pre, bands_pre, files.pre), _stretch(post, bands_post, files.post),
            window, notes, label_reading=reading,
        )
    except BaseException:
        for ds in reversed(opened):
            with contextlib.suppress(Exception):
                ds.close()
        raise


@contextlib.contextmanager
def opened(files: PairFiles, **kwargs) -> Iterator[OpenPair]:
    pair = open_pair(files, **kwargs)
    try:
        yield pair
    finally:
        pair.close()


def check_region(root: Path, bands=None, require_labels: bool = False, skip_bad: bool = False,
                 ignore_labels: bool = False,
                 label_threshold: int = DEFAULT_LABEL_THRESHOLD) -> tuple[list[PairFiles], list[ImageryError]]:
    """Discover and open every pair once; return the usable pairs and the skipped problems.

    With ``skip_bad`` each bad pair costs one warning line; otherwise all problems are
    raised together as :class:`ImageryErrors`.
    """
    pairs, errors = discover_pairs(root, require_labels=require_labels,
                                   check_labels=not ignore_labels)
    if ignore_labels:  # e.g. prediction: the label files are neither opened nor checked
        pairs = [replace(files, label=None) for files in pairs]
    good = []
    for files in pairs:
        try:
            with opened(files, bands=bands, require_labels=require_labels,
                        label_threshold=label_threshold):
                pass
        except ImageryError as exc:
            errors.append(exc)
            continue
        good.append(files)
    if errors:
        if not skip_bad or not good:
            raise ImageryErrors(errors)
        for exc in errors:
            log.warning("skipped: %s", exc)
    return good, errors
