"""Inference over tiles and the metrics of a model on an evaluation set."""

from __future__ import annotations

import torch

from damnet.data import TileSet
from damnet.metrics import Confusion, ScoreHistogram
from damnet.models import ChangeNet
from damnet.train import resolve_device


@torch.no_grad()
def change_probability(model: ChangeNet, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """(B, H, W) probability of change for uint8 image batches already on the model's device."""
    return model(pre, post).float().softmax(1)[:, 1]


@torch.no_grad()
def evaluate(model: ChangeNet, tiles: TileSet, batch_size: int = 8, threshold: float = 0.5,
             device: str = "auto", progress: bool | None = None,
             histogram: ScoreHistogram | None = None) -> Confusion:
    """One confusion matrix summed over every valid pixel of ``tiles`` (which need labels).

    With ``histogram``, every valid pixel's change probability is also added to it (PR curves).
    """
    from tqdm.auto import tqdm

    if not tiles.has_labels():
        raise ValueError(f"{tiles.region_uri}: evaluation needs labelled tiles")
    dev = resolve_device(device)
    model.to(dev).eval()
    conf = Confusion()
    batches = tiles.iter_batches(batch_size)
    for b in tqdm(batches, total=-(-len(tiles) // batch_size), desc="evaluate", unit="batch",
                  leave=False, disable=None if progress is None else not progress):
        b = b.to(dev)
        prob = change_probability(model, b.pre, b.post)
        conf.update(prob >= threshold, b.label, b.valid)
        if histogram is not None:
            histogram.update(prob, b.label, b.valid)
    return conf
