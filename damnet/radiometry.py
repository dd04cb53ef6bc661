"""Radiometric alignment of a target region to the source: per-band histogram matching.

A change-detection model trained on one sensor and season reads another region's radiometry
(and a pair whose two dates differ in radiometry) as change. Matching each band's histogram of
the region's pre (post) images to the source's pre (post) images removes the difference at
the input. It is a lookup table per date and band on the 8-bit tiles (:func:`matching_lut`),
so it costs nothing at inference; ``strength`` blends it with the identity (0: off, 1: full
matching).

On the real targets (docs/benchmarks.md, "Real imagery") full matching lifts DSIFN's
source-only F1 from 8.0 to 30.9 but costs SZTAKI recall and OSCD F1; half strength gains on
DSIFN and SZTAKI and loses 0.8 on OSCD. The benchmark keeps both as baseline rows.
"""

from __future__ import annotations

import numpy as np
import torch

from damnet.data import TileSet

DATES = ("pre", "post")


def band_histograms(tiles: TileSet, limit: int | None = 400, seed: int = 0) -> np.ndarray:
    """(2 dates, 3 bands, 256) counts of the valid pixels of (at most ``limit``, a seeded random
    sample of) ``tiles``."""
    counts = np.zeros((2, 3, 256), np.float64)
    order = np.random.default_rng(seed).permutation(len(tiles))
    for i in order[:limit] if limit else order:
        pre, post, _, valid = tiles.load(int(i))
        mask = valid.astype(bool)
        for d, img in enumerate((pre, post)):
            for b in range(3):
                counts[d, b] += np.bincount(img[b][mask].ravel(), minlength=256)
    return counts


def matching_lut(source: np.ndarray, target: np.ndarray, strength: float = 1.0) -> torch.Tensor:
    """(2, 3, 256) uint8 lookup tables that map the ``target`` histograms (:func:`band_histograms`)
    onto the ``source`` ones, date by date and band by band, blended with the identity by
    ``strength`` (0..1)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    identity = np.arange(256, dtype=np.float64)
    out = np.empty((2, 3, 256), np.uint8)
    for d in range(2):
        for b in range(3):
            out[d, b] = np.round(strength * _cdf_match(target[d, b], source[d, b])
                                 + (1.0 - strength) * identity).clip(0, 255)
    return torch.from_numpy(out)


def _cdf_match(h_from: np.ndarray, h_to: np.ndarray) -> np.ndarray:
    """For each value 0..255 of a band with histogram ``h_from``: the value of ``h_to``'s band at
    the same quantile (a band without pixels maps to itself)."""
    if h_from.sum() == 0 or h_to.sum() == 0:
        return np.arange(256, dtype=np.float64)
    cdf_from = np.cumsum(h_from) / h_from.sum()
    cdf_to = np.cumsum(h_to) / h_to.sum()
    return np.searchsorted(cdf_to, cdf_from).clip(0, 255).astype(np.float64)


def apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``images`` (B, 3, H, W) uint8 through one date's (3, 256) table."""
    if images.dtype != torch.uint8:
        raise TypeError(f"radiometric matching reads uint8 tiles, got {images.dtype}")
    table = lut.to(images.device).long()
    idx = images.long()
    return torch.stack([table[b][idx[:, b]] for b in range(3)], dim=1).to(torch.uint8)


class Matched(torch.nn.Module):
    """``model`` reading its (pre, post) inputs through a region's tables (inference only)."""

    lut: torch.Tensor

    def __init__(self, model: torch.nn.Module, lut: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("lut", lut)

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        return self.model(apply_lut(pre, self.lut[0]), apply_lut(post, self.lut[1]))
