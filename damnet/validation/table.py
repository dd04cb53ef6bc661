"""The per-tile table validation checks, and the domain distance to a source region.

What the checks see of the grid. Ingest resamples a post scene that lies on another grid
onto the pre grid, so all tiles share the pre grid. The manifest keeps the pre scene's CRS
and transform per pair; the post scene's CRS and pixel size are known only from the note
ingest leaves when it resamples (``post image resampled onto the pre grid (CRS RES m ->
...)``). ``crs_post`` / ``res_post`` come from that note and equal the pre values when
there is none (the post scene was already on the pre grid). Across tiles, the tiles' CRS
and pixel size are compared. Plain images (A/ B/ folders) have no CRS (``"none"``) and a
pixel size of 1.

``nodata_fraction`` counts missing pixels inside the scene's area only: the padding of a
tile that reaches past the area (a scene smaller than a tile) is ``padding_fraction``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from damnet.progress import Progress
from damnet.tiling import inside_area, load_manifest, nodata_and_padding, read_tile
from damnet.validation.config import BANDS, DATES, ValidationConfig
from damnet.validation.shift import (
    SUPPORT_SIGMA,
    PairShift,
    correlation_surface,
    surface_peak,
    surface_peaks,
    tile_shift,
)

if TYPE_CHECKING:
    import pandas as pd

# The note ingest leaves (damnet.imagery), in its two forms: "(CRS RES m -> CRS RES m, method)"
# and "(CRS WxH px of RES UNIT -> CRS WxH px of RES UNIT, method)".
_RESAMPLED = re.compile(
    r"post image resampled onto the pre grid \((?P<crs>.+?) (?:\d+x\d+ px of )?(?P<res>\S+) (?:m|deg) -> "
    r"(?P<pre_crs>.+?) (?:\d+x\d+ px of )?(?P<pre_res>\S+) (?:m|deg), \w+\)\s*$"
)


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


Peak = tuple[float, float, float]  #: (dx, dy, psr) of a correlation peak


def _tile_row(tile: dict, pair: dict, post_seen: tuple[str | None, float | None] | None,
              pre: np.ndarray, post: np.ndarray, valid: np.ndarray, inside: tuple[int, int]) -> dict:
    """The grid, band, nodata and statistics columns of one tile (no shift columns).
    ``post_seen``: :func:`post_grid` of the tile's pair; ``inside``: the tile's rows and
    columns inside the scene's area."""
    nodata, padding = nodata_and_padding(valid, *inside)
    res_x, res_y = _grid(tile.get("transform") or pair.get("transform") or (1, 0, 0, 0, -1, 0))
    crs_pre = tile.get("crs") or pair.get("crs") or "none"
    if post_seen is None:  # the post scene was on the pre grid
        crs_post, res_post = crs_pre, res_x
    else:
        crs_post = post_seen[0] or "none"
        res_post = post_seen[1] if post_seen[1] is not None else math.nan
    row = {
        "tile_id": tile["tile_id"], "pair": tile["pair"],
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
    return row


def _tile_peaks(pre: np.ndarray, post: np.ndarray, valid: np.ndarray,
                config: ValidationConfig) -> tuple[Peak, list[Peak]]:
    """The highest peak of a tile's correlation surface (NaNs without texture) and, when it
    is clear, the surface's peaks of at least :data:`SUPPORT_SIGMA` (for :func:`tile_shift`)."""
    surface = correlation_surface(pre, post, valid)
    if surface is None:
        return (math.nan, math.nan, math.nan), []
    main = surface_peak(surface)
    return main, surface_peaks(surface, SUPPORT_SIGMA) if main[2] >= config.min_shift_psr else []


def _add_shifts(rows: list[dict], peaks: list[tuple[Peak, list[Peak]]], estimates: dict[str, dict],
                config: ValidationConfig) -> None:
    """Fill the tile and pair shift columns of ``rows``, given each tile's peaks and each
    pair's estimate (:meth:`PairShift.estimate`)."""
    for row, (main, support) in zip(rows, peaks, strict=True):
        est = estimates[row["pair"]]
        reference = (est["dx"], est["dy"]) if math.isfinite(est["px"]) else (0.0, 0.0)
        dx, dy = tile_shift(main, support, reference, config.min_shift_psr, config.shift_agree_px)
        known = math.isfinite(dx)
        row.update({"shift_x_px": dx if known else main[0], "shift_y_px": dy if known else main[1],
                    "shift_psr": main[2], "misregistration_px": math.hypot(dx, dy) if known else math.nan})
        row.update({col: est[key] for col, key in _PAIR_SHIFT_COLUMNS.items()})


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with float64 numeric columns, int64 for the counts."""
    numeric = [c for c in COLUMNS if c not in ("tile_id", "pair", "crs_pre", "crs_post", "pixel_size",
                                                "dtype_pre", "dtype_post")]
    df[numeric] = df[numeric].astype("float64")
    for c in ("pair_tiles", "width", "height", "bands_pre", "bands_post", "pair_shift_agreeing",
              "pair_shift_patches"):
        df[c] = df[c].astype("int64")
    return df


def tile_table(region_uri: str, manifest: dict | None = None, progress: bool | None = None,
               min_shift_psr: float = ValidationConfig.min_shift_psr,
               config: ValidationConfig | None = None) -> pd.DataFrame:
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

    config = config or ValidationConfig(min_shift_psr=min_shift_psr)
    manifest = manifest if manifest is not None else load_manifest(region_uri)
    pairs = {p["name"]: p for p in manifest.get("pairs", [])}
    seen_post = {name: post_grid(p) for name, p in pairs.items()}
    counts: dict[str, int] = {}
    for tile in manifest.get("tiles", []):
        counts[tile["pair"]] = counts.get(tile["pair"], 0) + 1
    evidence: dict[str, PairShift] = {}
    rows, peaks = [], []
    bar = Progress(manifest.get("tiles", []), desc="validate tiles", unit="tile", leave=False, enabled=progress)
    for tile in bar:
        pair = pairs.get(tile["pair"], {})
        # The label is not checked here: do not read it.
        pre, post, valid, _ = read_tile(region_uri, {**tile, "files": {**tile["files"], "label": None}})
        if tile.get("window") and pair.get("area"):
            inside = inside_area(tile["window"], pair["area"])
        else:  # no grid to go by: the whole tile is the scene
            inside = valid.shape[0], valid.shape[1]
        peaks.append(_tile_peaks(pre, post, valid, config))
        evidence.setdefault(tile["pair"], PairShift(config.shift_patch_px)).add(pre, post, valid, *inside)
        rows.append({**_tile_row(tile, pair, seen_post.get(tile["pair"]), pre, post, valid, inside),
                     "pair_tiles": counts[tile["pair"]]})
    _add_shifts(rows, peaks, {name: ev.estimate(config) for name, ev in evidence.items()}, config)
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


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


def source_tile_stats(source_uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    what :func:`source_tile_stats` returned, when already read).
    """
    s_means, s_stds, s_w = source_stats if source_stats is not None else source_tile_stats(source_uri)
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

