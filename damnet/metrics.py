"""Change-class metrics from one confusion matrix summed over a whole evaluation set.

Never averaged per image: a set's precision, recall, F1 and IoU come from its summed true
and false positives and negatives. Conventions where a ratio has nothing to count: precision
is 1 when nothing was predicted as change (no false alarm), recall is 1 when there was no
change to find, IoU is 1 when neither prediction nor truth has change; F1 is
``2PR / (P + R)`` (0 when both are 0). So an all-background set predicted as background
scores 1 everywhere, and one false alarm on it drops precision, F1 and IoU to 0.

How sure a set's F1 is: :func:`bootstrap_f1` resamples its tiles (a percentile interval);
:func:`bootstrap_f1_difference` compares two models on the same resamples (the promotion gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Confusion:
    """Counts of the change class (1) against background (0)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(self, pred, target, valid=None) -> Confusion:
        """Add a batch: ``pred``/``target`` are 0/1 arrays or tensors of the same shape."""
        pred = _np(pred).astype(bool)
        target = _np(target).astype(bool)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
        if valid is not None:
            v = _np(valid).astype(bool)
            pred, target = pred[v], target[v]
        self.tp += int(np.count_nonzero(pred & target))
        self.fp += int(np.count_nonzero(pred & ~target))
        self.fn += int(np.count_nonzero(~pred & target))
        self.tn += int(np.count_nonzero(~pred & ~target))
        return self

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                         self.tn + other.tn)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def iou(self) -> float:
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom else 1.0

    @property
    def overall_accuracy(self) -> float:
        return (self.tp + self.tn) / self.total if self.total else 1.0

    def as_dict(self) -> dict:
        return {
            "precision": self.precision, "recall": self.recall, "f1": self.f1, "iou": self.iou,
            "overall_accuracy": self.overall_accuracy,
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
        }


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class ScoreHistogram:
    """Change-probability histograms of changed and unchanged pixels: PR curves in O(bins) memory."""

    bins: int = 200
    pos: np.ndarray = field(init=False)
    neg: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.pos = np.zeros(self.bins, dtype=np.int64)
        self.neg = np.zeros(self.bins, dtype=np.int64)

    def update(self, prob, target, valid=None) -> ScoreHistogram:
        prob, target = _np(prob).astype(np.float64), _np(target).astype(bool)
        if valid is not None:
            v = _np(valid).astype(bool)
            prob, target = prob[v], target[v]
        idx = np.clip((prob * self.bins).astype(np.int64), 0, self.bins - 1)
        self.pos += np.bincount(idx[target], minlength=self.bins)
        self.neg += np.bincount(idx[~target], minlength=self.bins)
        return self

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds, precision, recall), thresholds ascending; predicted change = prob >= t."""
        tp = self.pos[::-1].cumsum()[::-1]
        fp = self.neg[::-1].cumsum()[::-1]
        total_pos = max(int(self.pos.sum()), 1)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        return np.arange(self.bins) / self.bins, precision, tp / total_pos

    @property
    def average_precision(self) -> float:
        """Area under the step PR curve (sum over thresholds of precision x recall gained)."""
        _, precision, recall = self.pr_curve()
        r = np.append(recall, 0.0)  # recall falls as the threshold rises; none above the last bin
        return float(np.sum((r[:-1] - r[1:]) * precision))


# --------------------------------------------------------------------------- uncertainty


class UndefinedF1(ValueError):
    """F1 over tiles without a single changed pixel: there is no change to find, so F1 says nothing."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (``confidence``, two-sided).

    ``resamples`` counts the resamples that entered the interval: those without any changed
    pixel are skipped (F1 is undefined there).
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n_tiles: int
    resamples: int
    seed: int

    @property
    def width(self) -> float:
        return self.high - self.low

    def __str__(self) -> str:  # the registry tag form, e.g. "0.41-0.63"
        return self.text()

    def text(self, signed: bool = False) -> str:
        """``"0.41-0.63"``; signed (a difference): ``"-0.02 to +0.12"``."""
        if signed:
            return f"{self.low:+.2f} to {self.high:+.2f}"
        return f"{self.low:.2f}-{self.high:.2f}"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "confidence": self.confidence, "n_tiles": self.n_tiles, "resamples": self.resamples,
                "seed": self.seed}


