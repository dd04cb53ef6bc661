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

from components.step import Layout, add_common_arguments, run_step
from components.training import (
    add_training_arguments,
    drop_checkpoint,
    key_params,
    model_input,
    stream,
    tiles_of,
    train_config,
)
from damnet import registry
from damnet.data import TileSet
from damnet.models import PRESETS, ChangeNet, preset
from damnet.train import fit, save_state


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--source-region", default="source")
    p.add_argument("--source-model", default=f"models:/{registry.SOURCE_MODEL}@{registry.CHAMPION}",
                   help="registry URI or model file whose encoder pretraining continues from")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="start a fresh encoder of this preset instead of the source model's")
    add_training_arguments(p, "pretrain")


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
    inputs = {"tiles": {"uri": t_rec["outputs"]["tiles"], "digest": t_rec["key"]},
              "source_tiles": {"uri": s_rec["outputs"]["tiles"], "digest": s_rec["key"]}}
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

    run_step("pretrain", args, inputs, params, body, layout)
