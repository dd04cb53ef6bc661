"""Micro-label selection (MLFT): which few target tiles to send to the labelers.

:func:`score_region` streams a region through the adapted model once (batch by batch, so
memory does not grow with the number of tiles beyond a few numbers per tile) and keeps, per
tile: entropy, margin and (with MC dropout) mutual-information uncertainty, the predicted
change share, a pooled descriptor for diversity and, given a ``reference`` model (the
source model the region was adapted from), how much the two models disagree. :func:`select`
then draws a random,
stratified **audit** set first (evaluation only, never trained on) and picks the label
budget from the rest with one of the :data:`SELECTORS`.

Per-tile reduction: change pixels are rare, so a plain mean lets a sea of confident
background drown a few very uncertain change pixels. A tile's score is the mean of its top
``top_fraction`` most uncertain pixels, averaged with the change-weighted mean uncertainty
(weights = predicted change probability).

The default ``combined`` selector fills ``likely_change_share`` of the budget (rounded up: the
only tile of a one-tile budget) with the tiles of most predicted change, spread over the feature
space: on real targets the adapted model's predicted change share is the best proxy for true
change it has, and a micro set without changed pixels teaches MLFT little but "no change" (on
SZTAKI AirChange the most uncertain tile held no change at all; its one-tile MLFT fell below
random picks). Those tiles also show the labelers the model's false alarms. The next share comes
from the most uncertain quarter of the tiles, ranked by uncertainty plus predicted change share,
spread over the feature space (priority-weighted k-center); ``low_change_share`` of the budget
goes to tiles with little predicted change, which teach what is *not* change in this region.
``likely_change_share=0`` gives the selector of the synthetic ablation runs (docs/benchmarks.md).

Committee disagreement: adaptation can make the model *confidently* blind to a kind of
change the source model still saw (in our season benchmark, roofs of the same colour as the
bare soil they were built on: the source model found 66 % of their pixels, the adapted one
36 %, with low entropy; bench/misses.py). Uncertainty cannot point at such tiles; the
disagreement between the source and the adapted model can. With scores from
:func:`score_region` given a ``reference``, ``combined`` draws its candidates from the tiles
most uncertain *or* most disputed, and ranks them by disagreement as well (opt-in; see
docs/benchmarks.md, fifth run).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from damnet.data import TileSet
from damnet.device import resolve_device
from damnet.models import ChangeNet
from damnet.progress import Progress

SELECTORS = ("random", "entropy", "margin", "mutual_info", "kcenter", "combined")
DEFAULT_BUDGET = 0.003


@dataclass
class TileScores:
    tile_ids: list[str]
    entropy: np.ndarray
    margin: np.ndarray
    mutual_info: np.ndarray | None
    change_fraction: np.ndarray  #: predicted share of changed pixels
    features: np.ndarray  #: (N, D) pooled encoder/fusion descriptors, L2-normalised
    #: mean |p_reference - p_model| of change over valid pixels (None: no reference model)
    disagreement: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tile_ids)


def reduce_uncertainty(u: torch.Tensor, p_change: torch.Tensor, valid: torch.Tensor,
                       top_fraction: float = 0.02) -> torch.Tensor:
    """Per-tile score from pixel uncertainty ``u`` (B, H, W); see the module docstring."""
    b = u.shape[0]
    u = u.float() * valid
    w = p_change.float() * valid
    flat = u.reshape(b, -1)
    k = max(1, int(top_fraction * flat.shape[1]))
    top = flat.topk(k, dim=1).values.mean(1)
    weighted = (u * w).reshape(b, -1).sum(1) / w.reshape(b, -1).sum(1).clamp_min(1.0)
    return 0.5 * (top + weighted)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-8))).sum(1) / math.log(2)


@torch.no_grad()
def score_region(model: ChangeNet, tiles: TileSet, batch_size: int = 8, mc_samples: int = 0,
                 top_fraction: float = 0.02, device: str = "auto",
                 progress: bool | None = None, reference: ChangeNet | None = None) -> TileScores:
    """Score every tile of ``tiles`` in one streamed pass (plus ``mc_samples`` dropout passes).

    ``reference``: a second model (the source model ``model`` was adapted from) run on the
    same batches; its disagreement with ``model`` is kept per tile.
    """
    if len(tiles) == 0:
        raise ValueError("there are no tiles to score")
    dev = resolve_device(device)
    model.to(dev).eval()
    if reference is not None:
        reference.to(dev).eval()
    out: dict[str, list] = {"entropy": [], "margin": [], "mi": [], "change": [], "feat": [],
                            "dis": []}
    batches = tiles.iter_batches(batch_size)
    for b in Progress(batches, total=-(-len(tiles) // batch_size), desc="score tiles", unit="batch",
                      leave=False, enabled=progress):
        b = b.to(dev)
        logits, pooled = model.embed(b.pre, b.post)
        p = logits.float().softmax(1)
        pc, valid = p[:, 1], b.valid
        out["entropy"].append(reduce_uncertainty(_entropy(p), pc, valid, top_fraction))
        out["margin"].append(reduce_uncertainty(1 - (p[:, 1] - p[:, 0]).abs(), pc, valid,
                                                top_fraction))
        out["change"].append(((pc >= 0.5) & valid).float().mean((1, 2)))
        out["feat"].append(torch.nn.functional.normalize(pooled.float(), dim=1))
        if reference is not None:
            p_ref = reference(b.pre, b.post).float().softmax(1)[:, 1]
            out["dis"].append(((p_ref - pc).abs() * valid).sum((1, 2))
                              / valid.sum((1, 2)).clamp_min(1))
        if mc_samples > 0:
            model.dropout.train()  # MC dropout: only the classifier dropout is stochastic
            samples = torch.stack([model(b.pre, b.post).float().softmax(1)
                                   for _ in range(mc_samples)])
            model.dropout.eval()
            mean = samples.mean(0)
            mi = _entropy(mean) - torch.stack([_entropy(s) for s in samples]).mean(0)
            out["mi"].append(reduce_uncertainty(mi.clamp_min(0), mean[:, 1], valid, top_fraction))
    cat = lambda k: torch.cat(out[k]).cpu().numpy()  # noqa: E731
    return TileScores(tiles.ids, cat("entropy"), cat("margin"), cat("mi") if out["mi"] else None,
                      cat("change"), cat("feat"), cat("dis") if out["dis"] else None)


def budget_count(budget: float | int, n_tiles: int) -> int:
    """A fraction (0 < b < 1) or a count (b >= 1) of ``n_tiles``; never less than 1."""
    if budget <= 0:
        raise ValueError(f"label budget must be positive, got {budget}")
    if n_tiles <= 0:
        raise ValueError("there are no tiles to select from")
    count = round(budget * n_tiles) if budget < 1 else int(budget)
    return max(1, min(count, n_tiles))


DEFAULT_MIN_AUDIT = 20  #: fewest audit tiles a share gives (promote's gate wants >= 10, 5 with change)


def audit_count(audit: float | int, n_tiles: int, minimum: int = DEFAULT_MIN_AUDIT) -> int:
    """How many audit tiles a region of ``n_tiles`` gets.

    A count (``audit >= 1``) is taken as it is. A share (``audit < 1``) of the region is raised
    to ``minimum`` tiles, a floor capped at half the region so the micro-label pool keeps the
    other half: 1 % of 60 tiles would be one tile, on which no gate can decide (a one-tile audit
    set once promoted a model whose F1 on the rest of its region was 2 %).
    """
    if audit >= 1:
        return budget_count(audit, n_tiles)
    return max(budget_count(audit, n_tiles), min(minimum, n_tiles // 2))


def kcenter_greedy(features: np.ndarray, candidates: np.ndarray, k: int,
                   first: int | None = None) -> list[int]:
    """Pick ``k`` of ``candidates`` (indices into ``features``) that cover the feature space."""
    candidates = np.asarray(candidates)
    if k >= len(candidates):
        return [int(c) for c in candidates]
    feats = features[candidates]
    start = 0 if first is None else int(np.flatnonzero(candidates == first)[0])
    chosen = [start]
    dist = np.linalg.norm(feats - feats[start], axis=1)
    while len(chosen) < k:
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(feats - feats[nxt], axis=1))
    return [int(candidates[i]) for i in chosen]


def informative_diverse(features: np.ndarray, candidates: np.ndarray, priority: np.ndarray,
                        k: int) -> list[int]:
    """``k`` candidates with high ``priority`` that are far from each other in feature space.

    The first pick is the top-priority candidate; each next one maximises
    distance-to-picked x priority (k-center greedy weighted by priority).
    """
    candidates = np.asarray(candidates)
    if k >= len(candidates):
        return [int(c) for c in candidates]
    prio = priority[candidates] - priority[candidates].min() + 1e-6
    prio = prio / prio.max()
    feats = features[candidates]
    chosen = [int(prio.argmax())]
    dist = np.linalg.norm(feats - feats[chosen[0]], axis=1)
    while len(chosen) < k:
        nxt = int((dist * prio).argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(feats - feats[nxt], axis=1))
    return [int(candidates[i]) for i in chosen]


def _rank(values: np.ndarray) -> np.ndarray:
    r = np.empty(len(values))
    r[np.argsort(values, kind="stable")] = np.arange(len(values))
    return r / max(1, len(values) - 1)


def audit_split(scores: TileScores, size: float | int, seed: int = 0, strata: int = 4) -> list[int]:
    """A random audit set, stratified by predicted change share so it spans easy and busy tiles."""
    n = budget_count(size, len(scores))
    rng = np.random.default_rng(seed)
    order = np.argsort(scores.change_fraction, kind="stable")
    groups = np.array_split(order, min(strata, len(order)))
    per = np.diff(np.round(np.linspace(0, n, len(groups) + 1)).astype(int))
    picked: list[int] = []
    for g, m in zip(groups, per, strict=True):
        picked += rng.choice(g, size=min(m, len(g)), replace=False).tolist()
    return sorted(int(i) for i in picked)


@dataclass
class Selection:
    method: str
    budget: int
    train: list[str]  #: tiles to label for fine-tuning
    audit: list[str]  #: tiles to label for evaluation only
    scores: dict  #: tile id -> {entropy, margin, mutual_info, change_fraction, disagreement}

    def to_dict(self) -> dict:
        return asdict(self)


def select(scores: TileScores, budget: float | int = DEFAULT_BUDGET, method: str = "combined",
           audit: float | int = 0.01, seed: int = 0, low_change_share: float = 0.2,
           pool_factor: int = 4, low_change_threshold: float = 0.01,
           candidate_share: float = 0.25, likely_change_share: float = 0.5) -> Selection:
    """Pick ``budget`` tiles to label (and a disjoint audit set of :func:`audit_count` tiles:
    a count as it is, a share raised to :data:`DEFAULT_MIN_AUDIT`) with ``method``."""
    if method not in SELECTORS:
        raise ValueError(f"unknown selector {method!r}; known: {', '.join(SELECTORS)}")
    if method == "mutual_info" and scores.mutual_info is None:
        raise ValueError("the mutual_info selector needs scores with mc_samples > 0")
    n_all = len(scores)
    audit_idx = audit_split(scores, audit_count(audit, n_all), seed=seed + 7919)
    pool = np.setdiff1d(np.arange(n_all), audit_idx)
    if len(pool) == 0:
        raise ValueError("the audit set took every tile; nothing is left to select from")
    n = budget_count(budget, n_all)
    n = min(n, len(pool))
    rng = np.random.default_rng(seed)
    unc = {"entropy": scores.entropy, "margin": scores.margin, "mutual_info": scores.mutual_info}

    def top(values, candidates, k):
        order = candidates[np.argsort(-values[candidates], kind="stable")]
        return [int(i) for i in order[:k]]

    if method == "random":
        picked = rng.choice(pool, size=n, replace=False).tolist()
    elif method in unc:
        picked = top(unc[method], pool, n)
    elif method == "kcenter":
        picked = kcenter_greedy(scores.features, pool, n, first=int(rng.choice(pool)))
    else:  # combined: likely change, uncertain (or disputed) tiles, diverse, plus quiet tiles
        n_low = int(round(low_change_share * n)) if n > 1 else 0
        n_likely = min(n - n_low, math.ceil(likely_change_share * n - 1e-9))
        n_unc = n - n_low - n_likely

        def candidates_by(values, among, k):
            return np.array(top(values, among, max(pool_factor * k, int(np.ceil(candidate_share * len(pool))))))

        picked = informative_diverse(scores.features, candidates_by(scores.change_fraction, pool, n_likely),
                                     _rank(scores.change_fraction), n_likely) if n_likely else []
        interest = scores.entropy
        priority = _rank(scores.entropy) + _rank(scores.change_fraction)
        if scores.disagreement is not None:
            interest = np.maximum(_rank(scores.entropy), _rank(scores.disagreement))
            priority = priority + _rank(scores.disagreement)
        if n_unc:
            left = np.setdiff1d(pool, picked)
            picked += informative_diverse(scores.features, candidates_by(interest, left, n_unc), priority, n_unc)
        quiet = np.array([i for i in pool if scores.change_fraction[i] < low_change_threshold
                          and i not in picked], dtype=int)
        rest = np.array([i for i in pool if i not in picked], dtype=int)
        picked += top(scores.entropy, quiet if len(quiet) >= n_low else rest, n_low)
    picked = [int(i) for i in picked]
    ids = scores.tile_ids
    table = {
        ids[i]: {"entropy": float(scores.entropy[i]), "margin": float(scores.margin[i]),
                 "mutual_info": None if scores.mutual_info is None else float(scores.mutual_info[i]),
                 "change_fraction": float(scores.change_fraction[i]),
                 "disagreement": None if scores.disagreement is None else float(scores.disagreement[i])}
        for i in range(n_all)
    }
    return Selection(method, n, [ids[i] for i in picked], [ids[i] for i in audit_idx], table)
