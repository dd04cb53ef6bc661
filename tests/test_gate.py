"""The promotion gate's evidence: F1 intervals over audit tiles and the decisions they allow."""

from __future__ import annotations

import numpy as np
import pytest

from damnet import registry
from damnet.metrics import (
    Confusion,
    UndefinedF1,
    bootstrap_f1,
    bootstrap_f1_difference,
    f1_of_counts,
)
from damnet.select import audit_count

PIXELS = 64 * 64


def audit_tiles(n: int, recall: float, seed: int = 0, change_share: float = 0.6, false_alarms: int = 150,
                spread: float = 0.2) -> dict[str, list[int]]:
    """``n`` tiles of 64 x 64 px: ``change_share`` of them hold change, found at about ``recall``."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        changed = int(rng.integers(50, 1500)) if rng.random() < change_share else 0
        tp = int(changed * np.clip(recall + rng.normal(0, spread), 0, 1))
        fp = int(rng.integers(0, 2 * false_alarms))
        out[f"t{i:03d}"] = [tp, fp, changed - tp, PIXELS - changed - fp]
    return out


def better(tiles: dict, found: float) -> dict:
    """The same tiles (same labels) with ``found`` of each tile's missed change found too."""
    return {t: [tp + int(fn * found), fp, fn - int(fn * found), tn] for t, (tp, fp, fn, tn) in tiles.items()}


def decide(candidate: dict, champion: dict | None, source=(0.80, 0.80), **kw) -> registry.Decision:
    f1 = lambda tiles: f1_of_counts(np.sum(list(tiles.values()), axis=0)).item()  # noqa: E731
    return registry.gate({"audit_f1": f1(candidate), "source_f1": source[0], "audit_confusions": candidate},
                         None if champion is None else {"audit_f1": f1(champion), "audit_confusions": champion},
                         source[1], **kw)


# --------------------------------------------------------------------------- the interval


def test_interval_holds_the_summed_f1_and_narrows_with_more_tiles():
    widths = []
    for n in (8, 32, 128):
        tiles = audit_tiles(n, recall=0.6, seed=n)
        ci = bootstrap_f1(tiles)
        summed = sum((Confusion(*c) for c in tiles.values()), Confusion())
        assert ci.estimate == pytest.approx(summed.f1)
        assert ci.low <= ci.estimate <= ci.high
        assert ci.n_tiles == n and ci.confidence == 0.9
        widths.append(ci.width)
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[2] < widths[0] / 2


def test_interval_is_deterministic_for_a_seed():
    tiles = audit_tiles(20, recall=0.6)
    assert bootstrap_f1(tiles, seed=3) == bootstrap_f1(tiles, seed=3)
    assert bootstrap_f1(tiles, seed=3).low != bootstrap_f1(tiles, seed=4).low
    # a higher confidence gives a wider interval around the same estimate
    assert bootstrap_f1(tiles, confidence=0.99).width > bootstrap_f1(tiles, confidence=0.8).width


def test_f1_without_any_changed_pixel_is_undefined():
    no_change = {f"t{i}": [0, 3 * i, 0, PIXELS - 3 * i] for i in range(12)}
    with pytest.raises(UndefinedF1, match="none of the 12 tile"):
        bootstrap_f1(no_change)
    with pytest.raises(UndefinedF1):
        bootstrap_f1_difference(no_change, no_change)


def test_paired_difference_shows_a_consistent_gain_that_two_separate_intervals_hide():
    # Tile difficulty varies a lot, and the candidate finds 15 % more of what was missed on
    # every tile: the two models' intervals overlap, the paired gain is clearly positive.
    champion = audit_tiles(20, recall=0.5, spread=0.35, seed=7)
    candidate = better(champion, 0.15)
    a, b = bootstrap_f1(candidate), bootstrap_f1(champion)
    assert a.low < b.high  # overlapping
    gain = bootstrap_f1_difference(candidate, champion)
    assert gain.estimate == pytest.approx(a.estimate - b.estimate)
    assert 0 < gain.low <= gain.estimate <= gain.high


def test_paired_difference_refuses_tiles_that_are_not_the_same():
    a = audit_tiles(10, recall=0.6, seed=1)
    with pytest.raises(ValueError, match="differ in number"):
        bootstrap_f1_difference(a, dict(list(a.items())[:9]))
    with pytest.raises(ValueError, match="not the same tiles"):
        bootstrap_f1_difference(a, audit_tiles(10, recall=0.6, seed=2))


# --------------------------------------------------------------------------- the decisions


