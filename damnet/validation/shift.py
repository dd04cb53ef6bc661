"""Misregistration between the dates, estimated from phase correlation surfaces.

Misregistration is measured by phase correlation of the grey images (Hann window, invalid
pixels set to the mean) and estimated only where it can be: real pairs change (a field
becomes a warehouse, shadows move, a season passes), and there the correlation peak is the
change, not a shift. See :class:`PairShift` and :func:`tile_shift`:

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from damnet.tiling import window_starts
from damnet.validation.config import ValidationConfig

#: A tile needs this share of valid pixels, and some texture, for a misregistration estimate.
MIN_VALID_SHARE_FOR_SHIFT = 0.25
MIN_GREY_STD_FOR_SHIFT = 0.5
#: A patch of the pair estimate needs this share of valid pixels and this grey std (DN).
MIN_VALID_SHARE_FOR_PATCH = 0.9
MIN_GREY_STD_FOR_PATCH = 2.0
#: How far (in sigma of its surface) a tile's correlation at the pair's shift must stand out
#: for the tile to count as following the pair (see :func:`tile_shift`).
SUPPORT_SIGMA = 4.0


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


def _peak_index(surface: np.ndarray) -> tuple[int, int]:
    """Index ``(iy, ix)`` of the surface's maximum."""
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    return int(iy), int(ix)


def surface_peak(surface: np.ndarray) -> tuple[float, float, float]:
    """``(dx, dy, psr)`` of a correlation surface: the shift in pixels (sub-pixel by a
    parabola through the peak's neighbours) and the peak-to-sidelobe ratio, how many
    standard deviations the peak stands above the rest of the surface (outside 5 x 5 px
    around it). Unrelated 64 px images reach a ratio of about 5 (up to 9); a clear
    match is well above 10."""
    iy, ix = _peak_index(surface)
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

    iy, ix = _peak_index(surface)
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

