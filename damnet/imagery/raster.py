"""Opening rasters, choosing their bands, and reading windows that may reach past their edge.

Bands (:func:`parse_bands`) are chosen by 1-based number or by band description
(``B04,B03,B02`` for Sentinel-2 files whose bands are described ``"B04 red"`` ...).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from damnet import vsis3
from damnet.errors import ImageryError

Band = int | str  #: a 1-based band number or a band description (or a word of it)

#: GDAL's block cache in MB when ``GDAL_CACHEMAX`` is not set. GDAL's own default is 5 % of the
#: machine's RAM (1.2 GiB on a 24 GiB VM, 6 GiB on a 128 GiB node), and a streamed city-size
#: scene fills it; the windows of a step need about one row of blocks per open file (a row of
#: 512 px blocks of a 20,000 px 4-band uint16 scene is 84 MB).
GDAL_CACHE_MB = 256


def bound_gdal_cache() -> None:
    """Set ``GDAL_CACHEMAX`` to :data:`GDAL_CACHE_MB` unless the user set it (GDAL reads it when
    its block cache is first used, so this works after rasterio is imported, before any read)."""
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))


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


def open_raster(path: Path) -> rasterio.DatasetReader:
    """Open an image file; ``/vsis3/`` paths (:mod:`damnet.vsis3`) are read in place, and a
    store GDAL cannot reach is a :class:`~damnet.errors.StorageError` naming the ``s3://`` URI."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        if str(path).startswith("/vsis3/"):
            problem = vsis3.gdal_problem(path, exc)
            if problem is not None:
                raise problem from None
        raise ImageryError(vsis3.s3_uri(path), f"cannot be read as an image ({exc})") from None


def describe_bands(src) -> str:
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


def check_bands(src, path: Path, bands: Sequence[Band] | None) -> tuple[int, ...]:
    if bands is None:
        if src.count != 3:
            raise ImageryError(
                path, f"has {describe_bands(src)} where RGB (3 bands) is expected; "
                "choose the red, green and blue bands with bands=R,G,B"
            )
        return (1, 2, 3)
    return resolve_bands(src, path, bands)


def _overlaps(window: Window, src) -> bool:
    return (window.col_off < src.width and window.row_off < src.height
            and window.col_off + window.width > 0 and window.row_off + window.height > 0)


def read_padded(src, bands, window: Window, masked: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` of ``window`` (may reach outside ``src``): (bands, h, w) pixels, padded
    with 0, and the (h, w) validity mask (False outside ``src``; with ``masked``, also where
    GDAL's dataset mask says there is no data)."""
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
