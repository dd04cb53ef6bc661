"""Micro-Labeled Fine-Tuning: the adapted model on the few imported labels of the region.

Inputs: the adapted model and discriminator, the imported micro labels (the ``train`` set
only; the audit set is never trained on), the region's tiles and the labelled source tiles.
Output: model.pt, the candidate for promotion.
"""

from __future__ import annotations

import argparse

from components.adapt import load_discriminator
from components.step import Layout, StepError, add_common_arguments, read_json, run_step, upstream
from components.training import (
    add_training_arguments,
    drop_checkpoint,
    key_params,
    source_training_tiles,
    stream,
    tiles_of,
    train_config,
)
from damnet import registry
from damnet.data import TileSet
from damnet.train import fit


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--source-region", default="source")
    add_training_arguments(p, "finetune")


def micro_labels(layout: Layout, which: str) -> tuple[dict[str, str], dict]:
    """tile id -> label tile URI of the imported ``which`` set ("train" or "audit"), and the record."""
    record = upstream(layout, "import-labels")
    table = read_json(record["outputs"]["labels"])
    return {t: v["uri"] for t, v in table.items() if v["set"] == which}, record


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    target, t_rec = tiles_of(layout, labels=None)
    source, s_rec = source_training_tiles(layout.of(args.source_region))
    adapt = upstream(layout, "adapt")
    labels, l_rec = micro_labels(layout, "train")
    if not labels:
        raise StepError(f"region {layout.region!r}: the imported labels have no 'train' tiles to fine-tune on")
    cfg = train_config(args, "finetune", inherit=adapt["params"]["train"])
    inputs = {"tiles": {"uri": t_rec["outputs"]["tiles"], "digest": t_rec["key"]},
              "source_tiles": {"uri": s_rec["outputs"]["tiles"], "digest": s_rec["key"]},
              "adapted": {"uri": adapt["outputs"]["model"], "digest": adapt["key"]},
              "labels": {"uri": l_rec["outputs"]["labels"], "digest": l_rec["key"]}}
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

    run_step("finetune", args, inputs, params, body, layout)
