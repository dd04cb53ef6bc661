"""Training arguments and data streams shared by the steps that train (train, pretrain, adapt,
finetune): every one of them runs :func:`damnet.train.fit`, with another mode."""

from __future__ import annotations

import argparse
from dataclasses import replace

from components.step import StepError, positive_int, upstream
from damnet.data import Stream, TileSet
from damnet.models import PRESETS
from damnet.train import MODES, TrainConfig, mode_config

# Short CPU defaults: a region runs on a laptop in minutes. Raise --steps on a GPU.
DEFAULT_STEPS = {"supervised": 300, "pretrain": 100, "adapt": 150, "finetune": 100}


def add_training_arguments(p: argparse.ArgumentParser, mode: str) -> None:
    base = MODES[mode]
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS[mode])
    g.add_argument("--batch-size", type=positive_int, default=base.batch_size)
    g.add_argument("--crop", type=positive_int, default=base.crop, help="training crop (pixels)")
    g.add_argument("--lr", type=float, default=base.lr)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    if mode in ("adapt", "finetune"):
        g.add_argument("--lambda-adv", type=float, default=base.lambda_adv)
        g.add_argument("--photometric", type=float, default=base.photometric,
                       help="strength of per-date photometric jitter on labelled batches (0: off)")
        g.add_argument("--prior-weight", type=float, default=base.prior_weight,
                       help="weight of the change-share prior on target predictions (0: off)")
        g.add_argument("--pseudo-weight", type=float, default=base.pseudo_weight,
                       help="weight of self-training on the target (EMA teacher; 0: off)")
        g.add_argument("--anchor-weight", type=float, default=base.anchor_weight,
                       help="weight of the KL to the starting model's change map on unlabelled target "
                       "tiles (keeps MLFT from rewriting the model where the micro tiles do not speak; 0: off)")
        g.add_argument("--anchor-on", choices=("all", "change"), default=base.anchor_on,
                       help="pixels the anchor holds: all valid ones, or those the starting model calls change")
        # finetune: None = as the region's adapt step (what the model was adapted with)
        inherit = mode == "finetune"
        same = " (default: as the region's adapt step)" if inherit else ""
        g.add_argument("--restyle", type=float, default=None if inherit else base.restyle,
                       help="probability that a source pair takes a target pair's band histograms, "
                       f"date by date (pixel-level alignment; 0: off){same}")
        g.add_argument("--match-gsd", type=yes_no, metavar="{yes,no}",
                       default=None if inherit else base.match_gsd,
                       help="resample source batches to the target's ground sample distance "
                       f"(from the tiles' geotransforms){same}")
    if mode == "supervised":
        g.add_argument("--preset", default="tiny", choices=sorted(PRESETS))


def yes_no(value: str) -> bool:
    if value not in ("yes", "no"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {value!r}")
    return value == "yes"


def key_params(cfg: TrainConfig) -> dict:
    """The training settings that define the result (the device does not: every rank and a
    CPU or GPU re-run of the same inputs share the step key)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("device", "amp")}


#: Alignment settings that MLFT takes over from the region's adaptation unless told otherwise.
INHERITED = ("restyle", "match_gsd")


def train_config(args: argparse.Namespace, mode: str, inherit: dict | None = None) -> TrainConfig:
    """The step's TrainConfig from its arguments; ``inherit``: the adapt step's training settings,
    for the :data:`INHERITED` fields left unset (None) on the command line."""
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr,
                 "seed": args.seed, "device": args.device,
                 "checkpoint_every": max(10, args.steps // 5)}
    for name in ("lambda_adv", "photometric", "prior_weight", "pseudo_weight", "anchor_weight", "anchor_on",
                 *INHERITED):
        value = getattr(args, name, None)
        if value is None and name in INHERITED:
            value = (inherit or {}).get(name)
        if value is not None:
            overrides[name] = value
    cfg = mode_config(mode, **overrides)
    if mode == "adapt":
        cfg = replace(cfg, adv_ramp=min(cfg.adv_ramp, max(1, cfg.steps // 3)))
    return cfg


def tiles_of(layout, labels="manifest") -> tuple[TileSet, dict]:
    """The region's tiles (from its ingest record) and that record."""
    record = upstream(layout, "ingest")
    tiles = TileSet(record["outputs"]["tiles"], labels=labels)
    if len(tiles) == 0:
        raise StepError(f"{record['outputs']['manifest']}: region {layout.region!r} has no tiles "
                        "(all imagery was nodata or skipped at ingest)")
    return tiles, record


def source_training_tiles(layout) -> tuple[TileSet, dict]:
    """Labelled source tiles less the source holdout (from the source ``train`` record if any)."""
    tiles, record = tiles_of(layout)
    if not tiles.has_labels():
        raise StepError(f"region {layout.region!r} has tiles without labels; a source region "
                        "must be fully labelled")
    train = _read_split(layout)
    if train is not None:
        keep = set(train["holdout"])
        tiles = tiles.subset([i for i, t in enumerate(tiles.ids) if t not in keep])
    return tiles, record


def source_holdout(layout) -> TileSet | None:
    split = _read_split(layout)
    if split is None or not split["holdout"]:
        return None
    tiles, _ = tiles_of(layout)
    keep = set(split["holdout"])
    return tiles.subset([i for i, t in enumerate(tiles.ids) if t in keep])


def _read_split(layout) -> dict | None:
    import json

    from components.step import read_record
    from damnet import storage

    record = read_record(layout, "train")
    if record is None:
        return None
    uri = record["outputs"]["split"]
    return json.loads(storage.storage_for(uri).get_text(uri))


def stream(tiles: TileSet, cfg: TrainConfig, name: str) -> Stream:
    size = tiles.tiles[0]["window"]["width"] if len(tiles) else None
    crop = None if cfg.crop is None or size is None or cfg.crop >= size else cfg.crop
    return Stream(tiles, cfg.batch_size, crop=crop, seed=cfg.seed, name=name)


def model_input(ref: str) -> dict:
    """A model reference as a step input: registry URIs are pinned to the version they resolve to."""
    import re

    from components.step import file_digest
    from damnet.registry import ModelError

    if not ref.startswith("models:/"):
        from damnet import storage

        if not storage.storage_for(ref).exists(ref):
            raise ModelError(f"{ref}: no such model file")
        return {"uri": ref, "digest": file_digest(ref)}
    import mlflow

    m = re.fullmatch(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))", ref)
    if not m:
        raise ModelError(f"{ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = m.groups()
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 - MlflowException: unknown model, alias or version
        raise ModelError(f"{ref}: not found in the MLflow registry at {mlflow.get_tracking_uri()} "
                         f"({str(exc).splitlines()[0]})") from None
    pinned = f"models:/{name}/{mv.version}"
    return {"uri": pinned, "digest": f"{name}/{mv.version}", "requested": ref}


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


def drop_checkpoint(run) -> None:
    """Delete the resume checkpoint once the step's model is written: a later ``--force`` run
    of the same inputs then trains afresh instead of resuming a finished run."""
    from damnet import storage
    from damnet.train import CHECKPOINT

    uri = run.path("checkpoint", CHECKPOINT)
    store = storage.storage_for(uri)
    if store.exists(uri):
        store.delete(uri)
