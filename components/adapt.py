"""Adversarial adaptation of the source model to a region (alternating G / D training).

Inputs: the region's tiles (unlabelled), the labelled source region's tiles (less its
holdout) and the source model (--source-model: a registry URI such as
``models:/damnet-source@champion`` or a model file). Output: model.pt (the adapted
generator) and discriminator.pt (carried on by fine-tuning).
"""

from __future__ import annotations

import argparse

from components.step import (
    Layout,
    StepError,
    add_common_arguments,
    output_folder,
    read_record,
    run_step,
    step_key,
    up_to_date,
)
from components.training import (
    add_training_arguments,
    drop_checkpoint,
    init_distributed,
    key_params,
    model_input,
    source_training_tiles,
    stream,
    tiles_of,
    train_config,
)
from damnet import registry, storage
from damnet.train import fit, load_weights, save_state


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--source-model", default=f"models:/{registry.SOURCE_MODEL}@{registry.CHAMPION}",
                   help="registry URI or model file of the model to adapt")
    p.add_argument("--source-region", default="source", help="the labelled source region")
    p.add_argument("--use-pretrain", choices=("yes", "no"), default="no",
                   help="start the encoder from this region's pretrain step (MAE)")
    add_training_arguments(p, "adapt")


def run(args: argparse.Namespace) -> None:
    rank, world, args.device = init_distributed(args.device)
    layout = Layout.from_args(args)
    source_layout = layout.of(args.source_region)
    target, target_record = tiles_of(layout, labels=None)
    source, source_record = source_training_tiles(source_layout)
    model_ref = model_input(args.source_model)
    cfg = train_config(args, "adapt")
    inputs = {"tiles": {"uri": target_record["outputs"]["tiles"], "digest": target_record["key"]},
              "source_tiles": {"uri": source_record["outputs"]["tiles"], "digest": source_record["key"]},
              "source_model": model_ref}
    if args.use_pretrain == "yes":
        pre = read_record(layout, "pretrain")
        if pre is None:
            raise StepError(f"--use-pretrain: region {layout.region!r} has no pretrain step yet")
        inputs["pretrain"] = {"uri": pre["outputs"]["encoder"], "digest": pre["key"]}
    params = {"train": key_params(cfg), "source_region": args.source_region}

    def adapted(out_dir: str, on_log=None):
        """The model and fit result; every torchrun rank runs this with rank 0's out_dir, so a
        restarted job resumes all ranks at the same step."""
        model, _ = registry.load_model(model_ref["uri"])
        if "pretrain" in inputs:
            load_weights(model, inputs["pretrain"]["uri"], part="encoder")
        return model, fit(model, cfg, source=stream(source, cfg, "source"), target=stream(target, cfg, "target"),
                          out_dir=storage.join(out_dir, "checkpoint"), on_log=on_log)

    def body(run):
        model, result = adapted(run.out, run.on_log())
        registry.save_model(model, run.path("model.pt"), region=layout.region, mode="adapt",
                            parent=model_ref["uri"], steps=cfg.steps)
        save_state(run.path("discriminator.pt"),
                   {"disc": result.discriminator.state_dict(), "disc_input": cfg.disc_input})
        run.outputs.update(model=run.path("model.pt"), discriminator=run.path("discriminator.pt"))
        drop_checkpoint(run)
        last = result.history[-1] if result.history else {}
        run.metrics.update(train_seconds=result.seconds,
                           **{f"final_{k}": v for k, v in last.items() if k not in ("step",)})
        run.info.update(source_model=model_ref, history=result.history)

    if rank > 0:  # torchrun: the other ranks train alongside rank 0, which writes and logs everything
        if not up_to_date("adapt", args, inputs, params, layout):
            adapted(output_folder(layout, "adapt", step_key("adapt", inputs, params)))
        return
    run_step("adapt", args, inputs, params, body, layout)


def load_discriminator(uri: str, model):
    """The adapted discriminator (for fine-tuning to carry on with)."""
    from damnet.models import DISC_INPUTS, SegDiscriminator
    from damnet.train import load_checkpoint

    state = load_checkpoint(uri)
    disc = SegDiscriminator(DISC_INPUTS[state["disc_input"]], model.config.disc_channels)
    disc.load_state_dict(state["disc"])
    return disc