def test_one_audit_tile_is_not_enough_evidence():
    # Issue 16: one audit tile without change; the candidate predicted none (F1 1.0), the
    # champion some (F1 0.0). It was promoted; its F1 on the rest of the region was 2.3 %.
    d = decide({"t0": [0, 0, 0, PIXELS]}, {"t0": [0, 40, 0, PIXELS - 40]})
    assert not d.promote
    assert d.reasons[0].startswith("not enough audit evidence: 1 audit tile, the gate needs at least 10")
    assert d.checks["audit"]["evidence"] == "not enough"
    assert d.tags()["damnet.evidence"] == "not enough"
    # ... and a clear-looking win on one tile with change is no evidence either
    d = decide({"t0": [900, 10, 100, 3086]}, {"t0": [100, 10, 900, 3086]})
    assert not d.promote and "not enough audit evidence" in d.reasons[0]


def test_audit_sets_without_enough_change_cannot_decide():
    quiet = {f"t{i}": [0, i, 0, PIXELS - i] for i in range(20)}
    d = decide(quiet, {t: [0, 0, 0, PIXELS] for t in quiet})
    assert not d.promote
    assert "none of the 20 audit tiles holds a changed pixel, so audit F1 is undefined" in d.reasons[0]
    few = dict(quiet, t0=[500, 0, 0, PIXELS - 500], t1=[300, 0, 0, PIXELS - 300])
    d = decide(few, {t: [0, 0, c[0] + c[2], PIXELS - c[0] - c[2]] for t, c in few.items()})
    assert not d.promote
    assert "not enough audit evidence: 2 of 20 audit tiles hold true change, the gate needs at least 5" in d.reasons[0]
    # The thresholds are the caller's: with min_change_tiles=2 this clear win decides.
    assert decide(few, {t: [0, 0, c[0] + c[2], PIXELS - c[0] - c[2]] for t, c in few.items()},
                  evidence=registry.Evidence(min_change_tiles=2)).promote


def test_a_clear_win_on_enough_tiles_is_promoted_with_its_interval():
    champion = audit_tiles(30, recall=0.45, seed=2)
    d = decide(better(champion, 0.5), champion, margin=0.01)
    assert d.promote, d.reasons
    audit = d.checks["audit"]
    assert audit["evidence"] == "enough" and audit["tiles"] == 30
    assert audit["difference"]["low"] > 0.01
    assert "clears the margin 0.01" in d.reasons[0] and "90% interval" in d.reasons[0]
    tags = d.tags()
    low, high = (float(x) for x in tags["damnet.audit_f1_ci"].split("-"))
    assert low == pytest.approx(audit["candidate"]["low"], abs=0.005)
    assert high == pytest.approx(audit["candidate"]["high"], abs=0.005)
    assert tags["damnet.audit_tiles"] == "30" and tags["damnet.audit_f1_ci_level"] == "0.9"
    assert tags["damnet.audit_f1_gain_ci"].startswith("+")


def test_a_point_win_the_interval_does_not_support_is_refused():
    # Much better on 2 of 12 tiles, a little worse on the other 10: the point estimate beats
    # champion + margin (the old rule promoted that), the gain's lower bound does not.
    champion = {f"t{i}": [250, 50, 250, PIXELS - 550] for i in range(12)}
    candidate = {t: [500, 50, 0, tn] if i < 2 else [220, 50, 280, tn]
                 for i, (t, (_, _, _, tn)) in enumerate(champion.items())}
    d = decide(candidate, champion, margin=0.01)
    gain = d.checks["audit"]["difference"]
    assert gain["estimate"] > 0.01 and gain["low"] <= 0.01
    assert not d.promote
    assert "does not clear the margin 0.01: not shown to be better" in d.reasons[0]


@pytest.mark.parametrize("margin", [0.01, 0.0])
def test_a_tie_never_promotes(margin):
    tiles = audit_tiles(20, recall=0.6, seed=3)
    d = decide(tiles, {t: list(c) for t, c in tiles.items()}, margin=margin)
    assert not d.promote
    assert "a tie never promotes" in d.reasons[0]
    # the issue-17 case: both F1 0 (neither finds any change) is a tie too
    blind = {t: [0, fp, tp + fn, tn] for t, (tp, fp, fn, tn) in tiles.items()}
    d = decide(blind, blind, margin=margin)
    assert not d.promote and "a tie never promotes" in d.reasons[0]


