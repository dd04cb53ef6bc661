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

What the checks see of the grid. Ingest resamples a post scene that lies on another grid
onto the pre grid, so all tiles share the pre grid. The manifest keeps the pre scene's CRS
and transform per pair; the post scene's CRS and pixel size are known only from the note
ingest leaves when it resamples (``post image resampled onto the pre grid (CRS RES m ->
...)``). ``crs_post`` / ``res_post`` come from that note and equal the pre values when
there is none (the post scene was already on the pre grid). Across tiles, the tiles' CRS
and pixel size are compared. Plain images (A/ B/ folders) have no CRS (``"none"``) and a
pixel size of 1.

Misregistration is measured by phase correlation of the grey images (Hann window, invalid
pixels set to the mean) and estimated only where it can be: real pairs change (a field
becomes a warehouse, shadows move, a season passes), and there the correlation peak is the
change, not a shift. See :func:`pair_shift` and :func:`tile_shift`:

* per pair, from patches (``shift_patch_px``, half-overlapping, inside the tiles' real
  pixels) with texture. Their correlation surfaces are summed (a vote: stable patches add
  up at the true shift, changed ones add noise); a peak of the sum must stand out
  (``min_pair_shift_psr``) and at least ``min_agreeing_patches`` patches must have a peak
  of their own (:data:`SUPPORT_SIGMA`) within ``shift_agree_px`` of it. The pair's shift
  is the median shift vector of those agreeing patches (of several such peaks, the one
  most patches agree with). Without that evidence the pair's estimate is unknown (NaN):
  reported, not a failure.
* per tile, from the tile's own surface when its peak is clear; a tile whose surface also
  holds a peak (4 sigma) at the pair's shift (or at no shift, when the pair has no
  estimate) takes that peak: the rest of the tile is content that moved.

The pair estimate fails a region; tiles above the limit are a warning by default
(``tile_misregistration_severity``).

``nodata_fraction`` counts missing pixels inside the scene's area only: the padding of a
tile that reaches past the area (a scene smaller than a tile) is ``padding_fraction``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from damnet import storage
from damnet.errors import DamnetError
from damnet.tiling import load_manifest, read_tile

log = logging.getLogger(__name__)

REPORT = "validation.json"
TILES_CSV = "tiles.csv"
EXPECTATIONS = "expectations.json"
DATA_DOCS = "data_docs"
REPORT_FORMAT = "damnet.validation/1"
BANDS = ("r", "g", "b")
DATES = ("pre", "post")

#: A tile needs this share of valid pixels, and some texture, for a misregistration estimate.
MIN_VALID_SHARE_FOR_SHIFT = 0.25
MIN_GREY_STD_FOR_SHIFT = 0.5
#: A patch of the pair estimate needs this share of valid pixels and this grey std (DN).
MIN_VALID_SHARE_FOR_PATCH = 0.9
MIN_GREY_STD_FOR_PATCH = 2.0
#: How far (in sigma of its surface) a tile's correlation at the pair's shift must stand out
#: for the tile to count as following the pair (see :func:`tile_shift`).
SUPPORT_SIGMA = 4.0

