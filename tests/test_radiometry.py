"""Radiometric alignment (damnet.radiometry): per-date, per-band histogram matching of a region
to the source, carried by the model as its input tables (ChangeNet.input_lut)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from damnet.models import ChangeNet, preset
from damnet.models.changenet import identity_lut
from damnet.radiometry import apply_lut, matching_lut


def _hist(values: np.ndarray) -> np.ndarray:
    return np.bincount(values.ravel(), minlength=256).astype(float)


def _histograms(pre: np.ndarray, post: np.ndarray) -> np.ndarray:
    return np.stack([np.stack([_hist(img[b]) for b in range(3)]) for img in (pre, post)])


def test_a_brighter_region_is_matched_back_onto_the_source_date_by_date():
    rng = np.random.default_rng(0)
    src_pre = rng.normal(90, 20, (3, 64, 64)).clip(0, 255).astype(np.uint8)
    src_post = rng.normal(110, 25, (3, 64, 64)).clip(0, 255).astype(np.uint8)
    # The region: the same scenes 40 DN brighter before, half the contrast after.
    reg_pre = (src_pre.astype(int) + 40).clip(0, 255).astype(np.uint8)
    reg_post = (src_post.astype(float) * 0.5 + 30).clip(0, 255).astype(np.uint8)
    lut = matching_lut(_histograms(src_pre, src_post), _histograms(reg_pre, reg_post))
    assert lut.shape == (2, 3, 256) and lut.dtype == torch.uint8
    pre = apply_lut(torch.from_numpy(reg_pre)[None], lut[0])[0].numpy().astype(float)
    post = apply_lut(torch.from_numpy(reg_post)[None], lut[1])[0].numpy().astype(float)
    assert abs(pre.mean() - src_pre.mean()) < 2 and abs(post.mean() - src_post.mean()) < 2
    assert abs(post.std() - src_post.std()) < 3  # the lost contrast is back
    half = matching_lut(_histograms(src_pre, src_post), _histograms(reg_pre, reg_post), strength=0.5)
    midway = apply_lut(torch.from_numpy(reg_pre)[None], half[0])[0].numpy().astype(float).mean()
    assert abs(midway - (reg_pre.mean() + src_pre.mean()) / 2) < 2


def test_strength_zero_and_empty_bands_leave_the_input_as_it_is():
    h = np.zeros((2, 3, 256))
    h[..., 100] = 5
    assert torch.equal(matching_lut(h, h * 0 + 1, strength=0.0), identity_lut())
    assert torch.equal(matching_lut(np.zeros((2, 3, 256)), h), identity_lut())  # no source pixels
    with pytest.raises(ValueError, match="strength"):
        matching_lut(h, h, strength=1.5)


def test_the_model_reads_its_inputs_through_its_tables_and_keeps_them_in_its_weights():
    torch.manual_seed(0)
    model = ChangeNet(preset("tiny")).eval()
    pre = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    post = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        plain = model(pre, post)
        lut = identity_lut()
        lut[1] = (torch.arange(256) // 2).to(torch.uint8)  # the post images at half brightness
        model.set_input_lut(lut)
        matched = model(pre, post)
        assert not torch.allclose(plain, matched)
        assert torch.allclose(matched, model(pre, post // 2, aligned=True))
        clone = ChangeNet(preset("tiny")).eval()
        clone.load_state_dict(model.state_dict())
        assert clone.matching and torch.allclose(clone(pre, post), matched)
        # imagery of another region (the gate's source holdout) is read without the tables
        with model.tables_off():
            assert torch.allclose(model(pre, post), plain)
        assert model.matching and torch.allclose(model(pre, post), matched)
        # A checkpoint from before input tables existed reads its inputs as they are.
        old = {k: v for k, v in model.state_dict().items() if k != "input_lut"}
        again = ChangeNet(preset("tiny")).eval()
        again.load_state_dict(old)
        assert not again.matching and torch.equal(again.input_lut, identity_lut())
    with pytest.raises(ValueError, match="2 dates, 3 bands"):
        model.set_input_lut(torch.zeros(3, 256, dtype=torch.uint8))


def test_training_reads_the_region_through_the_tables_and_the_source_as_it_is(monkeypatch):
    """fit: target and micro batches go through the model's tables, labelled source batches do not."""
    import damnet.train as train
    from damnet.data import Batch

    model = ChangeNet(preset("tiny"))
    lut = identity_lut()
    lut[:] = 7  # every pixel of the region becomes 7
    model.set_input_lut(lut)

    def batch(value: int) -> Batch:
        img = torch.full((1, 3, 32, 32), value, dtype=torch.uint8)
        label, valid = torch.zeros(1, 32, 32, dtype=torch.long), torch.ones(1, 32, 32, dtype=torch.bool)
        return Batch(img, img.clone(), label, valid, torch.zeros(1, dtype=torch.long))

    out = train._aligned(model, {"source": batch(200), "target": batch(100), "micro": batch(50)})
    assert int(out["source"].pre.max()) == 200
    assert int(out["target"].pre.max()) == int(out["micro"].post.min()) == 7
