"""The loss terms of the training engine (:func:`damnet.train.fit`), on change logits (B, 2, H, W).

Labelled: weighted cross-entropy + soft Dice (:func:`segmentation_loss`). Adversarial: the
discriminator's BCE or LSGAN loss (:func:`adversarial_loss`). On unlabelled target batches:
cross-entropy to an EMA teacher's confident pixels (:func:`pseudo_loss`), the KL of the predicted
change share to the source's (:func:`change_prior`), and the KL to a frozen starting model
(:func:`anchor_loss`). Losses are computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from typing import cast

import torch
from torch.nn import functional as F

from damnet.data import Batch


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor,
                      change_weight: float = 3.0, dice_weight: float = 1.0) -> torch.Tensor:
    """Weighted cross-entropy + soft Dice of the change class, over valid pixels only."""
    logits = logits.float()
    weight = torch.tensor([1.0, change_weight], device=logits.device)
    ce = F.cross_entropy(logits, label, weight=weight, reduction="none")
    v = valid.float()
    ce = (ce * v).sum() / (weight[label] * v).sum().clamp_min(1.0)
    if dice_weight <= 0:
        return ce
    t = label.float() * v
    if t.sum() == 0:
        # No change pixel in the batch (common for micro-label batches): Dice would only push
        # every prediction to 0 - the collapse to "no change" - so the weighted CE alone teaches
        # what is *not* change here.
        return ce
    p = logits.softmax(1)[:, 1] * v
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return ce + dice_weight * dice


def adversarial_loss(logits: torch.Tensor, target: float, kind: str) -> torch.Tensor:
    logits = logits.float()
    if kind == "lsgan":
        return ((torch.sigmoid(logits) - target) ** 2).mean()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def pseudo_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor,
                 threshold: float) -> torch.Tensor:
    """Cross-entropy to the teacher's confident pixels, averaged per class (so the many
    confident background pixels cannot outvote the few confident change pixels)."""
    p = teacher.float().softmax(1)[:, 1]
    losses = []
    for cls, mask in ((1, p >= threshold), (0, p <= 1 - threshold)):
        mask = mask & valid
        if mask.any():
            ce = F.cross_entropy(student.float(), torch.full_like(valid, cls, dtype=torch.long),
                                 reduction="none")
            losses.append(ce[mask].mean())
    return cast(torch.Tensor, sum(losses)) / len(losses) if losses else student.sum() * 0.0


def change_prior(target_logits: torch.Tensor, valid: torch.Tensor, source: Batch | None) -> torch.Tensor:
    """Binary KL(source label change share || target predicted change share) over the batch."""
    v = valid.float()
    q = ((target_logits.float().softmax(1)[:, 1] * v).sum() / v.sum().clamp_min(1)).clamp(1e-4, 1 - 1e-4)
    if source is None or source.label is None:
        return q * 0.0
    sv = source.valid.float()
    r = ((source.label.float() * sv).sum() / sv.sum().clamp_min(1)).clamp(1e-3, 1 - 1e-3)
    return r * torch.log(r / q) + (1 - r) * torch.log((1 - r) / (1 - q))


def anchor_loss(student: torch.Tensor, anchor: torch.Tensor, valid: torch.Tensor,
                 on: str = "all") -> torch.Tensor:
    """KL(anchor || student) of the per-pixel class distributions, averaged over valid pixels
    (``on="change"``: over the valid pixels the anchor predicts as change, so it keeps what the
    starting model finds without holding the model to its misses)."""
    log_s = student.float().log_softmax(1)
    log_a = anchor.float().log_softmax(1)
    kl = (log_a.exp() * (log_a - log_s)).sum(1)
    if on == "change":
        valid = valid & (log_a[:, 1] > log_a[:, 0])
    v = valid.float()
    return (kl * v).sum() / v.sum().clamp_min(1)