def confusion_counts(confusions) -> np.ndarray:
    """(n_tiles, 4) int64 array of ``tp, fp, fn, tn`` from :class:`Confusion` objects,
    4-sequences or a mapping ``tile_id -> either`` (its values, in order)."""
    if isinstance(confusions, dict):
        confusions = list(confusions.values())
    rows = [(c.tp, c.fp, c.fn, c.tn) if isinstance(c, Confusion) else tuple(c) for c in confusions]
    counts = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    if (counts < 0).any():
        raise ValueError("confusion counts cannot be negative")
    return counts


def f1_of_counts(counts: np.ndarray) -> np.ndarray:
    """F1 of each row ``tp, fp, fn, tn`` of ``counts`` (..., 4), with :class:`Confusion`'s conventions."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 1.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return f1


def _resample_weights(n_tiles: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_tiles): how often each tile is drawn when ``n_tiles`` are drawn with replacement."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_tiles, np.full(n_tiles, 1.0 / n_tiles), size=resamples).astype(np.float64)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = 1.0 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _tile_counts(*sets) -> list[np.ndarray]:
    out = [confusion_counts(s) for s in sets]
    if not len(out[0]):
        raise ValueError("no tiles to bootstrap over")
    if any(len(c) != len(out[0]) for c in out):
        raise ValueError(f"paired tiles differ in number: {[len(c) for c in out]}")
    if not (out[0][:, 0] + out[0][:, 2]).any():
        raise UndefinedF1(f"none of the {len(out[0])} tile(s) has a changed pixel: F1 is undefined")
    return out


def bootstrap_f1(confusions, confidence: float = 0.9, resamples: int = 2000, seed: int = 0) -> Interval:
    """F1 of a set of tiles with a percentile bootstrap interval over its tiles.

    ``confusions``: one confusion matrix per tile (see :func:`confusion_counts`). Each
    resample draws as many tiles with replacement and takes F1 of their *summed* confusion
    matrix, like the set's own F1; resamples that drew no changed pixel are skipped. The
    estimate is the F1 of all tiles. Deterministic for a given ``seed``. Raises
    :class:`UndefinedF1` when no tile has a changed pixel.
    """
    (counts,) = _tile_counts(confusions)
    weights = _resample_weights(len(counts), resamples, seed)
    summed = weights @ counts
    keep = summed[:, 0] + summed[:, 2] > 0
    low, high = _percentiles(f1_of_counts(summed[keep]), confidence)
    return Interval(float(f1_of_counts(counts.sum(0))), low, high, confidence, len(counts),
                    int(keep.sum()), seed)


def bootstrap_f1_difference(candidate, baseline, confidence: float = 0.9, resamples: int = 2000,
                            seed: int = 0) -> Interval:
    """F1(candidate) - F1(baseline) on the same tiles, with a *paired* bootstrap interval.

    ``candidate`` and ``baseline`` hold one confusion matrix per tile, the same tiles in the
    same order (same labels). Every resample draws one set of tiles and scores both models on
    it, so tile difficulty, which moves both F1s together, cancels out of the difference.
    """
    a, b = _tile_counts(candidate, baseline)
    if not np.array_equal(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]):
        raise ValueError("paired tiles differ in their changed pixels: they are not the same tiles and labels")
    weights = _resample_weights(len(a), resamples, seed)
    sa, sb = weights @ a, weights @ b
    keep = sa[:, 0] + sa[:, 2] > 0
    diff = f1_of_counts(sa[keep]) - f1_of_counts(sb[keep])
    low, high = _percentiles(diff, confidence)
    estimate = float(f1_of_counts(a.sum(0)) - f1_of_counts(b.sum(0)))
    return Interval(estimate, low, high, confidence, len(a), int(keep.sum()), seed)