# The note ingest leaves (damnet.imagery), in its two forms: "(CRS RES m -> CRS RES m, method)"
# and "(CRS WxH px of RES UNIT -> CRS WxH px of RES UNIT, method)".
_RESAMPLED = re.compile(
    r"post image resampled onto the pre grid \((?P<crs>.+?) (?:\d+x\d+ px of )?(?P<res>\S+) (?:m|deg) -> "
    r"(?P<pre_crs>.+?) (?:\d+x\d+ px of )?(?P<pre_res>\S+) (?:m|deg), \w+\)\s*$"
)


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the checks. Brightness and texture are in 8-bit digital numbers (DN)
    of the tiles (ingest stretches 16-bit scenes to 8 bits).

    ``mostly`` is the share of tiles that must pass each per-tile check (Great
    Expectations' ``mostly``), so a few bad tiles (a lake, a cloud) do not fail a region.
    """

    bands: int = 3
    dtypes: tuple[str, ...] = ("uint8", "uint16")
    max_nodata_fraction: float = 0.5
    max_mean_nodata_fraction: float = 0.25
    brightness_low: float = 5.0
    brightness_high: float = 250.0
    min_std: float = 2.0
    #: Pairs (and tiles) shifted more than this fail (warn). Co-registered LEVIR pairs measure
    #: up to 3.5 px (0.5 m imagery: rooftops lean with the view angle), so 3 px failed them.
    max_misregistration_px: float = 4.0
    #: Tiles and patches whose correlation peak stands out less than this (peak-to-sidelobe
    #: ratio, see :func:`surface_peak`) give no misregistration estimate.
    min_shift_psr: float = 7.0
    #: Side of the patches the pair estimate is made of (pixels; capped at the tile size).
    shift_patch_px: int = 128
    #: The peak of a pair's summed patch surfaces must stand out this much ...
    min_pair_shift_psr: float = 8.0
    #: ... and this many patches must agree with it (a peak of their own of at least
    #: SUPPORT_SIGMA within ``shift_agree_px``), else the pair's misregistration is unknown
    #: (NaN, not a failure).
    min_agreeing_patches: int = 3
    shift_agree_px: float = 1.5
    min_tiles: int = 4
    same_grid: bool = True  #: one CRS and pixel size across tiles and between the dates
    pixel_size_tolerance: float = 0.01  #: relative, between the dates' pixel sizes
    mostly: float = 0.95
    #: "warning": tiles above the misregistration limit are reported but do not fail the
    #: region (the pair estimate does); "critical": they fail it too.
    tile_misregistration_severity: str = "warning"
    suite_name: str = "damnet-region"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        problems = []
        if self.bands < 1:
            problems.append(f"bands must be at least 1, got {self.bands}")
        if not self.dtypes:
            problems.append("dtypes must name at least one data type")
        for name in ("max_nodata_fraction", "max_mean_nodata_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.mostly <= 1:
            problems.append(f"mostly must be in (0, 1], got {self.mostly}")
        if not 0 <= self.brightness_low < self.brightness_high:
            problems.append(f"brightness_low must be >= 0 and below brightness_high, got "
                            f"{self.brightness_low}..{self.brightness_high}")
        if min(self.min_std, self.pixel_size_tolerance, self.min_shift_psr, self.min_pair_shift_psr) < 0:
            problems.append("min_std, min_shift_psr, min_pair_shift_psr and pixel_size_tolerance must be >= 0")
        if self.shift_patch_px < 16:
            problems.append(f"shift_patch_px must be at least 16, got {self.shift_patch_px}")
        if self.min_agreeing_patches < 1:
            problems.append(f"min_agreeing_patches must be at least 1, got {self.min_agreeing_patches}")
        if self.shift_agree_px <= 0:
            problems.append(f"shift_agree_px must be > 0, got {self.shift_agree_px}")
        if self.max_misregistration_px <= 0:
            problems.append(f"max_misregistration_px must be > 0, got {self.max_misregistration_px}")
        if self.min_tiles < 0:
            problems.append(f"min_tiles must be >= 0, got {self.min_tiles}")
        if self.tile_misregistration_severity not in ("critical", "warning"):
            problems.append("tile_misregistration_severity must be 'critical' or 'warning', got "
                            f"{self.tile_misregistration_severity!r}")
        if not self.suite_name:
            problems.append("suite_name must not be empty")
        if problems:
            raise ValueError("; ".join(problems))


# ----------------------------------------------------------------------------- misregistration


def _grey(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    return img.mean(0) if img.ndim == 3 else img


def correlation_surface(pre: np.ndarray, post: np.ndarray,
                        valid: np.ndarray | None = None) -> np.ndarray | None:
    """Phase correlation surface of two images ((bands, H, W) or (H, W)); None without texture.

    The images are turned grey, invalid pixels set to the valid mean, a Hann window
    applied; the surface is the inverse FFT of the normalised cross-power spectrum. Its
    peak sits at the shift of ``post`` against ``pre`` (wrapped: index ``H - 1`` is -1).
    """
    a, b = _grey(pre), _grey(post)
    if a.shape != b.shape:
        raise ValueError(f"pre and post differ in shape: {a.shape} vs {b.shape}")
    valid = np.ones(a.shape, bool) if valid is None else np.asarray(valid, bool)
    if valid.sum() < max(16, MIN_VALID_SHARE_FOR_SHIFT * valid.size):
        return None
    va, vb = a[valid], b[valid]
    if va.std() < MIN_GREY_STD_FOR_SHIFT or vb.std() < MIN_GREY_STD_FOR_SHIFT:
        return None
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    a = np.where(valid, a - va.mean(), 0.0) * window
    b = np.where(valid, b - vb.mean(), 0.0) * window
    cross = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    magnitude = np.abs(cross)
    cross /= magnitude + 1e-9 * magnitude.max() + 1e-30
    return np.fft.ifft2(cross).real


def _subpixel(cm: float, c0: float, cp: float) -> float:
    curvature = cm - 2 * c0 + cp
    return 0.0 if curvature >= 0 else float(np.clip(0.5 * (cm - cp) / curvature, -0.5, 0.5))


def _shift_at(surface: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """The sub-pixel shift ``(dx, dy)`` of the surface's maximum at index ``(iy, ix)``."""
    h, w = surface.shape
    peak = float(surface[iy, ix])
    dy = iy + _subpixel(surface[iy - 1, ix], peak, surface[(iy + 1) % h, ix])
    dx = ix + _subpixel(surface[iy, ix - 1], peak, surface[iy, (ix + 1) % w])
    dy = dy - h if dy > h / 2 else dy
    dx = dx - w if dx > w / 2 else dx
    return float(dx), float(dy)


def _sidelobe(surface: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """Mean and std of the surface outside 5 x 5 px around index ``(iy, ix)``."""
    h, w = surface.shape
    side = np.ones(surface.shape, bool)
    side[np.ix_(np.arange(iy - 2, iy + 3) % h, np.arange(ix - 2, ix + 3) % w)] = False
    rest = surface[side]
    return float(rest.mean()), float(rest.std()) if rest.size > 1 else 0.0


def surface_peak(surface: np.ndarray) -> tuple[float, float, float]:
    """``(dx, dy, psr)`` of a correlation surface: the shift in pixels (sub-pixel by a
    parabola through the peak's neighbours) and the peak-to-sidelobe ratio, how many
    standard deviations the peak stands above the rest of the surface (outside 5 x 5 px
    around it). Unrelated 64 px images reach a ratio of about 5 (up to 9); a clear
    match is well above 10."""
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    dx, dy = _shift_at(surface, iy, ix)
    mean, spread = _sidelobe(surface, iy, ix)
    psr = (float(surface[iy, ix]) - mean) / spread if spread > 0 else math.inf
    return dx, dy, float(psr)


def surface_peaks(surface: np.ndarray, min_psr: float) -> list[tuple[float, float, float]]:
    """Every peak of a correlation surface (a maximum of its 5 x 5 px neighbourhood) that
    stands at least ``min_psr`` standard deviations above the sidelobe of the highest peak
    (as in :func:`surface_peak`): ``[(dx, dy, psr), ...]``, the highest first. Two peaks
    mean two motions: a shift of the whole image and content that moved (shadows, cars)."""
    from scipy import ndimage

    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    mean, spread = _sidelobe(surface, iy, ix)
    if not spread > 0:
        dx, dy = _shift_at(surface, iy, ix)
        return [(dx, dy, math.inf)]
    z = (surface - mean) / spread
    local_max = surface == ndimage.maximum_filter(surface, size=5, mode="wrap")
    found = [(*_shift_at(surface, y, x), float(z[y, x])) for y, x in np.argwhere(local_max & (z >= min_psr))]
    return sorted(found, key=lambda p: -p[2])


def _nearest(peaks, x: float, y: float, radius: float) -> tuple[float, float, float] | None:
    """The peak of ``peaks`` nearest to shift ``(x, y)``, when within ``radius`` px."""
    best = min(peaks, key=lambda p: math.hypot(p[0] - x, p[1] - y), default=None)
    return best if best is not None and math.hypot(best[0] - x, best[1] - y) <= radius else None


def estimate_shift(pre: np.ndarray, post: np.ndarray,
                   valid: np.ndarray | None = None) -> tuple[float, float, float]:
    """``(dx, dy, psr)``: how far ``post`` is shifted against ``pre`` (columns, rows), and
    how clearly (the peak-to-sidelobe ratio, see :func:`surface_peak`).

    NaNs when the images have too few valid pixels or no texture to register.
    """
    surface = correlation_surface(pre, post, valid)
    if surface is None:
        return math.nan, math.nan, math.nan
    return surface_peak(surface)


def misregistration_px(pre: np.ndarray, post: np.ndarray, valid: np.ndarray | None = None,
                       min_psr: float = 0.0) -> float:
    """The magnitude of the shift between ``pre`` and ``post`` in pixels; NaN when unknown
    (no texture, too few valid pixels, or a peak-to-sidelobe ratio below ``min_psr``)."""
    dx, dy, psr = estimate_shift(pre, post, valid)
    if not psr >= min_psr:
        return math.nan
    return float(math.hypot(dx, dy))


def _patch_offsets(rows: int, cols: int, patch: int) -> list[tuple[int, int]]:
    from damnet.tiling import window_starts

    step = max(1, patch // 2)
    return [(r, c) for r in window_starts(rows, patch, step) for c in window_starts(cols, patch, step)]


@dataclass
class PairShift:
    """The evidence on one pair's misregistration, gathered tile by tile (:meth:`add`) in
    bounded memory (one summed surface and a few peaks per patch); :meth:`estimate` decides."""

    patch: int
    surface: np.ndarray | None = None
    patches: int = 0  #: textured patches whose surface is in the sum
    #: per patch: the peaks of its surface of at least :data:`SUPPORT_SIGMA`
    peaks: list[list[tuple[float, float, float]]] = field(default_factory=list)

    def add(self, pre: np.ndarray, post: np.ndarray, valid: np.ndarray, rows: int | None = None,
            cols: int | None = None) -> None:
        """Add the patches of one tile; only its top-left ``rows`` x ``cols`` (the part inside
        the scene's area) is used."""
        rows = valid.shape[0] if rows is None else rows
        cols = valid.shape[1] if cols is None else cols
        patch = min(self.patch, rows, cols)
        if patch < 16:
            return
        a_all, b_all = _grey(pre), _grey(post)
        for r, c in _patch_offsets(rows, cols, patch):
            v = valid[r:r + patch, c:c + patch]
            if v.mean() < MIN_VALID_SHARE_FOR_PATCH:
                continue
            a, b = a_all[r:r + patch, c:c + patch], b_all[r:r + patch, c:c + patch]
            if min(a[v].std(), b[v].std()) < MIN_GREY_STD_FOR_PATCH:
                continue
            surface = correlation_surface(a, b, v)
            if surface is None:
                continue
            if self.surface is None:
                self.surface = np.zeros_like(surface)
            if surface.shape != self.surface.shape:  # a smaller scene part: not in the vote
                continue
            self.surface += surface
            self.patches += 1
            self.peaks.append(surface_peaks(surface, SUPPORT_SIGMA))

    def estimate(self, config: ValidationConfig) -> dict:
        """``{"dx", "dy", "px", "psr", "agreeing", "patches"}``: the pair's shift (NaN when
        the evidence is not enough: see the module docstring), the summed surface's
        peak-to-sidelobe ratio, the patches that agree with it and the patches used."""
        out = {"dx": math.nan, "dy": math.nan, "px": math.nan, "psr": math.nan,
               "agreeing": 0, "patches": self.patches}
        if self.surface is None or not self.patches:
            return out
        candidates = surface_peaks(self.surface, config.min_pair_shift_psr)
        out["psr"] = surface_peak(self.surface)[2]
        found = []
        for dx, dy, psr in candidates:
            agreeing = [p for p in (_nearest(peaks, dx, dy, config.shift_agree_px) for peaks in self.peaks) if p]
            if len(agreeing) >= config.min_agreeing_patches:
                mx, my = (float(np.median([p[i] for p in agreeing])) for i in (0, 1))
                found.append({"dx": mx, "dy": my, "px": math.hypot(mx, my), "psr": psr, "agreeing": len(agreeing)})
        if found:  # several peaks (moved content, periodic texture): the one most patches agree with
            out.update(max(found, key=lambda f: (f["agreeing"], f["psr"])))
        return out


def tile_shift(main: tuple[float, float, float], support: list[tuple[float, float, float]],
               reference: tuple[float, float], min_psr: float, radius: float) -> tuple[float, float]:
    """A tile's shift ``(dx, dy)`` from its surface's highest peak ``main`` and its peaks of at
    least :data:`SUPPORT_SIGMA` (``support``, :func:`surface_peaks`): NaN when ``main`` is not
    clear (``min_psr``); the peak within ``radius`` of ``reference`` (the pair's shift, or 0)
    when there is one, since the tile then follows the pair and its stronger peak is content
    that moved (long shadows under another sun, a new building); else ``main``."""
    if not main[2] >= min_psr:
        return math.nan, math.nan
    follows = _nearest(support, reference[0], reference[1], radius)
    peak = follows if follows is not None else main
    return peak[0], peak[1]


# ----------------------------------------------------------------------------- the tile table


def _grid(transform) -> tuple[float, float]:
    a, b, _, d, e, _ = (float(v) for v in transform[:6])
    return float(f"{math.hypot(a, d):.9g}"), float(f"{math.hypot(b, e):.9g}")


def post_grid(pair: dict) -> tuple[str | None, float | None] | None:
    """The post scene's CRS and pixel size as ingest saw them, from its resampling note
    (either may be None: no CRS, unreadable size); None when there is no such note, that
    is when the post scene was already on the pre grid."""
    for note in pair.get("notes") or ():
        m = _RESAMPLED.search(str(note))
        if m:
            crs = None if m["crs"] == "no CRS" else m["crs"]
            try:
                return crs, float(m["res"])
            except ValueError:
                return crs, None
    return None


def _band_stats(img: np.ndarray, valid: np.ndarray) -> tuple[list[float], list[float]]:
    if not valid.any():
        return [math.nan] * len(BANDS), [math.nan] * len(BANDS)
    px = img[: len(BANDS), valid].astype(np.float64)
    means, stds = list(px.mean(1)), list(px.std(1))
    pad = len(BANDS) - len(means)
    return means + [math.nan] * pad, stds + [math.nan] * pad


STAT_COLUMNS = [f"{stat}_{date}_{band}" for date in DATES for stat in ("mean", "std") for band in BANDS]
COLUMNS = [
    "tile_id", "pair", "pair_tiles", "width", "height", "crs_pre", "crs_post", "pixel_size",
    "res_x", "res_y", "res_post", "res_ratio", "bands_pre", "bands_post", "dtype_pre",
    "dtype_post", "nodata_fraction", "padding_fraction", *STAT_COLUMNS, "shift_x_px", "shift_y_px",
    "shift_psr", "misregistration_px", "pair_misregistration_px", "pair_shift_x_px",
    "pair_shift_y_px", "pair_shift_psr", "pair_shift_agreeing", "pair_shift_patches",
]
_PAIR_SHIFT_COLUMNS = {"pair_misregistration_px": "px", "pair_shift_x_px": "dx", "pair_shift_y_px": "dy",
                       "pair_shift_psr": "psr", "pair_shift_agreeing": "agreeing",
                       "pair_shift_patches": "patches"}


def tile_table(region_uri: str, manifest: dict | None = None, progress: bool | None = None,
               min_shift_psr: float = ValidationConfig.min_shift_psr,
               config: ValidationConfig | None = None):
    """One row per tile of the region (a :class:`pandas.DataFrame` with :data:`COLUMNS`).

    ``nodata_fraction``: the share of the tile's pixels inside the scene's area without data
    (either date); ``padding_fraction``: the share of the tile outside the area (only for a
    scene smaller than a tile). ``shift_x_px``, ``shift_y_px``, ``shift_psr``: the tile's
    shift (:func:`tile_shift`) and how clearly its correlation peak stands out;
    ``misregistration_px``: the shift's magnitude, empty (NaN) when ``shift_psr`` is below
    ``min_shift_psr`` or the tile has no texture. ``pair_*``: the pair's estimate
    (:class:`PairShift`): its magnitude (NaN: not enough evidence), vector, the summed
    surface's peak ratio, and how many of how many patches agree with it. ``config`` (its
    shift settings) overrides ``min_shift_psr``. Tiles are read one at a time, so memory
    does not grow with the tiles' pixels.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from damnet.tiling import inside_area, nodata_and_padding

    config = config or ValidationConfig(min_shift_psr=min_shift_psr)
    manifest = manifest if manifest is not None else load_manifest(region_uri)
    pairs = {p["name"]: p for p in manifest.get("pairs", [])}
    seen_post = {name: post_grid(p) for name, p in pairs.items()}
    counts: dict[str, int] = {}
    for tile in manifest.get("tiles", []):
        counts[tile["pair"]] = counts.get(tile["pair"], 0) + 1
    evidence: dict[str, PairShift] = {}
    rows, peaks = [], []
    bar = tqdm(manifest.get("tiles", []), desc="validate tiles", unit="tile", leave=False,
               disable=None if progress is None else not progress)
    for tile in bar:
        pair = pairs.get(tile["pair"], {})
        # The label is not checked here: do not read it.
        pre, post, valid, _ = read_tile(region_uri, {**tile, "files": {**tile["files"], "label": None}})
        if tile.get("window") and pair.get("area"):
            in_rows, in_cols = inside_area(tile["window"], pair["area"])
        else:  # no grid to go by: the whole tile is the scene
            in_rows, in_cols = valid.shape
        nodata, padding = nodata_and_padding(valid, in_rows, in_cols)
        res_x, res_y = _grid(tile.get("transform") or pair.get("transform") or (1, 0, 0, 0, -1, 0))
        crs_pre = tile.get("crs") or pair.get("crs") or "none"
        post_seen = seen_post.get(tile["pair"])
        if post_seen is None:  # the post scene was on the pre grid
            crs_post, res_post = crs_pre, res_x
        else:
            crs_post = post_seen[0] or "none"
            res_post = post_seen[1] if post_seen[1] is not None else math.nan
        surface = correlation_surface(pre, post, valid)
        if surface is None:
            main, support = (math.nan, math.nan, math.nan), []
        else:
            main = surface_peak(surface)
            support = surface_peaks(surface, SUPPORT_SIGMA) if main[2] >= config.min_shift_psr else []
        evidence.setdefault(tile["pair"], PairShift(config.shift_patch_px)).add(
            pre, post, valid, in_rows, in_cols)
        peaks.append((main, support))
        row = {
            "tile_id": tile["tile_id"], "pair": tile["pair"], "pair_tiles": counts[tile["pair"]],
            "width": int(valid.shape[1]), "height": int(valid.shape[0]),
            "crs_pre": crs_pre, "crs_post": crs_post, "pixel_size": f"{res_x:.6g} x {res_y:.6g}",
            "res_x": res_x, "res_y": res_y, "res_post": res_post,
            "res_ratio": res_post / res_x if res_x else math.nan,
            "bands_pre": int(pre.shape[0]), "bands_post": int(post.shape[0]),
            "dtype_pre": str((pair.get("dtype") or {}).get("pre", "unknown")),
            "dtype_post": str((pair.get("dtype") or {}).get("post", "unknown")),
            "nodata_fraction": nodata, "padding_fraction": padding,
        }
        # Statistics of the pixels with data (padding is never data).
        for date, img in (("pre", pre), ("post", post)):
            means, stds = _band_stats(img, valid)
            for band, m, s in zip(BANDS, means, stds, strict=True):
                row[f"mean_{date}_{band}"] = m
                row[f"std_{date}_{band}"] = s
        rows.append(row)
    estimates = {name: ev.estimate(config) for name, ev in evidence.items()}
    for row, (main, support) in zip(rows, peaks, strict=True):
        est = estimates[row["pair"]]
        reference = (est["dx"], est["dy"]) if math.isfinite(est["px"]) else (0.0, 0.0)
        dx, dy = tile_shift(main, support, reference, config.min_shift_psr, config.shift_agree_px)
        known = math.isfinite(dx)
        row.update({"shift_x_px": dx if known else main[0], "shift_y_px": dy if known else main[1],
                    "shift_psr": main[2], "misregistration_px": math.hypot(dx, dy) if known else math.nan})
        row.update({col: est[key] for col, key in _PAIR_SHIFT_COLUMNS.items()})
    df = pd.DataFrame(rows, columns=COLUMNS)
    numeric = [c for c in COLUMNS if c not in ("tile_id", "pair", "crs_pre", "crs_post", "pixel_size",
                                                "dtype_pre", "dtype_post")]
    df[numeric] = df[numeric].astype("float64")
    for c in ("pair_tiles", "width", "height", "bands_pre", "bands_post", "pair_shift_agreeing",
              "pair_shift_patches"):
        df[c] = df[c].astype("int64")
    return df


# ----------------------------------------------------------------------------- domain distance


def _features(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    return np.concatenate([means, stds], axis=1)


def _pooled(means: np.ndarray, stds: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level mean and std per band from per-tile means and stds."""
    w = weights / weights.sum()
    mu = (w[:, None] * means).sum(0)
    var = (w[:, None] * (stds**2 + means**2)).sum(0) - mu**2
    return mu, np.sqrt(np.maximum(var, 0))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of the rows of ``x`` and ``y`` (same units).

    ``sqrt(|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2)))``: the square root of the
    form FID uses, so it is in the units of the data.
    """
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    d = x.shape[1]

    def cov(z):
        return np.atleast_2d(np.cov(z, rowvar=False)) if len(z) > 1 else np.zeros((d, d))

    s1, s2 = cov(x), cov(y)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    d2 = float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)
    return math.sqrt(max(d2, 0.0))


def _source_tile_stats(source_uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tile and date: band means, band stds and valid share, from the source manifest."""
    means, stds, weights = [], [], []
    for tile in load_manifest(source_uri).get("tiles", []):
        for date in DATES:
            s = (tile.get("stats") or {}).get(date) or {}
            m, sd = s.get("mean"), s.get("std")
            if not m or not sd or any(v is None for v in (*m, *sd)):
                continue
            means.append(m[: len(BANDS)])
            stds.append(sd[: len(BANDS)])
            weights.append(max(1e-6, 1 - float(tile.get("nodata_fraction") or 0)))
    return np.asarray(means, float), np.asarray(stds, float), np.asarray(weights, float)


def domain_distance(df, source_uri: str, source_stats=None) -> dict:
    """How far the region's pixel statistics are from the source region's (informational).

    Both dates of every tile count as one sample. ``band_mean_shift``: per band, the
    difference of the pixel means in units of the source's pixel std. ``frechet_dn``:
    Fréchet distance between Gaussian fits of the per-tile (mean r,g,b, std r,g,b)
    vectors, in DN. ``brightness_ratio``: region mean brightness over the source's.
    The source's statistics are those ingest wrote to its manifest (``source_stats``:
    what :func:`_source_tile_stats` returned, when already read).
    """
    s_means, s_stds, s_w = source_stats if source_stats is not None else _source_tile_stats(source_uri)
    r_means = np.concatenate([df[[f"mean_{d}_{b}" for b in BANDS]].to_numpy(float) for d in DATES])
    r_stds = np.concatenate([df[[f"std_{d}_{b}" for b in BANDS]].to_numpy(float) for d in DATES])
    r_w = np.concatenate([1 - df["nodata_fraction"].to_numpy(float)] * 2)
    ok = np.isfinite(r_means).all(1) & np.isfinite(r_stds).all(1) & (r_w > 0)
    r_means, r_stds, r_w = r_means[ok], r_stds[ok], r_w[ok]
    out: dict = {"source_uri": source_uri, "samples": {"region": int(len(r_means)),
                                                        "source": int(len(s_means))}}
    if len(r_means) == 0 or len(s_means) == 0:
        out["note"] = "no tiles with statistics on one side: nothing to compare"
        return out
    mu_r, _ = _pooled(r_means, r_stds, r_w)
    mu_s, sd_s = _pooled(s_means, s_stds, s_w)
    shift = (mu_r - mu_s) / np.maximum(sd_s, 1e-6)
    out["band_mean_shift"] = {b: round(float(v), 4) for b, v in zip(BANDS, shift, strict=True)}
    out["max_abs_band_mean_shift"] = round(float(np.abs(shift).max()), 4)
    out["frechet_dn"] = round(frechet_distance(_features(r_means, r_stds), _features(s_means, s_stds)), 4)
    out["brightness_ratio"] = round(float(mu_r.mean() / max(mu_s.mean(), 1e-6)), 4)
    return out


# ----------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class _Check:
    key: str
    expectation: object
    unit: str = ""

    @property
    def severity(self) -> str:
        return str(getattr(self.expectation.severity, "value", self.expectation.severity))


def _gx():
    """``great_expectations``, imported lazily (it takes seconds) and without the side
    effect of its import: it routes every warning of the process to logging."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    before = warnings.showwarning
    import great_expectations as gx
    import great_expectations.expectations  # noqa: F401 - the module that does it

    if warnings.showwarning is not before:
        logging.captureWarnings(False)
    return gx


def _checks(config: ValidationConfig) -> list[_Check]:
    gxe = _gx().expectations

    c, mostly = config, config.mostly
    checks = [
        _Check("min_tiles", gxe.ExpectTableRowCountToBeBetween(
            min_value=c.min_tiles, description=f"The region has at least {c.min_tiles} tiles.")),
        _Check("unique_tile_id", gxe.ExpectColumnValuesToBeUnique(
            column="tile_id", description="Every tile id is unique.")),
    ]
    for date in DATES:
        checks += [
            _Check(f"bands_{date}", gxe.ExpectColumnValuesToBeInSet(
                column=f"bands_{date}", value_set=[c.bands],
                description=f"{date.capitalize()} tiles have {c.bands} bands.")),
            _Check(f"dtype_{date}", gxe.ExpectColumnValuesToBeInSet(
                column=f"dtype_{date}", value_set=list(c.dtypes),
                description=f"The {date} scenes' data type is one of {', '.join(c.dtypes)}.")),
        ]
    checks += [
        _Check("nodata", gxe.ExpectColumnValuesToBeBetween(
            column="nodata_fraction", min_value=0.0, max_value=c.max_nodata_fraction, mostly=mostly,
            description=f"A tile has at most {c.max_nodata_fraction:g} of its pixels without data.")),
        _Check("nodata_mean", gxe.ExpectColumnMeanToBeBetween(
            column="nodata_fraction", min_value=0.0, max_value=c.max_mean_nodata_fraction,
            description=f"Over the region at most {c.max_mean_nodata_fraction:g} of the pixels "
            "have no data.")),
    ]
    for date in DATES:
        for band in BANDS:
            checks.append(_Check(f"mean_{date}_{band}", gxe.ExpectColumnValuesToBeBetween(
                column=f"mean_{date}_{band}", min_value=c.brightness_low, max_value=c.brightness_high,
                mostly=mostly, description=f"Mean {band.upper()} of a {date} tile is within "
                f"{c.brightness_low:g}..{c.brightness_high:g} DN (not dark, not saturated)."), "DN"))
        for band in BANDS:
            checks.append(_Check(f"std_{date}_{band}", gxe.ExpectColumnValuesToBeBetween(
                column=f"std_{date}_{band}", min_value=c.min_std, mostly=mostly,
                description=f"{band.upper()} of a {date} tile varies (std at least {c.min_std:g} DN; "
                "not blank)."), "DN"))
    checks += [
        _Check("misregistration", gxe.ExpectColumnValuesToBeBetween(
            column="misregistration_px", min_value=0.0, max_value=c.max_misregistration_px,
            mostly=mostly, severity=c.tile_misregistration_severity,
            description="Estimated shift between the pre and post tile (phase correlation) is "
            f"at most {c.max_misregistration_px:g} px."), "px"),
        _Check("pair_misregistration", gxe.ExpectColumnValuesToBeBetween(
            column="pair_misregistration_px", min_value=0.0, max_value=c.max_misregistration_px,
            description="Estimated shift between the pre and post scene of a pair (phase "
            f"correlation over all its tiles) is at most {c.max_misregistration_px:g} px."), "px"),
    ]
    if c.same_grid:
        tol = c.pixel_size_tolerance
        checks += [
            _Check("single_crs", gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="crs_pre", min_value=1, max_value=1,
                description="All tiles of the region are in one CRS.")),
            _Check("single_pixel_size", gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="pixel_size", min_value=1, max_value=1,
                description="All tiles of the region have one pixel size.")),
            _Check("crs_between_dates", gxe.ExpectColumnPairValuesToBeEqual(
                column_A="crs_pre", column_B="crs_post",
                description="The pre and post scenes were in the same CRS before ingest.")),
            _Check("pixel_size_between_dates", gxe.ExpectColumnValuesToBeBetween(
                column="res_ratio", min_value=1 / (1 + tol), max_value=1 + tol,
                description="The post scene's pixel size was the pre scene's (within "
                f"{tol:.0%}) before ingest.")),
        ]
    for check in checks:  # lets a result be traced back to its check
        check.expectation.meta = {**(check.expectation.meta or {}), "damnet_check": check.key}
    return checks


def build_suite(config: ValidationConfig | None = None):
    """The Expectation Suite (not added to any context) for ``config``."""
    gx = _gx()

    config = config or ValidationConfig()
    return gx.ExpectationSuite(name=config.suite_name, meta={"damnet": REPORT_FORMAT},
                               expectations=[c.expectation for c in _checks(config)])


# ----------------------------------------------------------------------------- failure lines


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{float(v):.3g}" if isinstance(v, float) else str(v)


def _range(lo, hi, unit: str = "") -> str:
    u = f" {unit}" if unit else ""
    if lo is None or (lo == 0 and hi is not None):
        return f"above {_num(hi)}{u}"
    if hi is None:
        return f"below {_num(lo)}{u}"
    return f"outside [{_num(lo)}, {_num(hi)}]{u}"


def _per_tile(kind: str, kwargs: dict) -> str:
    mostly = kwargs.get("mostly")
    tail = f"{kind}" + (f", at most {1 - mostly:.0%} of tiles may fail" if mostly and mostly < 1 else "")
    return f" [{tail}]"


_LABELS = {"res_ratio": "res_ratio (post / pre pixel size before ingest)"}


def _pair_shift_line(df, kwargs: dict, kind: str) -> str:
    """The failure line of the pair misregistration check, in pairs (the table repeats a
    pair's estimate on each of its tiles)."""
    hi = kwargs.get("max_value")
    per_pair = df.groupby("pair")["pair_misregistration_px"].first()
    known = per_pair.dropna()
    bad = known[known > hi] if hi is not None else known.iloc[:0]
    line = (f"pair_misregistration_px: {len(bad)} of {len(known)} pair(s) with an estimate shifted "
            f"above {_num(hi)} px: " + ", ".join(f"{p} {_num(float(v))} px" for p, v in bad.items()))
    if len(known) < len(per_pair):
        line += f"; {len(per_pair) - len(known)} pair(s) without enough evidence to estimate"
    return line + f" [{kind}]"


def _failure_line(check: _Check, kind: str, kwargs: dict, result: dict, df) -> str:
    col = kwargs.get("column")
    n = len(df)
    if kind == "expect_table_row_count_to_be_between":
        return (f"tiles: {result.get('observed_value')} in the region, expected at least "
                f"{kwargs.get('min_value')}" + (f" and at most {kwargs['max_value']}"
                                                  if kwargs.get("max_value") is not None else "")
                + f" [{kind}]")
    if kind == "expect_column_values_to_be_between" and col == "pair_misregistration_px":
        return _pair_shift_line(df, kwargs, kind)
    if kind == "expect_column_values_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        values = df[col].astype(float)
        bad = df[((values < lo) if lo is not None else False) | ((values > hi) if hi is not None else False)]
        count = result.get("unexpected_count", len(bad))
        known = int(values.notna().sum())
        line = f"{_LABELS.get(col, col)}: {count} of {known} tiles {_range(lo, hi, check.unit)}"
        if len(bad):
            excess = np.maximum((bad[col] - hi) if hi is not None else -np.inf,
                                (lo - bad[col]) if lo is not None else -np.inf)
            worst = bad.loc[excess.idxmax()]
            u = f" {check.unit}" if check.unit else ""
            line += f" (worst {_num(float(worst[col]))}{u}, tile {worst['tile_id']})"
        if known < n:
            line += f"; {n - known} tile(s) without a clear estimate"
        if col == "misregistration_px" and df["pair_misregistration_px"].notna().any():
            per_pair = df.groupby("pair")["pair_misregistration_px"].first().dropna()
            shown = ", ".join(f"{p} {_num(float(v))} px" for p, v in list(per_pair.items())[:4])
            line += f"; pair estimates: {shown}" + (", ..." if len(per_pair) > 4 else "")
        return line + _per_tile(kind, kwargs)
    if kind == "expect_column_values_to_be_in_set":
        allowed = kwargs.get("value_set") or []
        bad = df[~df[col].isin(allowed)][col]
        found = ", ".join(f"{v} x{k}" for v, k in bad.value_counts().items())
        return (f"{col}: {result.get('unexpected_count', len(bad))} of {n} tiles not in "
                f"{{{', '.join(map(str, allowed))}}} (found {found or 'n/a'})" + _per_tile(kind, kwargs))
    if kind == "expect_column_mean_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        if lo is None or (lo == 0 and hi is not None):
            want = f"at most {_num(hi)}"
        elif hi is None:
            want = f"at least {_num(lo)}"
        else:
            want = f"within [{_num(lo)}, {_num(hi)}]"
        return f"{col} mean over the region: {_num(result.get('observed_value'))}, expected {want} [{kind}]"
    if kind == "expect_column_unique_value_count_to_be_between":
        values = sorted(map(str, df[col].dropna().unique()))
        shown = ", ".join(values[:5]) + (", ..." if len(values) > 5 else "")
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        want = f"exactly {lo}" if lo == hi else f"{lo}..{hi}"
        shown = f" ({shown})" if values else ""
        return f"{col}: {len(values)} distinct values{shown}, expected {want} [{kind}]"
    if kind == "expect_column_pair_values_to_be_equal":
        a, b = kwargs.get("column_A"), kwargs.get("column_B")
        bad = df[df[a] != df[b]]
        line = f"{a} vs {b}: {len(bad)} of {n} tiles differ"
        if len(bad):
            first = bad.iloc[0]
            line += f" (e.g. {first[a]} vs {first[b]}, tile {first['tile_id']})"
        return line + _per_tile(kind, kwargs)
    if kind == "expect_column_values_to_be_unique":
        dup = df[df[col].duplicated(keep=False)][col]
        shown = ", ".join(map(str, dup.unique()[:3]))
        return f"{col}: {dup.nunique()} value(s) repeated (e.g. {shown}) [{kind}]"
    observed = result.get("observed_value", result.get("unexpected_count"))
    return f"{col or 'table'}: observed {_num(observed)} [{kind} {kwargs}]"


# ----------------------------------------------------------------------------- the report


def _clean(obj):
    """JSON-safe plain Python: numpy scalars to numbers, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class ValidationReport:
    """What :func:`validate_region` found. ``validation.json`` holds :meth:`to_dict`."""

    region_uri: str
    out_uri: str
    success: bool
    failures: list[str]
    statistics: dict
    warnings: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    domain_distance: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    suite_name: str = ValidationConfig.suite_name
    source_uri: str | None = None
    notes: list[str] = field(default_factory=list)
    created: str = ""
    format: str = REPORT_FORMAT

    def to_dict(self) -> dict:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> ValidationReport:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, uri: str) -> ValidationReport:
        """Read a report from ``uri`` (the ``validation.json`` or the folder holding it)."""
        if not uri.rstrip("/").endswith(".json"):
            uri = storage.join(uri, REPORT)
        return cls.from_dict(json.loads(storage.storage_for(uri).get_text(uri)))

    def summary(self) -> str:
        s = self.statistics
        head = (f"{'PASSED' if self.success else 'FAILED'}: region {self.region_uri} "
                f"({s.get('tiles', 0)} tiles in {s.get('pairs', 0)} pair(s)): ")
        evaluated = s.get("evaluated_expectations", 0)
        if self.success:
            head += f"{s.get('successful_expectations', evaluated)} of {evaluated} expectations met"
        else:
            head += f"{len(self.failures)} of {evaluated} expectations failed"
        if self.warnings:
            head += f", {len(self.warnings)} warning(s)"
        lines = [head + f" (suite {self.suite_name})"]
        lines += [f"  - {f}" for f in self.failures]
        lines += [f"  warning: {w}" for w in self.warnings]
        unknown = sorted(p for p, v in (s.get("pair_misregistration_px") or {}).items() if v is None)
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            lines.append(f"Misregistration unknown for {len(unknown)} of {s.get('pairs', 0)} pair(s) (too few "
                         f"textured patches agree on a shift; not a failure): {shown}")
        dd = self.domain_distance
        if dd and "frechet_dn" in dd:
            shift = " ".join(f"{b} {v:+.2f}" for b, v in dd["band_mean_shift"].items())
            lines.append(f"Domain distance to {dd['source_uri']}: Frechet {dd['frechet_dn']:.3g} DN, "
                         f"band-mean shift {shift} source std, brightness x{dd['brightness_ratio']:.3g} "
                         "(informational)")
        elif dd:
            lines.append(f"Domain distance to {dd.get('source_uri')}: {dd.get('note', 'n/a')}")
        if self.paths.get("data_docs"):
            lines.append(f"Data Docs: {self.paths['data_docs']}")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise :class:`ValidationFailed` when the region failed."""
        if not self.success:
            raise ValidationFailed(self)


class ValidationFailed(DamnetError):
    """A region failed its validation; the message is the report's summary."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.summary())


# ----------------------------------------------------------------------------- running it


def _run_suite(df, config: ValidationConfig, workdir: Path, progress: bool | None, timings: dict,
               run_name: str):
    """Run the suite on ``df`` in a file-mode GE project under ``workdir``.

    Returns (suite JSON dict, [(check, GE result)], the local Data Docs folder).
    """
    t = time.perf_counter()
    gx = _gx()
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    timings["ge_import"] = time.perf_counter() - t
    t = time.perf_counter()
    context = gx.get_context(mode="file", project_root_dir=str(workdir))
    show = bool(progress)
    context.variables.progress_bars = ProgressBarsConfig(globally=show, metric_calculations=show)
    batch = (context.data_sources.add_pandas("damnet").add_dataframe_asset("tiles")
             .add_batch_definition_whole_dataframe("region"))
    checks = _checks(config)
    suite = context.suites.add(gx.ExpectationSuite(
        name=config.suite_name, meta={"damnet": REPORT_FORMAT},
        expectations=[c.expectation for c in checks]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name=f"{config.suite_name}-tiles"))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{config.suite_name}-checkpoint", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
        result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["tile_id"]},
    ))
    timings["ge_setup"] = time.perf_counter() - t
    t = time.perf_counter()
    result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=run_name))
    timings["ge_run"] = time.perf_counter() - t
    (run,) = result.run_results.values()
    by_key = {(r.expectation_config.meta or {}).get("damnet_check"): r for r in run.results}
    pairs = [(check, by_key[check.key]) for check in checks]
    docs = workdir / "gx" / "uncommitted" / "data_docs" / "local_site"
    return suite.to_json_dict(), pairs, docs


def _exception_message(info) -> str | None:
    """The message of an exception GE caught, from either form its ``exception_info`` has:
    flat (``raised_exception``...) or one entry per metric."""
    if not info:
        return None
    for entry in (info, *(info.values() if isinstance(info, dict) else ())):
        get = entry.get if isinstance(entry, dict) else lambda k, e=entry: getattr(e, k, None)
        if get("raised_exception") is True:
            return (str(get("exception_message") or "error").strip().splitlines() or ["error"])[0]
    return None


def _result_record(check: _Check, r, df) -> dict:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    res = dict(r.result or {})
    record = {
        "check": check.key,
        "expectation": cfg.type,
        "column": kwargs.get("column") or (
            f"{kwargs['column_A']},{kwargs['column_B']}" if "column_A" in kwargs else None),
        "success": bool(r.success),
        "severity": check.severity,
        "kwargs": kwargs,
        "observed": res.get("observed_value"),
        "unexpected_count": res.get("unexpected_count"),
        "element_count": res.get("element_count"),
        "message": "",
    }
    error = _exception_message(r.exception_info)
    if error is not None:
        record["message"] = f"{record['column'] or 'table'}: could not be evaluated ({error}) [{cfg.type}]"
    elif not r.success:
        record["message"] = _failure_line(check, cfg.type, kwargs, res, df)
    return _clean(record)


def _write_tree(local_root: Path, out_prefix: str) -> int:
    """Copy every file under ``local_root`` to ``out_prefix``; remove files a previous run
    left there that are not part of the new tree. Returns the number of files written."""
    store = storage.storage_for(out_prefix)
    written = set()
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        uri = storage.join(out_prefix, path.relative_to(local_root).as_posix())
        store.put_file(path, uri)
        written.add(uri)
    for stale in store.list(out_prefix.rstrip("/") + "/"):
        if stale not in written:
            with contextlib.suppress(Exception):
                store.delete(stale)
    return len(written)


def validate_region(region_uri: str, out_uri: str, config: ValidationConfig | None = None,
                    source_uri: str | None = None, progress: bool | None = None) -> ValidationReport:
    """Validate the tiled region at ``region_uri``; write the results under ``out_uri``.

    A region that fails its checks is not an error: the returned report says what failed
    (see :meth:`ValidationReport.summary`, :meth:`ValidationReport.raise_for_failure`).
    ``source_uri`` (a tiled source region) adds an informational domain distance.
    Errors a user can cause (no manifest, unreadable tiles, an unwritable ``out_uri``)
    are raised as :class:`~damnet.errors.DamnetError`.
    """
    started = time.perf_counter()
    config = config or ValidationConfig()
    timings: dict[str, float] = {}
    manifest = load_manifest(region_uri)
    # Read the source first: a wrong source_uri fails before the tiles are read.
    source_stats = _source_tile_stats(source_uri) if source_uri else None
    t = time.perf_counter()
    df = tile_table(region_uri, manifest, progress=progress, config=config)
    timings["read_tiles"] = time.perf_counter() - t
    notes = [str(n) for p in manifest.get("pairs", []) for n in (p.get("notes") or [])]
    notes += [f"skipped at ingest: {s}" for s in manifest.get("skipped", [])]
    distance = None
    if source_uri:
        t = time.perf_counter()
        distance = domain_distance(df, source_uri, source_stats)
        timings["domain_distance"] = time.perf_counter() - t

    store = storage.storage_for(out_uri)
    paths = {
        "report": storage.join(out_uri, REPORT),
        "tiles": storage.join(out_uri, TILES_CSV),
        "expectations": storage.join(out_uri, EXPECTATIONS),
        "data_docs": storage.join(out_uri, DATA_DOCS, "index.html"),
    }
    with tempfile.TemporaryDirectory(prefix="damnet-gx-") as work:
        run_name = re.sub(r"[^A-Za-z0-9._-]+", "_", region_uri.rstrip("/").rsplit("/", 1)[-1]) or "region"
        suite_json, results, docs = _run_suite(df, config, Path(work), progress, timings, run_name)
        t = time.perf_counter()
        with store.writing(paths["tiles"], suffix=".csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        store.put_text(paths["expectations"], json.dumps(_clean(suite_json), indent=1))
        n_docs = _write_tree(docs, storage.join(out_uri, DATA_DOCS))
    records = [_result_record(check, r, df) for check, r in results]
    failures = [r["message"] for r in records if not r["success"] and r["severity"] == "critical"]
    warning_lines = [r["message"] for r in records if not r["success"] and r["severity"] != "critical"]

    misreg = df["misregistration_px"].dropna()
    statistics = {
        "tiles": len(df),
        "pairs": int(df["pair"].nunique()),
        "evaluated_expectations": len(records),
        "successful_expectations": sum(r["success"] for r in records),
        "failed_expectations": len(failures),
        "warnings": len(warning_lines),
        "nodata_fraction_mean": float(df["nodata_fraction"].mean()) if len(df) else None,
        "brightness_mean": {d: float(df[[f"mean_{d}_{b}" for b in BANDS]].to_numpy().mean())
                            if len(df) else None for d in DATES},
        "misregistration_px": {"median": float(misreg.median()) if len(misreg) else None,
                               "max": float(misreg.max()) if len(misreg) else None,
                               "tiles_without_estimate": int(len(df) - len(misreg))},
        "pair_misregistration_px": {str(p): float(v) for p, v in
                                    df.groupby("pair")["pair_misregistration_px"].first().items()},
        "data_docs_files": n_docs,
        "versions": {"great_expectations": _ge_version()},
    }
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    statistics["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    report = ValidationReport(
        region_uri=region_uri, out_uri=out_uri,
        success=not failures, failures=failures, warnings=warning_lines,
        statistics=statistics, results=records, domain_distance=distance, paths=paths,
        config=asdict(config), suite_name=config.suite_name, source_uri=source_uri, notes=notes,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    report = ValidationReport.from_dict(report.to_dict())  # what validation.json will hold
    store.put_text(paths["report"], json.dumps(report.to_dict(), indent=1))
    log.info("%s", report.summary())
    return report


def _ge_version() -> str:
    return str(_gx().__version__)
