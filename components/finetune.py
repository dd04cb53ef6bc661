"""Micro-Labeled Fine-Tuning: the adapted model on the few imported labels of the region.

Inputs: the adapted model and discriminator, the imported micro labels (the ``train`` set
only; the audit set is never trained on), the region's tiles and the labelled source tiles.
Output: model.pt, the candidate for promotion.
"""

from __future__ import annotations

import argparse

from components.inputs import micro_labels, source_split_input, source_training_tiles, tiles_of
from components.records import Layout, StepError, input_of, upstream
from components.step import RunOptions, run_step
from components.training import (
    drop_checkpoint,
    key_params,
    load_discriminator,
    stream,
    train_config,
)
from damnet import registry
from damnet.data import TileSet
from damnet.train import fit


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    target, t_rec = tiles_of(layout, labels=None)
    source, s_rec = source_training_tiles(layout.of(args.source_region))
    adapt = upstream(layout, "adapt")
    labels, l_rec = micro_labels(layout, "train")
    if not labels:
        raise StepError(f"region {layout.region!r}: the imported labels have no 'train' tiles to fine-tune on")
    cfg = train_config(args, "finetune", inherit=adapt["params"]["train"])
    inputs = {"tiles": input_of(t_rec, "tiles"), "source_tiles": input_of(s_rec, "tiles"),
              **source_split_input(layout.of(args.source_region)),
              "adapted": input_of(adapt, "model"), "labels": input_of(l_rec, "labels")}
    params = {"train": key_params(cfg), "source_region": args.source_region}

    def body(run):
        model, _ = registry.load_model(adapt["outputs"]["model"])
        disc = load_discriminator(adapt["outputs"]["discriminator"], model) if cfg.lambda_adv > 0 else None
        micro = TileSet(t_rec["outputs"]["tiles"], tile_ids=sorted(labels), labels=labels)
        result = fit(model, cfg, source=stream(source, cfg, "source"), target=stream(target, cfg, "target"),
                     micro=stream(micro, cfg, "micro"), discriminator=disc,
                     out_dir=run.path("checkpoint"), on_log=run.on_log())
        registry.save_model(model, run.path("model.pt"), region=layout.region, mode="finetune",
                            parent=adapt["outputs"]["model"], micro_tiles=sorted(labels), steps=cfg.steps)
        run.outputs.update(model=run.path("model.pt"))
        drop_checkpoint(run)
        run.metrics.update(train_seconds=result.seconds, micro_tiles=len(labels))
        run.info.update(history=result.history)

    run_step("finetune", inputs, params, body, layout, RunOptions.from_args(args))
