"""Shapes and behaviour of the DAM-Net networks."""

from __future__ import annotations

import pytest
import torch

from damnet.losses import adversarial_loss, segmentation_loss
from damnet.models import (
    MAE,
    PRESETS,
    ChangeNet,
    MultiTemporalTransformer,
    SegDiscriminator,
    count_flops,
    count_parameters,
    discriminator_input,
    preset,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ChangeNet(preset("tiny")).eval()


@pytest.mark.parametrize("h,w", [(64, 64), (96, 160), (256, 256)])
def test_logits_at_input_resolution_for_any_size_divisible_by_32(tiny, h, w):
    pre = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    out = tiny(pre, pre)
    assert out.shape == (2, 2, h, w)
    assert torch.isfinite(out).all()


def test_sizes_not_divisible_by_32_are_refused(tiny):
    x = torch.zeros(1, 3, 100, 64)
    with pytest.raises(ValueError, match="divisible by 32"):
        tiny(x, x)


def test_discriminator_gives_a_spatial_logit_matrix():
    d = SegDiscriminator(2, 16)
    assert d(torch.rand(3, 2, 256, 256)).shape == (3, 1, 8, 8)
    assert d(torch.rand(1, 2, 128, 192)).shape == (1, 1, 4, 6)
    logits = torch.randn(2, 2, 32, 32)
    p = discriminator_input(logits, "softmax+entropy")
    assert p.shape == (2, 3, 32, 32)
    assert torch.allclose(p[:, :2].sum(1), torch.ones(2, 32, 32))
    assert p[:, 2].min() >= 0 and p[:, 2].max() <= 1
    info = discriminator_input(logits, "self_info")
    assert torch.allclose(info.sum(1), p[:, 2], atol=1e-6)
    with pytest.raises(ValueError, match="unknown discriminator input"):
        discriminator_input(logits, "images")


def test_mtt_keeps_shapes_and_knows_which_date_is_which():
    torch.manual_seed(0)
    mtt = MultiTemporalTransformer(32, depth=1, heads=4).eval()
    with torch.no_grad():
        mtt.date.copy_(torch.randn(2, 32))
    a, b = torch.randn(2, 32, 4, 6), torch.randn(2, 32, 4, 6)
    o1, o2 = mtt(a, b)
    assert o1.shape == a.shape and o2.shape == b.shape
    s2, s1 = mtt(b, a)
    assert not torch.allclose(o1, s1, atol=1e-5)  # swapping dates is not a no-op


def test_presets_report_parameters_and_flops():
    sizes = {n: count_parameters(ChangeNet(PRESETS[n])) for n in ("tiny", "base")}
    assert sizes["tiny"] < 2e6 < 2e7 < sizes["base"]
    flops = count_flops(ChangeNet(preset("tiny")), 64)
    assert count_flops(ChangeNet(preset("tiny")), 128) == pytest.approx(4 * flops, rel=0.15)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")


def test_segmentation_loss_prefers_the_right_answer_and_ignores_invalid_pixels():
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[0, :2] = 1
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    right = torch.stack([1 - label.float(), label.float()], 1) * 8 - 4
    assert segmentation_loss(right, label, valid) < 0.1 < segmentation_loss(-right, label, valid)
    # Wrong only where the mask says "no data": costs nothing.
    noisy = right.clone()
    noisy[0, :, 7] = -noisy[0, :, 7]
    valid[0, 7] = False
    assert segmentation_loss(noisy, label, valid) == pytest.approx(
        float(segmentation_loss(right, label, valid)), abs=1e-6)


def test_adversarial_losses():
    confident_source = torch.full((2, 1, 4, 4), -6.0)
    for kind, low in (("bce", 0.01), ("lsgan", 0.001)):
        assert adversarial_loss(confident_source, 0.0, kind) < low
        assert adversarial_loss(confident_source, 1.0, kind) > low


def test_mae_reconstruction_loss_falls():
    torch.manual_seed(0)
    net = ChangeNet(preset("tiny"))
    mae = MAE(net.encoder, mask_ratio=0.5)
    x = torch.rand(4, 3, 64, 64)
    opt = torch.optim.AdamW(mae.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        first = mae(x, generator=torch.Generator().manual_seed(1)).item()
    for _ in range(25):
        loss = mae(x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert mae(x, generator=torch.Generator().manual_seed(1)).item() < 0.8 * first


def test_segmentation_loss_on_a_batch_without_change_is_the_weighted_ce_alone():
    """Dice on an all-background batch would push every prediction to 0 (collapse)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 16, 16)
    label = torch.zeros(2, 16, 16, dtype=torch.long)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    with_dice = segmentation_loss(logits, label, valid, dice_weight=1.0)
    assert with_dice == pytest.approx(float(segmentation_loss(logits, label, valid, dice_weight=0.0)))
    label[0, 3, 3] = 1
    assert segmentation_loss(logits, label, valid, dice_weight=1.0) > segmentation_loss(
        logits, label, valid, dice_weight=0.0)
