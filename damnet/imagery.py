"""Reading bi-temporal imagery: LEVIR-style folders and georeferenced scene pairs.

Two layouts are recognised in a region folder:

* ``A/``, ``B/``, optional ``label/`` (LEVIR-CD style): same-named PNG or TIFF images of
  the same size, one pair per name, labels 0/255 or 0/1. No georeference is needed.
* ``pre/``, ``post/``, optional ``label/``: same-named GeoTIFF scenes with a CRS. The grids
  may differ: the post scene (and the label) are then resampled onto the pre grid, and only
  the overlap of the footprints is used.

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
    raise ImageryError(
        root, "not a region folder: expected A/ and B/ (LEVIR style) or pre/ and post/ "
        "(GeoTIFF pairs), each with an optional label/"
    )


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def discover_pairs(root: Path, require_labels: bool = False) -> tuple[list[PairFiles], list[ImageryError]]:
    """Pair up the images of a region folder by file name.

    Returns the complete pairs and one error per image that has no partner (or no label,
    when labels are required).
    """
    root = Path(root)
    layout = detect_layout(root)
    d1, d2 = LAYOUTS[layout]
    first, second, labels = _images(root / d1), _images(root / d2), _images(root / "label")
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
            errors.append(ImageryError(first[name], "has no label in label/ but labels are required"))
            continue
        pairs.append(PairFiles(name, first[name], second[name], label, layout))
    if not pairs and not errors:
        errors.append(ImageryError(root / d1, "contains no images (.png, .tif, .jpg)"))
    return pairs, errors


def parse_bands(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"3,2,1"`` -> ``(3, 2, 1)``: 1-based band numbers in R, G, B order."""
    if text is None or text == "":
        return None
    bands = tuple(int(b) for b in (text.split(",") if isinstance(text, str) else text))
    if len(bands) != 3 or min(bands) < 1:
        raise ValueError(f"bands must be three 1-based band numbers (R,G,B), got {text!r}")
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


def _check_bands(src, path: Path, bands: tuple[int, ...] | None) -> tuple[int, ...]:
    if bands is None:
        if src.count != 3:
            raise ImageryError(
                path, f"has {_describe_bands(src)} where RGB (3 bands) is expected; "
                "choose the red, green and blue bands with bands=R,G,B"
            )
        return (1, 2, 3)
    if max(bands) > src.count:
        raise ImageryError(path, f"has {src.count} band(s) but bands={','.join(map(str, bands))} "
                           "were asked for")
    return bands


def _check_label_src(src, path: Path) -> None:
    if src.count != 1:
        raise ImageryError(path, f"label has {_describe_bands(src)}; a label must be one band "
                           "with values 0/1 or 0/255")


def label_to_binary(values: np.ndarray, path: Path | str) -> np.ndarray:
    """Map a label window (0/1 or 0/255) to 0/1 uint8, or fail naming the values."""
    present = np.unique(values)
    if present.size and not (set(present.tolist()) <= {0, 1} or set(present.tolist()) <= {0, 255}):
        shown = ", ".join(str(v) for v in present[:8].tolist())
        raise ImageryError(path, f"label values are not binary: found {shown} "
                           "(expected 0/1 or 0/255)")
    return (values > 0).astype(np.uint8)


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
            raw, _ = self._read(self.label, (1,), window, masked=False, path=f.label)
            label = label_to_binary(raw[0], self.files.label)
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
    notes.append(
        f"{path}: {what} resampled onto the pre grid ({src.crs.to_string() if src.crs else 'no CRS'}"
        f" {abs(src.res[0]):g} m -> {ref.crs.to_string()} {abs(ref.res[0]):g} m, "
        f"{resampling.name})"
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


def open_pair(files: PairFiles, bands: tuple[int, ...] | None = None,
              require_labels: bool = False) -> OpenPair:
    """Open and check one pair. Raises :class:`ImageryError` naming the file at fault."""
    opened: list = []
    try:
        pre = _open(files.pre)
        opened.append(pre)
        post = _open(files.post)
        opened.append(post)
        bands_pre = _check_bands(pre, files.pre, bands)
        bands_post = _check_bands(post, files.post, bands)
        label = None
        if files.label is not None:
            label = _open(files.label)
            opened.append(label)
            _check_label_src(label, files.label)
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
            for ds, path in ((pre, files.pre), (post, files.post)) + (
                ((label, files.label),) if label is not None else ()
            ):
                if ds.crs is None:
                    raise ImageryError(path, "has no CRS; GeoTIFF pairs (pre/, post/) must be "
                                       "georeferenced (use an A/ B/ folder for plain images)")
            window = _footprint_window(pre, post, files.post)
            post = _onto_grid(post, pre, Resampling.bilinear, "post image", notes, files.post)
            if post is not opened[1]:
                opened.append(post)
            if label is not None:
                _footprint_window(pre, label, files.label)
                warped = _onto_grid(label, pre, Resampling.nearest, "label", notes, files.label)
                if warped is not label:
                    opened.append(warped)
                label = warped
        return OpenPair(
            files, pre, post, label, bands_pre, bands_post,
            _stretch(pre, bands_pre, files.pre), _stretch(post, bands_post, files.post),
            window, notes,
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
                 ignore_labels: bool = False) -> tuple[list[PairFiles], list[ImageryError]]:
    """Discover and open every pair once; return the usable pairs and the skipped problems.

    With ``skip_bad`` each bad pair costs one warning line; otherwise all problems are
    raised together as :class:`ImageryErrors`.
    """
    pairs, errors = discover_pairs(root, require_labels=require_labels)
    if ignore_labels:  # e.g. prediction: the label files are neither opened nor checked
        pairs = [replace(files, label=None) for files in pairs]
    good = []
    for files in pairs:
        try:
            with opened(files, bands=bands, require_labels=require_labels):
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
