"""Inference over tiles and the metrics of a model on an evaluation set."""

from __future__ import annotations

import torch

from damnet.data import TileSet
from damnet.device import resolve_device
from damnet.metrics import Confusion, ScoreHistogram
from damnet.models import ChangeNet
from damnet.progress import Progress


@torch.no_grad()
def change_probability(model: torch.nn.Module, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """(B, H, W) probability of change for uint8 image batches already on the model's device
    (``model``: a :class:`ChangeNet` or any module giving its (B, 2, H, W) logits)."""
    return model(pre, post).float().softmax(1)[:, 1]


@torch.no_grad()
def evaluate(model: ChangeNet, tiles: TileSet, batch_size: int = 8, threshold: float = 0.5,
             device: str = "auto", progress: bool | None = None,
             histogram: ScoreHistogram | None = None,
             per_tile: dict[str, Confusion] | None = None) -> Confusion:
    """One confusion matrix summed over every valid pixel of ``tiles`` (which need labels).

    With ``histogram``, every valid pixel's change probability is also added to it (PR curves).
    With ``per_tile``, each tile's own confusion matrix is stored in it under its tile id
    (what :func:`damnet.metrics.bootstrap_f1` resamples).
    """
    if not tiles.has_labels():
        raise ValueError(f"{tiles.region_uri}: evaluation needs labelled tiles")
    dev = resolve_device(device)
    model.to(dev).eval()
    conf = Confusion()
    ids = tiles.ids if per_tile is not None else []
    batches = tiles.iter_batches(batch_size)
    for b in Progress(batches, total=-(-len(tiles) // batch_size), desc="evaluate", unit="batch",
                      leave=False, enabled=progress):
        b = b.to(dev)
        prob = change_probability(model, b.pre, b.post)
        pred = prob >= threshold
        label = b.label
        assert label is not None  # has_labels() above
        conf.update(pred, label, b.valid)
        if per_tile is not None:
            for j, i in enumerate(b.index.tolist()):
                per_tile[ids[i]] = Confusion().update(pred[j], label[j], b.valid[j])
        if histogram is not None:
            histogram.update(prob, b.label, b.valid)
    return conf
