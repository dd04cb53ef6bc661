"""Training settings, data streams and the discriminator hand-over shared by the steps that
train (train, pretrain, adapt, finetune): every one of them runs :func:`damnet.train.fit`, with
another mode. What they read from upstream steps: :mod:`components.inputs`."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import replace

from components.step import StepRun
from components.step_options import training_options
from damnet.checkpoint import CHECKPOINT, load_checkpoint
from damnet.data import Stream, TileSet
from damnet.models import DISC_INPUTS, ChangeNet, SegDiscriminator
from damnet.train import TrainConfig, mode_config


def key_params(cfg: TrainConfig) -> dict:
    """The training settings that define the result (the device does not: every rank and a
    CPU or GPU re-run of the same inputs share the step key)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("device", "amp")}


#: Alignment settings that MLFT takes over from the region's adaptation unless told otherwise.
INHERITED = ("restyle", "match_gsd")


def train_config(args: argparse.Namespace, mode: str, inherit: dict | None = None) -> TrainConfig:
    """The step's TrainConfig from its training options (components.step_options.training_options:
    each one named like a TrainConfig field is passed on); ``inherit``: the adapt step's training
    settings, for the :data:`INHERITED` fields left unset (None) on the command line."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides: dict = {"checkpoint_every": max(10, args.steps // 5)}
    for opt in training_options(mode):
        value = getattr(args, opt.dest, None)
        if value is None and opt.dest in INHERITED:
            value = (inherit or {}).get(opt.dest)
        if value is not None and opt.dest in fields:
            overrides[opt.dest] = value
    cfg = mode_config(mode, **overrides)
    if mode == "adapt":
        cfg = replace(cfg, adv_ramp=min(cfg.adv_ramp, max(1, cfg.steps // 3)))
    return cfg


def stream(tiles: TileSet, cfg: TrainConfig, name: str) -> Stream:
    size = tiles.tiles[0]["window"]["width"] if len(tiles) else None
    crop = None if cfg.crop is None or size is None or cfg.crop >= size else cfg.crop
    return Stream(tiles, cfg.batch_size, crop=crop, seed=cfg.seed, name=name)


def init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under ``torchrun``; (0, 1, device) otherwise.

    Starts the process group (NCCL on GPUs, Gloo on CPUs) from torchrun's environment and
    pins each process to the GPU of its ``LOCAL_RANK``.
    """
    import os

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, device


def drop_checkpoint(run: StepRun) -> None:
    """Delete the resume checkpoint once the step's model is written: a later ``--force`` run
    of the same inputs then trains afresh instead of resuming a finished run."""
    from damnet import storage

    uri = run.path("checkpoint", CHECKPOINT)
    store = storage.storage_for(uri)
    if store.exists(uri):
        store.delete(uri)


def load_discriminator(uri: str, model: ChangeNet) -> SegDiscriminator:
    """The adapted discriminator (for fine-tuning to carry on with)."""
    state = load_checkpoint(uri)
    disc = SegDiscriminator(DISC_INPUTS[state["disc_input"]], model.config.disc_channels)
    disc.load_state_dict(state["disc"])
    return disc
