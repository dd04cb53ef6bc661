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

The modules: :mod:`~damnet.imagery.files` (layouts and pairs of a folder),
:mod:`~damnet.imagery.raster` (opening files, bands, padded window reads),
:mod:`~damnet.imagery.labels` (label files as 0/1 change) and :mod:`~damnet.imagery.pair`
(an opened, co-registered pair; checking a region).
"""

from damnet.imagery.files import (
    IMAGE_SUFFIXES,
    LABEL_LOOKALIKES,
    LAYOUTS,
    PairFiles,
    detect_layout,
    discover_pairs,
)
from damnet.imagery.labels import (
    DEFAULT_LABEL_THRESHOLD,
    LabelReading,
    check_label_threshold,
    label_reading,
    read_label_window,
)
from damnet.imagery.pair import (
    OpenPair,
    Stretch,
    check_region,
    open_pair,
    opened,
    percentile_stretch,
)
from damnet.imagery.raster import Band, parse_bands, resolve_bands

__all__ = [
    "DEFAULT_LABEL_THRESHOLD",
    "IMAGE_SUFFIXES",
    "LABEL_LOOKALIKES",
    "LAYOUTS",
    "Band",
    "LabelReading",
    "OpenPair",
    "PairFiles",
    "Stretch",
    "check_label_threshold",
    "check_region",
    "detect_layout",
    "discover_pairs",
    "label_reading",
    "open_pair",
    "opened",
    "parse_bands",
    "percentile_stretch",
    "read_label_window",
    "resolve_bands",
]
