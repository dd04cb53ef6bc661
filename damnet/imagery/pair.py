"""Opening a pair: checked, co-registered onto the pre grid, with windowed reads.

:func:`open_pair` opens and checks one pair and gives windowed access on the pre grid, so
scenes larger than memory can be tiled. The grids of a GeoTIFF pair may differ: the post
scene (and the label) are then resampled onto the pre grid, and only the overlap of the
footprints is used. :func:`check_region` opens every pair of a region once.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from damnet.errors import ImageryError, ImageryErrors
from damnet.imagery.files import PairFiles, discover_pairs
from damnet.imagery.labels import DEFAULT_LABEL_THRESHOLD, LabelReading, label_reading
from damnet.imagery.raster import Band, check_bands, open_raster, read_padded
from damnet.vsis3 import s3_uri

log = logging.getLogger(__name__)


@dataclass
class Stretch:
    """Per-band linear stretch to 0..255 (identity for 8-bit imagery)."""

    low: list[float]
    high: list[float]

    def apply(self, data: np.ndarray) -> np.ndarray:
        if data.dtype == np.uint8 and not any(self.low) and all(h == 255 for h in self.high):
            return data  # the identity: no float copy of every window of 8-bit imagery
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
            return read_padded(src, bands, window, masked)
        except RasterioIOError as exc:
            where = str(path).startswith("/vsis3/")
            raise ImageryError(s3_uri(path), f"cannot be read at window {window}: "
                               f"{'store unreachable, or a ' if where else ''}damaged or truncated file? "
                               f"({exc})") from None

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Pre and post as (3, h, w) uint8, the validity mask (h, w) and the 0/1 label or None."""
        f = self.files
        pre, v1 = self._read(self.pre, self.bands_pre, window, masked=True, path=f.pre)
        post, v2 = self._read(self.post, self.bands_post, window, masked=True, path=f.post)
        label = None
        if self.label is not None:
            reading = self.label_reading
            assert reading is not None and f.label is not None, "a label dataset comes with its reading"
            raw, _ = self._read(self.label, reading.bands, window, masked=False, path=f.label)
            label = reading.binary(raw)
        return self.stretch_pre.apply(pre), self.stretch_post.apply(post), v1 & v2, label

    def close(self) -> None:
        for ds in (self.label, self.post, self.pre):
            if ds is not None and not ds.closed:
                ds.close()


def _same_grid(a, b) -> bool:
    return (a.crs == b.crs and a.width == b.width and a.height == b.height
            and a.transform.almost_equals(b.transform))


def _onto_grid(src, ref, resampling: Resampling, what: str, notes: list[str], path: Path):
    """``src`` itself when it shares ``ref``'s grid, else a lazy WarpedVRT onto that grid."""
    if _same_grid(src, ref):
        return src
    def res(ds) -> str:  # pixel size in the CRS's unit (degrees for EPSG:4326)
        if ds.crs is None:
            unit = "CRS units"
        elif ds.crs.is_geographic:
            unit = "deg"
        else:
            linear = ds.crs.linear_units or "CRS units"
            unit = "m" if linear.lower() in ("metre", "meter", "m") else linear
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
        pre = open_raster(files.pre)
        opened.append(pre)
        post = open_raster(files.post)
        opened.append(post)
        bands_pre = check_bands(pre, files.pre, bands)
        bands_post = check_bands(post, files.post, bands)
        label = reading = None
        if files.label is not None:
            label = open_raster(files.label)
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
            if label is not None and plain_label:  # e.g. a PNG mask drawn on the pre scene's pixels
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
            if label is not None and files.label is not None and not plain_label:
                _footprint_window(pre, label, files.label)
                warped = _onto_grid(label, pre, Resampling.nearest, "label", notes, files.label)
                if warped is not label:
                    opened.append(warped)
                label = warped
        if reading is not None and (note := reading.note()):
            notes.append(note)
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
                 label_threshold: int = DEFAULT_LABEL_THRESHOLD,
                 listing: Collection[str] | None = None) -> tuple[list[PairFiles], list[ImageryError]]:
    """Discover and open every pair once; return the usable pairs and the skipped problems.

    With ``skip_bad`` each bad pair costs one warning line; otherwise all problems are
    raised together as :class:`ImageryErrors`. ``listing``: see :func:`discover_pairs`.
    """
    pairs, errors = discover_pairs(root, require_labels=require_labels,
                                   check_labels=not ignore_labels, listing=listing)
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
        for err in errors:
            log.warning("skipped: %s", err)
    return good, errors
