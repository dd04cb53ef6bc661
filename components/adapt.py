"""Adversarial adaptation of the source model to a region (alternating G / D training).

Inputs: the region's tiles (unlabelled), the labelled source region's tiles (less its
holdout) and the source model (--source-model: a registry URI such as
``models:/damnet-source@champion`` or a model file). Output: model.pt (the adapted
generator) and discriminator.pt (carried on by fine-tuning).
"""

from __future__ import annotations

import argparse

from components.inputs import model_input, source_split_input, source_training_tiles, tiles_of
from components.records import Layout, StepError, input_of, output_folder, read_record, step_key, upstream
from components.step import RunOptions, run_step, up_to_date
from components.training import (
    drop_checkpoint,
    init_distributed,
    key_params,
    stream,
    train_config,
)
from damnet import registry, storage
from damnet.checkpoint import load_weights, save_state
from damnet.radiometry import band_histograms, matching_lut
from damnet.train import fit


def run(args: argparse.Namespace) -> None:
    rank, world, args.device = init_distributed(args.device)
    layout = Layout.from_args(args)
    source_layout = layout.of(args.source_region)
    target, target_record = tiles_of(layout, labels=None)
    source, source_record = source_training_tiles(source_layout)
    model_ref = model_input(args.source_model)
    cfg = train_config(args, "adapt")
    inputs = {"tiles": input_of(target_record, "tiles"), "source_tiles": input_of(source_record, "tiles"),
              **source_split_input(source_layout), "source_model": model_ref}
    if args.use_pretrain:
        if read_record(layout, "pretrain") is None:
            raise StepError(f"--use-pretrain: region {layout.region!r} has no pretrain step yet")
        pre = upstream(layout, "pretrain")
        inputs["pretrain"] = input_of(pre, "encoder")
    params = {"train": key_params(cfg), "source_region": args.source_region}
    if args.match_histograms > 0:  # (absent at 0: records made before the option stay up to date)
        params["match_histograms"] = args.match_histograms

    def adapted(out_dir: str, on_log=None):
        """The model and fit result; every torchrun rank runs this with rank 0's out_dir, so a
        restarted job resumes all ranks at the same step."""
        model, _ = registry.load_model(model_ref["uri"])
        if "pretrain" in inputs:
            load_weights(model, inputs["pretrain"]["uri"], part="encoder")
        if args.match_histograms > 0:
            model.set_input_lut(matching_lut(band_histograms(source), band_histograms(target), args.match_histograms))
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

    options = RunOptions.from_args(args)
    if rank > 0:  # torchrun: the other ranks train alongside rank 0, which writes and logs everything
        if not up_to_date("adapt", inputs, params, layout, options):
            adapted(output_folder(layout, "adapt", step_key("adapt", inputs, params)))
        return
    run_step("adapt", inputs, params, body, layout, options)

