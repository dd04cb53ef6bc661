"""Metrics from one summed confusion matrix, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from damnet.metrics import Confusion


def test_hand_computed_case():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    true = np.array([[1, 0, 1, 0], [1, 0, 0, 0]])
    c = Confusion().update(pred, true)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 4)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 / 3)
    assert c.iou == pytest.approx(2 / 4)
    assert c.overall_accuracy == pytest.approx(6 / 8)
    assert c.f1 == pytest.approx(2 * c.iou / (1 + c.iou))


def test_summed_over_the_set_not_averaged_per_image():
    # Image 1: perfect on 1 changed pixel. Image 2: 3 changed pixels, all missed.
    c = Confusion()
    c.update(np.array([1, 0, 0, 0]), np.array([1, 0, 0, 0]))
    c.update(np.array([0, 0, 0, 0]), np.array([1, 1, 1, 0]))
    assert c.recall == pytest.approx(1 / 4)  # a per-image mean would say 0.5
    assert c.precision == 1.0


def test_all_background_set():
    c = Confusion().update(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)))
    assert c.as_dict()["f1"] == 1.0 and c.iou == 1.0 and c.overall_accuracy == 1.0
    c.update(np.eye(8)[None], np.zeros((1, 8, 8)))  # one false alarm per row
    assert (c.tp, c.fp, c.fn) == (0, 8, 0)
    assert c.precision == 0.0 and c.recall == 1.0 and c.f1 == 0.0 and c.iou == 0.0
    assert c.overall_accuracy == pytest.approx(1 - 8 / 256)


def test_change_all_missed():
    c = Confusion().update(np.zeros(10), np.ones(10))
    assert c.precision == 1.0 and c.recall == 0.0 and c.f1 == 0.0 and c.iou == 0.0


def test_valid_mask_and_tensors():
    pred = torch.tensor([[1, 1], [0, 1]])
    true = torch.tensor([[1, 0], [0, 0]])
    valid = torch.tensor([[True, False], [True, False]])
    c = Confusion().update(pred, true, valid)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 0, 0, 1)
    with pytest.raises(ValueError, match="shape"):
        Confusion().update(np.zeros(3), np.zeros(4))
    assert (Confusion(1, 2, 3, 4) + Confusion(1, 1, 1, 1)).as_dict()["tp"] == 2


def test_score_histogram_pr_curve_and_average_precision():
    from damnet.metrics import ScoreHistogram

    rng = np.random.default_rng(0)
    target = rng.random(20000) < 0.1
    perfect = ScoreHistogram().update(np.where(target, 0.9, 0.1), target)
    assert perfect.average_precision == pytest.approx(1.0)
    noise = ScoreHistogram().update(rng.random(20000), target)
    assert noise.average_precision == pytest.approx(target.mean(), abs=0.02)
    thresholds, precision, recall = perfect.pr_curve()
    assert recall[0] == 1.0 and precision[0] == pytest.approx(target.mean())  # threshold 0: all change
    valid = np.zeros(20000, bool)
    valid[:100] = True
    assert ScoreHistogram().update(np.full(20000, 0.5), target, valid).pos.sum() == target[:100].sum()