def test_a_negative_margin_is_an_explicit_override():
    tiles = audit_tiles(20, recall=0.6, seed=3)
    worse = {t: [tp // 2, fp, fn + tp - tp // 2, tn] for t, (tp, fp, fn, tn) in tiles.items()}
    assert not decide(worse, tiles, margin=0.0).promote
    d = decide(worse, tiles, margin=-1)
    assert d.promote and "clears the margin -1" in d.reasons[0]
    assert decide(tiles, tiles, margin=-1).promote  # a tie too, when the operator asks for it


def test_without_a_champion_the_lower_bound_must_clear_the_margin():
    assert decide(audit_tiles(20, recall=0.7, seed=4), None).promote
    d = decide({t: [0, fp, tp + fn, tn] for t, (tp, fp, fn, tn) in audit_tiles(20, 0.7, seed=4).items()}, None)
    assert not d.promote and "no champion" in d.reasons[0]


def test_forgetting_the_source_refuses_and_reads_well():
    champion = audit_tiles(30, recall=0.45, seed=2)
    d = decide(better(champion, 0.5), champion, source=(0.60, 0.80), max_source_drop=0.05)
    assert not d.promote
    assert d.reasons[1] == ("source-holdout F1 0.600 is 0.200 below the source model's 0.800 "
                            "(beyond the allowed drop of 0.05)")
    d = decide(better(champion, 0.5), champion, source=(0.78, 0.73))
    assert d.promote
    assert d.reasons[1] == ("source-holdout F1 0.780 is 0.050 above the source model's 0.730 "
                            "(within the allowed drop of 0.05)")


def test_a_model_that_could_not_be_evaluated_never_becomes_champion():
    champion = audit_tiles(30, recall=0.45, seed=2)
    candidate = better(champion, 0.5)
    # no source-holdout score of the source model
    d = decide(candidate, champion, source=(0.8, None))
    assert not d.promote and "source-holdout F1 cannot be checked" in d.reasons[-1]
    # no per-tile audit results (an evaluation from before they were recorded)
    d = registry.gate({"audit_f1": 0.9, "source_f1": 0.8}, {"audit_f1": 0.1}, 0.8)
    assert not d.promote and d.reasons[0].startswith("not enough audit evidence: the evaluation has no per-tile")
    # the champion scored on other tiles
    d = decide(candidate, dict(list(champion.items())[:-1]))
    assert not d.promote and "not scored on the same audit tiles" in d.reasons[0]


@pytest.mark.parametrize("candidate", [{"audit_f1": 0.9}, {"audit_f1": float("nan"), "source_f1": 0.9},
                                       {"source_f1": 0.9, "audit_f1": None}])
def test_gate_refuses_a_model_missing_metrics(candidate):
    tiles = audit_tiles(30, recall=0.6)
    d = registry.gate(dict(candidate, audit_confusions=tiles), {"audit_f1": 0.1, "audit_confusions": tiles}, 0.9)
    assert not d.promote
    assert "lacks required metric" in d.reasons[0]


# --------------------------------------------------------------------------- the audit size


@pytest.mark.parametrize(("audit", "tiles", "expected"), [
    (0.01, 60, 20),     # issue 16's 60-tile region: was 1 tile
    (0.01, 48, 20),
    (0.01, 300, 20),    # a region of a few hundred tiles
    (0.01, 5000, 50),   # a large region: the share
    (0.01, 16, 8),      # a tiny region: the floor stops at half of it
    (4, 300, 4),        # an explicit count is taken as it is
])
def test_default_audit_size_gives_the_gate_enough_tiles(audit, tiles, expected):
    assert audit_count(audit, tiles) == expected


def test_without_the_floor_a_small_region_gets_one_audit_tile():
    assert audit_count(0.01, 60, minimum=0) == 1


def test_record_decision_puts_the_interval_on_the_model_version(tmp_path, mlflow_sqlite):
    import mlflow
    import torch

    from damnet.models import ChangeNet, preset

    torch.manual_seed(0)
    registry.save_model(ChangeNet(preset("tiny")), str(tmp_path / "m.pt"))
    mlflow.set_experiment("gate")
    with mlflow.start_run():
        info = registry.log_model(str(tmp_path / "m.pt"), "damnet-gate")
    champion = audit_tiles(30, recall=0.45, seed=2)
    decision = decide(better(champion, 0.5), champion)
    client = mlflow.MlflowClient()
    registry.record_decision(client, "damnet-gate", str(info.registered_model_version), decision)
    tags = client.get_model_version("damnet-gate", str(info.registered_model_version)).tags
    assert tags["damnet.decision"] == "promoted"
    assert tags["damnet.audit_f1_ci"] == decision.tags()["damnet.audit_f1_ci"]
    assert tags["damnet.audit_tiles"] == "30" and tags["damnet.evidence"] == "enough"
    assert "90% interval" in tags["damnet.reasons"]
