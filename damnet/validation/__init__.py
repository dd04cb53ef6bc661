"""Validating a tiled region with Great Expectations before it is used.

:func:`validate_region` reads a region written by :func:`damnet.tiling.ingest` one tile at a
time, builds a table with one row per tile (grid, bands, data types, nodata, brightness,
misregistration between the dates), checks it against an Expectation Suite built from a
:class:`ValidationConfig`, and writes::

    OUT/tiles.csv            # the table the suite was run on
    OUT/expectations.json    # the suite, as Great Expectations stores it
    OUT/data_docs/           # the Great Expectations Data Docs site (index.html at its top)
    OUT/validation.json      # the ValidationReport, written last: the commit point

``OUT`` may be a local folder or an ``s3://`` prefix. A failing region is not an exception:
the report says what failed, and :class:`ValidationFailed` is there for callers that stop.

The modules, one job each:

* :mod:`~damnet.validation.config`: the thresholds (:class:`ValidationConfig`) and file names;
* :mod:`~damnet.validation.shift`: misregistration from phase correlation surfaces, per
  pair (:class:`PairShift`) and per tile (:func:`tile_shift`);
* :mod:`~damnet.validation.table`: the per-tile table (:func:`tile_table`) and the domain
  distance to a source region (:func:`domain_distance`);
* :mod:`~damnet.validation.suite`: the Great Expectations checks (:func:`build_suite`);
* :mod:`~damnet.validation.report`: failure lines, :class:`ValidationReport` and
  :func:`validate_region`.
"""

from damnet.validation.config import (
    DATA_DOCS,
    EXPECTATIONS,
    REPORT,
    REPORT_FORMAT,
    TILES_CSV,
    ValidationConfig,
)
from damnet.validation.report import ValidationFailed, ValidationReport, validate_region
from damnet.validation.shift import (
    PairShift,
    correlation_surface,
    estimate_shift,
    misregistration_px,
    surface_peak,
    surface_peaks,
    tile_shift,
)
from damnet.validation.suite import build_suite
from damnet.validation.table import COLUMNS, domain_distance, frechet_distance, post_grid, tile_table

__all__ = [
    "COLUMNS",
    "DATA_DOCS",
    "EXPECTATIONS",
    "REPORT",
    "REPORT_FORMAT",
    "TILES_CSV",
    "PairShift",
    "ValidationConfig",
    "ValidationFailed",
    "ValidationReport",
    "build_suite",
    "correlation_surface",
    "domain_distance",
    "estimate_shift",
    "frechet_distance",
    "misregistration_px",
    "post_grid",
    "surface_peak",
    "surface_peaks",
    "tile_shift",
    "tile_table",
    "validate_region",
]
