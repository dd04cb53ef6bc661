"""Micro-label selection: budgets, disjoint audit set, each selector, reduction, streaming."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from damnet.data import TileSet
from damnet.models import ChangeNet, preset
from damnet.select import (
    DEFAULT_MIN_AUDIT,
    SELECTORS,
    TileScores,
    audit_count,
    audit_split,
    budget_count,
    kcenter_greedy,
    reduce_uncertainty,
    score_region,
    select,
)


def _scores(n=400, seed=0, mi=True):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return TileScores([f"t{i:04d}" for i in range(n)], rng.random(n), rng.random(n),
                      rng.random(n) if mi else None, rng.random(n) * 0.1 * (rng.random(n) < 0.5),
                      feats)


def test_budget_as_fraction_or_count_never_below_one():
    assert budget_count(0.003, 400) == 1
    assert budget_count(0.003, 10) == 1
    assert budget_count(0.01, 1000) == 10
    assert budget_count(25, 1000) == 25
    assert budget_count(5000, 1000) == 1000
    with pytest.raises(ValueError, match="positive"):
        budget_count(0, 100)


@pytest.mark.parametrize("method", SELECTORS)
def test_each_selector_respects_budget_and_audit_disjointness(method):
    scores = _scores()
    sel = select(scores, budget=0.03, method=method, audit=0.05, seed=1)
    assert sel.budget == 12 and len(sel.train) == 12 == len(set(sel.train))
    assert len(sel.audit) == 20 == len(set(sel.audit))
    assert not set(sel.train) & set(sel.audit)
    assert set(sel.scores) == set(scores.tile_ids)


def test_audit_set_is_the_same_whatever_the_selector_and_is_stratified():
    scores = _scores()
    audits = {tuple(select(scores, 0.01, m, audit=0.05, seed=4).audit) for m in SELECTORS}
    assert len(audits) == 1
    scores.change_fraction = np.random.default_rng(1).random(len(scores))
    idx = audit_split(scores, 20, seed=0)
    rank = np.empty(len(scores))
    rank[np.argsort(scores.change_fraction)] = np.arange(len(scores))
    quartile = rank[idx] / len(scores)
    # Five picks from each quarter of the change-share distribution.
    assert np.histogram(quartile, bins=[0, 0.25, 0.5, 0.75, 1.0001])[0].tolist() == [5, 5, 5, 5]


def test_uncertainty_selectors_take_the_most_uncertain():
    scores = _scores()
    sel = select(scores, 5, "entropy", audit=1)
    pool = [i for i, t in enumerate(scores.tile_ids) if t not in sel.audit]
    best = sorted(pool, key=lambda i: -scores.entropy[i])[:5]
    assert sel.train == [scores.tile_ids[i] for i in best]


def test_kcenter_spreads_over_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 10
    feats = np.concatenate([c + rng.normal(0, 0.1, (50, 8)) for c in centres]).astype(np.float32)
    picked = kcenter_greedy(feats, np.arange(200), 4, first=0)
    assert sorted(i // 50 for i in picked) == [0, 1, 2, 3]


def test_combined_keeps_some_quiet_tiles():
    scores = _scores()
    scores.entropy[:] = 0.1
    scores.entropy[scores.change_fraction > 0.02] = 0.9  # busy tiles look most uncertain
    sel = select(scores, 10, "combined", audit=1, low_change_share=0.2)
    by_id = dict(zip(scores.tile_ids, scores.change_fraction, strict=True))
    assert sum(by_id[t] < 0.01 for t in sel.train) == 2


def test_combined_reaches_tiles_the_adapted_model_is_sure_of_but_the_source_model_disputes():
    scores = _scores()
    n = len(scores)
    scores.entropy = np.linspace(0.2, 0.8, n)  # the last tiles look most uncertain ...
    scores.change_fraction = np.linspace(0.04, 0.0, n)  # ... and quiet
    disputed = [5, 17, 42]  # confident tiles with much change, where the two models disagree
    scores.change_fraction[disputed] = 0.1
    scores.features = np.tile(np.r_[1.0, 1.0, 1.0, 0, 0] / np.sqrt(3), (n, 1))
    scores.features[disputed] = np.eye(3, 5)  # unlike the rest and each other
    # the uncertain share of the budget only (the likely-change share would take the disputed tiles
    # for their predicted change alone)
    before = select(scores, 3, "combined", audit=1, low_change_share=0, likely_change_share=0)
    assert not {scores.tile_ids[i] for i in disputed} & set(before.train)
    scores.disagreement = 0.02 + 0.01 * np.sin(np.arange(n))
    scores.disagreement[disputed] = 0.3
    after = select(scores, 3, "combined", audit=1, low_change_share=0, likely_change_share=0)
    assert set(after.train) == {scores.tile_ids[i] for i in disputed}
    assert after.audit == before.audit
    assert after.scores[scores.tile_ids[5]]["disagreement"] == pytest.approx(0.3)
    assert before.scores[scores.tile_ids[5]]["disagreement"] is None


def test_disagreement_is_zero_against_itself_and_absent_without_a_reference(tiny_regions):
    torch.manual_seed(0)
    small = TileSet(tiny_regions["source"])
    cfg = dict(dims=(16, 32, 64, 128), decoder_dim=16)
    model, other = ChangeNet(preset("tiny", **cfg)), ChangeNet(preset("tiny", **cfg))
    assert score_region(model, small, batch_size=4, progress=False).disagreement is None
    same = score_region(model, small, batch_size=4, progress=False, reference=model)
    assert same.disagreement.shape == (len(small),) and np.allclose(same.disagreement, 0, atol=1e-6)
    diff = score_region(model, small, batch_size=4, progress=False, reference=other)
    assert (diff.disagreement > 0).all() and (diff.disagreement <= 1).all()
    assert np.allclose(diff.entropy, same.entropy)  # the reference changes no other score


def test_mutual_info_needs_mc_scores():
    with pytest.raises(ValueError, match="mc_samples"):
        select(_scores(mi=False), 2, "mutual_info")
    with pytest.raises(ValueError, match="unknown selector"):
        select(_scores(), 2, "smartest")


def test_reduction_lets_a_few_very_uncertain_change_pixels_count():
    valid = torch.ones(2, 50, 50, dtype=torch.bool)
    u = torch.zeros(2, 50, 50)
    p = torch.zeros(2, 50, 50)
    u[0, :5, :5] = 1.0  # tile 0: 1 % of pixels, very uncertain, where change is predicted
    p[0, :5, :5] = 0.5
    u[1] = 0.05  # tile 1: everything mildly uncertain, no change predicted
    assert u[0].mean() < u[1].mean()  # a plain mean would rank tile 1 first
    s = reduce_uncertainty(u, p, valid)
    assert s[0] > s[1]


def test_scoring_is_streamed(tiny_regions):
    torch.manual_seed(0)
    model = ChangeNet(preset("tiny", dims=(16, 32, 64, 128), decoder_dim=16))
    small = TileSet(tiny_regions["source"], cache=False)
    scores = score_region(model, small, batch_size=4, mc_samples=2, progress=False)
    assert len(scores) == len(small) and scores.features.shape == (len(small), 32)
    assert np.isfinite(scores.entropy).all() and (scores.mutual_info >= 0).all()
    assert ((scores.change_fraction >= 0) & (scores.change_fraction <= 1)).all()

    # Streamed: never more than about one batch of tiles alive at once, nothing cached.
    alive: list[weakref.ref] = []
    most = 0
    original = TileSet.load

    def counting_load(self, i):
        nonlocal most
        item = original(self, i)
        alive.append(weakref.ref(item[0]))
        most = max(most, sum(r() is not None for r in alive))
        return item

    TileSet.load = counting_load
    try:
        score_region(model, small, batch_size=4, progress=False)
    finally:
        TileSet.load = original
    assert len(alive) == len(small) and most <= 2 * 4
    assert small._cache == {}


def test_combined_prefers_uncertain_tiles_that_hold_change():
    rng = np.random.default_rng(0)
    n = 200
    scores = _scores(n)
    scores.entropy = rng.random(n)
    scores.change_fraction = rng.random(n) * 0.1
    best_empty = int(np.argmax(np.where(scores.change_fraction < 0.01, scores.entropy, -1)))
    scores.entropy[best_empty] = 2.0  # the most uncertain tile predicts no change at all
    sel = select(scores, 1, "combined", audit=1, seed=0, likely_change_share=0)
    assert select(scores, 1, "entropy", audit=1, seed=0).train == [scores.tile_ids[best_empty]]
    (picked,) = [scores.tile_ids.index(t) for t in sel.train]
    assert scores.change_fraction[picked] > np.quantile(scores.change_fraction, 0.75)
    assert scores.entropy[picked] >= np.quantile(scores.entropy, 0.75)


def test_combined_fills_half_the_budget_with_the_tiles_of_most_predicted_change():
    """A micro set needs changed pixels: a one-tile budget takes the tile the adapted model
    predicts most change on; larger budgets mix such tiles (spread over the feature space) with
    uncertain ones and quiet ones."""
    rng = np.random.default_rng(1)
    n = 200
    scores = _scores(n)
    scores.entropy = rng.random(n)
    scores.change_fraction = rng.random(n) * 0.1
    busiest = [int(i) for i in np.argsort(-scores.change_fraction)[:3]]
    scores.features[busiest[1]] = scores.features[busiest[0]]  # the two busiest tiles look alike
    sel = select(scores, 1, "combined", audit=1, seed=0)
    assert sel.train == [scores.tile_ids[busiest[0]]]
    four = [scores.tile_ids.index(t) for t in select(scores, 4, "combined", audit=1, seed=0).train]
    assert len(set(four)) == 4
    likely, uncertain, quiet = four[:2], four[2], four[3]
    assert busiest[0] in likely and busiest[1] not in likely  # spread, not two copies
    assert all(scores.change_fraction[i] >= np.quantile(scores.change_fraction, 0.75) for i in likely)
    assert scores.entropy[uncertain] >= np.quantile(scores.entropy, 0.75)
    assert scores.change_fraction[quiet] < 0.01


def test_a_share_of_audit_tiles_is_raised_to_the_floor_a_count_is_not():
    # The step's rule (select --audit/--min-audit) lives here, so the library's select() follows it too.
    assert audit_count(0.01, 60) == DEFAULT_MIN_AUDIT == 20
    assert audit_count(0.01, 16) == 8  # at most half the region
    assert audit_count(0.01, 5000) == 50
    assert audit_count(4, 300) == 4
    assert audit_count(0.01, 60, minimum=0) == 1
    scores = _scores(n=60)
    assert len(select(scores, 2, "random", audit=0.01).audit) == 20
    assert len(select(scores, 2, "random", audit=3).audit) == 3
