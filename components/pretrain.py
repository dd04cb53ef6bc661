"""Optional masked-autoencoder pretraining of the encoder on unlabelled tiles of both domains.

Inputs: the region's tiles and the source region's tiles (images only) and the source model
(--source-model): pretraining continues from its encoder, so the result has its
architecture and stays compatible with its decoder (domain-adaptive pretraining).
``--preset NAME`` instead starts a fresh encoder of that preset (to pretrain a backbone
before a source model is trained). Output: encoder.pt (an encoder state dict that
``adapt --use-pretrain yes`` starts from).
"""

from __future__ import annotations

import argparse

import torch

from components.inputs import model_input, tiles_of
from components.records import Layout, input_of
from components.step import RunOptions, run_step
from components.training import drop_checkpoint, key_params, stream, train_config
from damnet import registry
from damnet.checkpoint import save_state
from damnet.data import TileSet
from damnet.models import ChangeNet, preset
from damnet.train import fit


class _Both(TileSet):
    """Tiles of two regions as one unlabelled set."""

    def __init__(self, a: TileSet, b: TileSet) -> None:
        self.region_uri, self.labels, self.cache, self._cache = a.region_uri, None, True, {}
        self.parts = [(a, i) for i in range(len(a))] + [(b, i) for i in range(len(b))]
        self.tiles = a.tiles + b.tiles

    def load(self, i: int):
        ts, j = self.parts[i]
        pre, post, _, valid = ts.load(j)
        return pre, post, None, valid


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    target, t_rec = tiles_of(layout, labels=None)
    source, s_rec = tiles_of(layout.of(args.source_region), labels=None)
    cfg = train_config(args, "pretrain")
    inputs = {"tiles": input_of(t_rec, "tiles"), "source_tiles": input_of(s_rec, "tiles")}
    if args.preset is None:
        inputs["source_model"] = model_input(args.source_model)
    params = {"train": key_params(cfg), "preset": args.preset}

    def body(run):
        if args.preset is None:
            model, _ = registry.load_model(inputs["source_model"]["uri"])
        else:
            torch.manual_seed(args.seed)  # the initial weights too: same inputs, same model
            model = ChangeNet(preset(args.preset))
        result = fit(model, cfg, unlabelled=stream(_Both(target, source), cfg, "unlabelled"),
                     out_dir=run.path("checkpoint"), on_log=run.on_log())
        save_state(run.path("encoder.pt"), {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
        run.outputs.update(encoder=run.path("encoder.pt"))
        drop_checkpoint(run)
        run.metrics.update(train_seconds=result.seconds,
                           final_mae=result.history[-1]["mae"] if result.history else float("nan"))

    run_step("pretrain", inputs, params, body, layout, RunOptions.from_args(args))
