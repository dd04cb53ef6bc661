"""Change-class metrics from one confusion matrix summed over a whole evaluation set.

Never averaged per image: a set's precision, recall, F1 and IoU come from its summed true
and false positives and negatives. Conventions where a ratio has nothing to count: precision
is 1 when nothing was predicted as change (no false alarm), recall is 1 when there was no
change to find, IoU is 1 when neither prediction nor truth has change; F1 is
``2PR / (P + R)`` (0 when both are 0). So an all-background set predicted as background
scores 1 everywhere, and one false alarm on it drops precision, F1 and IoU to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    pos: np.ndarray | None = None
    neg: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.pos is None:
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
