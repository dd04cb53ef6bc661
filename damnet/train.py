"""The one training engine of DAM-Net.

Every kind of training is this loop with other weights on its terms:

* supervised source training: ``source_weight`` > 0;
* alternating adversarial adaptation: plus ``lambda_adv`` > 0 and an unlabelled ``target``
  stream. After ``adv_start`` warm-up steps, each step is a G step (segmentation loss on
  the source batch + ``lambda_adv`` * BCE(D(softmax(G(target))), source) with D frozen)
  followed, every ``d_every`` steps, by ``d_steps`` D steps on the detached source and
  target maps (source = 0, target = 1). ``lambda_adv`` ramps up linearly over ``adv_ramp``;
* Micro-Labeled Fine-Tuning: plus ``micro_weight`` > 0 and a labelled ``micro`` stream
  (the adversarial term may stay on);
* MAE pretraining: ``mae_weight`` > 0 and an ``unlabelled`` stream of images of both domains.

:func:`fit` loops over a :class:`TrainState` (what a checkpoint holds: model, discriminator,
optimisers, scheduler, EMA teacher, anchor, RNG state, step, history), written atomically every
``checkpoint_every`` steps and loaded with ``weights_only=True``; a killed run resumes to the same
result because batches are a pure function of the step. A loss that is not finite stops the run
with :class:`TrainingDiverged` and keeps the last good checkpoint. Runs on CPU or CUDA (bf16
autocast on CUDA), and under ``torchrun`` (DDP).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from damnet import storage
from damnet.checkpoint import CHECKPOINT, load_checkpoint, save_state
from damnet.data import Batch, Stream, gsd_ratio
from damnet.device import autocast, rank_world, resolve_device
from damnet.errors import DamnetError
from damnet.losses import adversarial_loss, anchor_loss, change_prior, pseudo_loss, segmentation_loss
from damnet.models import DISC_INPUTS, MAE, ChangeNet, SegDiscriminator, discriminator_input
from damnet.models.changenet import to_unit
from damnet.progress import Progress

log = logging.getLogger(__name__)

OnLog = Callable[[int, dict[str, float]], None]  #: ``on_log(step, metrics)``
Tensors = dict[str, torch.Tensor]  #: a step's change logits (N, 2, H, W) or loss terms, by name


class TrainingDiverged(DamnetError):
    """The loss stopped being a finite number."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    crop: int | None = 128  #: random crop for training (None: whole tiles)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05  #: share of steps with linear LR warm-up (then cosine)
    grad_clip: float = 1.0
    # Terms of the generator loss
    source_weight: float = 1.0
    micro_weight: float = 0.0
    mae_weight: float = 0.0
    change_weight: float = 3.0  #: cross-entropy weight of the change class
    dice_weight: float = 1.0
    # Adversarial adaptation
    lambda_adv: float = 0.0
    adv_start: int = 0  #: supervised warm-up steps before the adversarial term
    adv_ramp: int = 0  #: steps over which lambda_adv ramps linearly from 0
    adv_loss: str = "bce"  #: "bce" or "lsgan"
    d_steps: int = 1  #: discriminator updates per alternation
    d_every: int = 1  #: generator steps per alternation
    lr_d: float = 1e-4
    disc_input: str = "softmax"  #: "softmax", "softmax+entropy" or "self_info" (ADVENT)
    entropy_weight: float = 0.0  #: entropy minimisation on target predictions (0: off)
    # Keeping the adversarial term from its shortcut (an empty change map looks "source-like")
    prior_weight: float = 0.0  #: KL of the target batch's predicted change share to the source's
    # Self-training on unlabelled target tiles: an EMA teacher's confident pixels, class-balanced
    pseudo_weight: float = 0.0
    pseudo_threshold: float = 0.9  #: teacher confidence a pixel needs to count
    ema_decay: float = 0.99  #: the teacher's weights: EMA of the model's
    # Staying close to the starting model on unlabelled target tiles (MLFT): KL of the frozen
    # starting model's change map to the model's, per valid pixel, so a few micro tiles correct
    # the model where they speak without rewriting it elsewhere (0: off)
    anchor_weight: float = 0.0
    anchor_on: str = "all"  #: "all" valid pixels, or only those the starting model calls "change"
    # The anchor's weight instead of anchor_weight (when that is on) if no micro label marks any
    # change: such labels can only say "no change", and MLFT on them alone pushed the whole region
    # towards "no change" (SZTAKI AirChange: recall -7.7 points; docs/benchmarks.md). 0: anchor_weight.
    quiet_anchor_weight: float = 0.0
    # Photometric jitter (gain, offset, gamma, noise; each date on its own): applied to labelled
    # batches with this strength (0: off) and, with at least 1, to the student's pseudo-label input.
    photometric: float = 0.0
    # Pixel-level alignment: with this probability a labelled source pair takes, date by date, the
    # per-band histograms of a target pair of the same step (its pre of their pre, its post of
    # their post), so the labelled loss also sees target radiometry and season (0: off).
    restyle: float = 0.0
    # Geometric alignment: labelled source batches are resampled to the ground sample distance of
    # the target (or micro) tiles, read from their manifests (0.5 m source, 1.2 m target: each
    # 128 px crop spans 2.4 x 128 source pixels, area-averaged; capped by the tile size).
    match_gsd: bool = False
    # Bookkeeping
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    amp: bool = True  #: bf16 autocast on CUDA; ignored on CPU
    device: str = "auto"

    def lambda_at(self, step: int) -> float:
        if self.lambda_adv <= 0 or step < self.adv_start:
            return 0.0
        if self.adv_ramp <= 0:
            return self.lambda_adv
        return self.lambda_adv * min(1.0, (step - self.adv_start + 1) / self.adv_ramp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Named starting points; override any field with ``dataclasses.replace``. Why these and not the
#: benchmark's best rows: docs/benchmarks.md#why-the-training-defaults-are-what-they-are
MODES: dict[str, TrainConfig] = {
    "supervised": TrainConfig(),
    # alignment options (restyle, match_gsd, photometric, prior) won benchmark rows, lost the main job's promotion
    "adapt": TrainConfig(lambda_adv=1e-3, adv_start=0, adv_ramp=50, lr=5e-4),
    # lr 3e-4 over-fitted micro tiles without change and, without the anchor, collapsed to "no change"
    "finetune": TrainConfig(micro_weight=1.0, source_weight=0.5, lambda_adv=1e-3, lr=1e-4,
                            anchor_weight=1.0, quiet_anchor_weight=10.0),
    "pretrain": TrainConfig(source_weight=0.0, mae_weight=1.0, lr=1.5e-3),
}


def mode_config(mode: str, **overrides: Any) -> TrainConfig:
    try:
        return replace(MODES[mode], **overrides)
    except KeyError:
        raise ValueError(f"unknown training mode {mode!r}; known: {', '.join(MODES)}") from None


@dataclass
class FitResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    discriminator: SegDiscriminator | None = None  #: trained D (adaptation), to carry on with


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    warm = max(1, int(cfg.warmup * cfg.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


@dataclass(frozen=True)
class TrainContext:
    """What every step of one run reads and none changes: the config, where this process runs
    (device, DDP rank and world size), the batch streams, and the checkpoint's URI (None: none)."""

    cfg: TrainConfig
    device: torch.device
    rank: int = 0
    world: int = 1
    source: Stream | None = None
    target: Stream | None = None
    micro: Stream | None = None
    unlabelled: Stream | None = None
    checkpoint_uri: str | None = None

    def batch(self, name: str, step: int) -> Batch:
        """This rank's share of stream ``name``'s batch of ``step``, on the device."""
        stream = {"source": self.source, "target": self.target, "micro": self.micro,
                  "unlabelled": self.unlabelled}[name]
        assert stream is not None, f"no {name} stream (_check_streams lets no run start without it)"
        return stream.batch(step, self.rank, self.world).to(self.device)


@dataclass
class TrainState:
    """What training changes and a checkpoint holds: the model and what is trained beside it (MAE
    decoder, discriminator), the optimisers and LR schedule, the EMA teacher, the frozen anchor,
    the step and the logged history; :meth:`save` adds the RNG state, :meth:`resume` restores it."""

    cfg: TrainConfig
    device: torch.device
    model: ChangeNet
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    mae: MAE | None = None
    disc: SegDiscriminator | None = None
    opt_d: torch.optim.Optimizer | None = None
    teacher: ChangeNet | None = None
    anchor: ChangeNet | None = None
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def create(cls, model: ChangeNet, cfg: TrainConfig, device: torch.device,
               discriminator: SegDiscriminator | None = None) -> TrainState:
        """Fresh parts around ``model`` (on ``device`` already); ``discriminator``: D to carry on with."""
        # New parts (MAE decoder, discriminator) start from the run's seed, not from whatever
        # the caller's RNG happened to be: same seed, same run; identical on every DDP rank.
        torch.manual_seed(cfg.seed)
        mae = MAE(model.encoder).to(device) if cfg.mae_weight > 0 else None
        disc: SegDiscriminator | None = None
        if cfg.lambda_adv > 0:
            channels = DISC_INPUTS[cfg.disc_input]
            disc = (discriminator or SegDiscriminator(channels, model.config.disc_channels)).to(device)
        teacher = _teacher(model) if cfg.pseudo_weight > 0 else None
        anchor = _teacher(model) if cfg.anchor_weight > 0 else None
        trainable: nn.Module = mae if mae is not None else model
        opt = torch.optim.AdamW(list(trainable.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99)) if disc else None
        return cls(cfg, device, model, opt, sched, mae, disc, opt_d, teacher, anchor)

    @property
    def trainable(self) -> nn.Module:
        """What the generator optimiser trains: the MAE (encoder + decoder) or the model."""
        return self.mae if self.mae is not None else self.model

    def _optional_parts(self) -> list[tuple[str, nn.Module | torch.optim.Optimizer]]:
        """The parts this run has beside model, optimiser and schedule, by checkpoint key."""
        parts = (("mae", self.mae), ("disc", self.disc), ("opt_d", self.opt_d), ("teacher", self.teacher),
                 ("anchor", self.anchor))
        return [(name, part) for name, part in parts if part is not None]

    def save(self, uri: str) -> None:
        state: dict[str, Any] = {
            "step": self.step, "config": self.cfg.to_dict(), "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "rng_cpu": torch.get_rng_state(), "history": self.history,
        }
        for name, part in self._optional_parts():
            state[name] = part.state_dict()
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        save_state(uri, state)

    def resume(self, uri: str) -> None:
        """Everything back as :meth:`save` left it at ``uri`` (refused if made with another config)."""
        state = load_checkpoint(uri)
        _check_compatible(state, self.cfg, uri)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        for name, part in self._optional_parts():
            if name != "mae" or name in state:  # (a checkpoint may lack the MAE decoder)
                part.load_state_dict(state[name])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        self.step, self.history = int(state["step"]), list(state["history"])
        log.info("resumed from %s at step %d", uri, self.step)


def fit(model: ChangeNet, cfg: TrainConfig, *, source: Stream | None = None,
        target: Stream | None = None, micro: Stream | None = None,
        unlabelled: Stream | None = None, out_dir: str | Path | None = None,
        discriminator: SegDiscriminator | None = None, progress: bool | None = None,
        on_log: OnLog | None = None) -> FitResult:
    """Train ``model`` in place for ``cfg.steps`` steps (resuming from ``out_dir`` if it holds one).

    ``on_log(step, metrics)`` is called every ``log_every`` steps on rank 0.
    """
    _check_streams(cfg, source, target, micro, unlabelled)
    if cfg.anchor_weight > 0 and cfg.quiet_anchor_weight > 0 and micro is not None and not micro.tiles.any_change():
        log.info("no micro label marks change: anchor weight %g instead of %g", cfg.quiet_anchor_weight,
                 cfg.anchor_weight)
        cfg = replace(cfg, anchor_weight=cfg.quiet_anchor_weight)
    source = _match_gsd(cfg, source, target if target is not None else micro)
    rank, world = rank_world()
    ckpt_uri = storage.join(str(out_dir), CHECKPOINT) if out_dir is not None else None
    ctx = TrainContext(cfg, resolve_device(cfg.device), rank, world, source, target, micro, unlabelled, ckpt_uri)
    model.to(ctx.device)
    state = TrainState.create(model, cfg, ctx.device, discriminator)
    if ckpt_uri and storage.storage_for(ckpt_uri).exists(ckpt_uri):
        state.resume(ckpt_uri)
    else:
        torch.manual_seed(cfg.seed * 1000 + rank)
    g = _generator_module(ctx, state)

    start, started = state.step, time.time()
    bar = Progress(range(start, cfg.steps), desc="train", unit="step", initial=start, total=cfg.steps,
                   enabled=progress if rank == 0 else False)
    running: dict[str, float] = {}  # sums of the loss terms since the last log line
    for step in bar:
        terms, maps = _generator_step(g, ctx, state, step)
        if state.disc is not None and step >= cfg.adv_start and (step + 1) % cfg.d_every == 0:
            terms["disc"] = _discriminator_step(ctx, state, maps)
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        entry = _log_entry(cfg, step, running, float(state.sched.get_last_lr()[0]))
        if entry is not None:
            state.history.append(entry)
            bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k not in ("step", "lr")})
            if on_log is not None and rank == 0:
                on_log(step + 1, entry)
        state.step = step + 1
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            if ckpt_uri is not None and rank == 0:
                state.save(ckpt_uri)
            if world > 1:
                dist.barrier()
    model.eval()
    return FitResult(cfg.steps, time.time() - started, state.history, start, state.disc)


def _match_gsd(cfg: TrainConfig, source: Stream | None, reference: Stream | None) -> Stream | None:
    """``source`` resampled to the ground sample distance of ``reference`` if ``cfg.match_gsd``."""
    if not (cfg.match_gsd and source is not None and reference is not None):
        return source
    ratio = gsd_ratio(source.tiles, reference.tiles)
    if ratio != 1:
        source = source.rescaled(ratio)
        zoom = source.effective_scale()
        log.info("source batches resampled to the target ground sample distance (x%.2f)%s", ratio,
                 f"; x{zoom:.2f} where the tile size caps the window" if abs(zoom - ratio) > 1e-3 else "")
    return source


def _generator_module(ctx: TrainContext, state: TrainState) -> nn.Module:
    """What the generator step calls: the trainable module, in DDP under ``torchrun``."""
    g: nn.Module = state.trainable
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        g = DDP(state.trainable, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if state.disc is not None:  # D is averaged by hand: it also runs frozen inside the G step
            for p in state.disc.parameters():
                dist.broadcast(p.data, src=0)
    state.trainable.train()
    if state.disc is not None:
        state.disc.train()
    return g


def _generator_step(g: nn.Module, ctx: TrainContext, state: TrainState, step: int) -> tuple[Tensors, Tensors]:
    """Forward, loss and update of the generator (or the MAE) at ``step``; the EMA teacher
    follows. Returns the loss terms and the change maps by stream name (none for the MAE)."""
    cfg = ctx.cfg
    maps: Tensors = {}
    with autocast(ctx.device, cfg.amp):
        if state.mae is not None:
            b = ctx.batch("unlabelled", step)
            terms: Tensors = {"mae": cfg.mae_weight * g(torch.cat([b.pre, b.post]))}
        else:
            terms, maps = _generator_terms(g, ctx, state, step)
    loss = cast(torch.Tensor, sum(terms.values()))
    if not torch.isfinite(loss.detach()):
        raise TrainingDiverged(
            f"loss is {loss.item()} at step {step} ({', '.join(terms)}); stopped. "
            + (f"The last good checkpoint is kept at {ctx.checkpoint_uri}." if ctx.checkpoint_uri else "")
        )
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(list(state.trainable.parameters()), cfg.grad_clip)
    state.opt.step()
    state.sched.step()
    if state.teacher is not None:
        _ema_update(state.teacher, state.model, cfg.ema_decay)
    return terms, maps


def _discriminator_step(ctx: TrainContext, state: TrainState, maps: Tensors) -> torch.Tensor:
    """``d_steps`` updates of D on the detached source (0) and target (1) maps; under DDP its
    gradients are averaged by hand. Returns the last D loss, detached."""
    cfg, disc, opt_d = ctx.cfg, state.disc, state.opt_d
    assert disc is not None and opt_d is not None
    disc.requires_grad_(True)
    for _ in range(cfg.d_steps):
        with autocast(ctx.device, cfg.amp):
            d_s = disc(discriminator_input(maps["source"].detach(), cfg.disc_input))
            d_t = disc(discriminator_input(maps["target"].detach(), cfg.disc_input))
            d_loss = 0.5 * (adversarial_loss(d_s, 0.0, cfg.adv_loss)
                            + adversarial_loss(d_t, 1.0, cfg.adv_loss))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if ctx.world > 1:
            for p in disc.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= ctx.world
        opt_d.step()
    return d_loss.detach()


def _log_entry(cfg: TrainConfig, step: int, running: dict[str, float], lr: float) -> dict[str, float] | None:
    """On a log step, the history entry: the means of the ``running`` sums, which start again."""
    if (step + 1) % cfg.log_every != 0 and step + 1 != cfg.steps:
        return None
    n = cfg.log_every if (step + 1) % cfg.log_every == 0 else (step + 1) % cfg.log_every
    entry = {"step": step + 1, "lr": lr, "lambda_adv": cfg.lambda_at(step), **{k: v / n for k, v in running.items()}}
    running.clear()
    return entry


def _teacher(model: ChangeNet) -> ChangeNet:
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def _ema_update(teacher: nn.Module, model: nn.Module, decay: float) -> None:
    for t, m in zip(teacher.parameters(), model.parameters(), strict=True):
        t.lerp_(m.detach(), 1 - decay)
    for t_buf, m_buf in zip(teacher.buffers(), model.buffers(), strict=True):
        t_buf.copy_(m_buf)


def photometric_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Random per-image gain, offset, gamma and noise on (B, 3, H, W) images -> float 0..1.

    Each image (each date) draws its own: a seasonal or radiometric shift between the dates is
    what the model must learn to ignore. Draws come from the CPU generator (seeded, resumable).
    """
    x = to_unit(x)
    if strength <= 0:
        return x
    b = x.shape[0]
    r = torch.rand(b, 8).to(x.device)
    gain = 1 + strength * 0.3 * (2 * r[:, :3] - 1)  # per channel: colour balance
    offset = strength * 0.1 * (2 * r[:, 3:6] - 1)
    gamma = torch.exp(strength * 0.35 * (2 * r[:, 6:7] - 1))
    noise = strength * 0.02 * r[:, 7:8]
    x = x.clamp_min(1e-4) ** gamma.view(b, 1, 1, 1)
    x = x * gain.view(b, 3, 1, 1) + offset.view(b, 3, 1, 1)
    x = x + noise.view(b, 1, 1, 1) * torch.randn(x.shape).to(x.device)
    return x.clamp(0, 1)


def match_histograms(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Each band of each image of ``x`` (B, C, H, W) remapped to the histogram of the same band of
    ``ref`` (B, C, H', W'): a pixel of rank r among its band's n pixels takes the value of rank
    r (n'-1)/(n-1) in the reference. Floats in, floats out; monotone per band."""
    b, c = x.shape[:2]
    xf, rf = x.reshape(b, c, -1).float(), ref.reshape(b, c, -1).float()
    n, m = xf.shape[-1], rf.shape[-1]
    ranks = torch.empty_like(xf, dtype=torch.long)
    order = xf.argsort(dim=-1, stable=True)
    ranks.scatter_(-1, order, torch.arange(n, device=x.device).expand_as(order))
    idx = (ranks.float() * ((m - 1) / max(n - 1, 1))).round().long()
    return rf.sort(-1).values.gather(-1, idx).reshape(x.shape)


def restyle_pairs(pre: torch.Tensor, post: torch.Tensor, ref_pre: torch.Tensor,
                  ref_post: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p`` per pair, give pair j the per-band histograms of reference pair
    j mod len(ref), date by date (floats 0..1 in and out). Draws come from the CPU generator."""
    take = (torch.rand(pre.shape[0]) < p).to(pre.device)
    if not take.any():
        return pre, post
    rows = take.nonzero().squeeze(1)  # only the pairs that are restyled get matched
    j = rows % ref_pre.shape[0]
    out = []
    for x, ref in ((pre, ref_pre), (post, ref_post)):
        x = x.clone()
        x[rows] = match_histograms(x[rows], ref[j]).to(x.dtype)
        out.append(x)
    return out[0], out[1]


def _model_inputs(cfg: TrainConfig, batches: dict[str, Batch],
                  self_training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre and post images of all ``batches``, concatenated in order (B, 3, H, W): uint8 as
    they are, or floats 0..1 where source pairs are restyled or a batch is jittered."""
    # Jitter strength per part: labelled batches get cfg.photometric; the self-training student
    # sees at least strength 1 on target (its teacher sees the clean images).
    strengths = {name: max(1.0, cfg.photometric) if name == "target" and self_training
                 else cfg.photometric if name in ("source", "micro") else 0.0 for name in batches}
    restyle = cfg.restyle > 0 and "source" in batches and "target" in batches
    if not restyle and not any(s > 0 for s in strengths.values()):
        return torch.cat([b.pre for b in batches.values()]), torch.cat([b.post for b in batches.values()])
    pres, posts = [], []  # strength 0 below is the plain uint8 -> 0..1 conversion
    for name, b in batches.items():
        pre, post = b.pre, b.post
        if restyle and name == "source":
            ref = batches["target"]
            pre, post = restyle_pairs(to_unit(pre), to_unit(post), to_unit(ref.pre), to_unit(ref.post),
                                      cfg.restyle)
        pres.append(photometric_jitter(pre, strengths[name]))
        posts.append(photometric_jitter(post, strengths[name]))
    return torch.cat(pres), torch.cat(posts)


def _generator_terms(g: nn.Module, ctx: TrainContext, state: TrainState, step: int) -> tuple[Tensors, Tensors]:
    """One forward pass over all streams of ``step``: the weighted loss terms and the maps."""
    cfg = ctx.cfg
    wanted = (("source", cfg.source_weight > 0), ("micro", cfg.micro_weight > 0),
              ("target", _needs_target(cfg, step)))
    batches = _aligned(state.model, {name: ctx.batch(name, step) for name, on in wanted if on})
    logits = g(*_model_inputs(cfg, batches, self_training=state.teacher is not None), aligned=True)
    maps = dict(zip(batches, logits.split([b.pre.shape[0] for b in batches.values()]), strict=True))
    terms: Tensors = {}
    for name, weight in (("source", cfg.source_weight), ("micro", cfg.micro_weight)):
        b = batches.get(name)
        if b is not None:
            assert b.label is not None  # _check_streams refused unlabelled tiles
            terms[f"seg_{name}"] = weight * segmentation_loss(maps[name], b.label, b.valid,
                                                              cfg.change_weight, cfg.dice_weight)
    terms.update(_target_terms(cfg, state, batches, maps, cfg.lambda_at(step)))
    return terms, maps


def _aligned(model: ChangeNet, batches: dict[str, Batch]) -> dict[str, Batch]:
    """The region's batches (target, micro) through the model's input tables (radiometric
    matching to the source, see ChangeNet.input_lut); labelled source batches as they are."""
    if not model.matching:
        return batches
    out = dict(batches)
    for name in ("target", "micro"):
        if name in out:
            b = out[name]
            pre, post = model.align(b.pre, b.post)
            out[name] = replace(b, pre=pre, post=post)
    return out


def _target_terms(cfg: TrainConfig, state: TrainState, batches: dict[str, Batch], maps: Tensors,
                  lam: float) -> Tensors:
    """The terms on the unlabelled target batch: entropy, change-share prior, the EMA teacher's
    pseudo-labels, the anchor to the starting model, and the adversarial term (D frozen)."""
    terms: Tensors = {}
    if cfg.entropy_weight > 0:
        info = discriminator_input(maps["target"], "self_info").sum(1)
        valid = batches["target"].valid
        terms["entropy"] = cfg.entropy_weight * (info * valid).sum() / valid.sum().clamp_min(1)
    if cfg.prior_weight > 0:
        terms["prior"] = cfg.prior_weight * change_prior(maps["target"], batches["target"].valid,
                                                         batches.get("source") or batches.get("micro"))
    if state.teacher is not None:
        tb = batches["target"]
        with torch.no_grad():
            t_logits = state.teacher(tb.pre, tb.post, aligned=True)
        terms["pseudo"] = cfg.pseudo_weight * pseudo_loss(maps["target"], t_logits, tb.valid,
                                                          cfg.pseudo_threshold)
    if state.anchor is not None:
        tb = batches["target"]
        with torch.no_grad():
            a_logits = state.anchor(tb.pre, tb.post, aligned=True)
        terms["anchor"] = cfg.anchor_weight * anchor_loss(maps["target"], a_logits, tb.valid, cfg.anchor_on)
    if lam > 0:
        assert state.disc is not None
        state.disc.requires_grad_(False)
        d_out = state.disc(discriminator_input(maps["target"], cfg.disc_input))
        terms["adv"] = lam * adversarial_loss(d_out, 0.0, cfg.adv_loss)  # fool D: target looks like source
    return terms


def _needs_target(cfg: TrainConfig, step: int | None = None) -> bool:
    """Whether any term of this training (at ``step``; None: at some step) reads unlabelled
    target batches. The adversarial terms start at ``adv_start``."""
    adversarial = cfg.lambda_adv > 0 and (step is None or step >= cfg.adv_start)
    return (adversarial or cfg.entropy_weight > 0 or cfg.prior_weight > 0
            or cfg.pseudo_weight > 0 or cfg.anchor_weight > 0 or cfg.restyle > 0)


def _check_streams(cfg: TrainConfig, source: Stream | None, target: Stream | None, micro: Stream | None,
                   unlabelled: Stream | None) -> None:
    needs = {"source": cfg.source_weight > 0 and cfg.mae_weight == 0,
             "target": _needs_target(cfg), "micro": cfg.micro_weight > 0,
             "unlabelled": cfg.mae_weight > 0}
    given = {"source": source, "target": target, "micro": micro, "unlabelled": unlabelled}
    missing = [k for k, need in needs.items() if need and given[k] is None]
    if missing:
        raise DamnetError(f"this training needs the stream(s): {', '.join(missing)}")
    if cfg.lambda_adv > 0 and cfg.source_weight <= 0:
        raise DamnetError("adversarial training needs labelled source batches (source_weight > 0)")
    if cfg.anchor_on not in ("all", "change"):
        raise DamnetError(f"anchor_on must be 'all' or 'change', got {cfg.anchor_on!r}")
    if cfg.mae_weight > 0 and (cfg.micro_weight > 0 or cfg.lambda_adv > 0):
        raise DamnetError("MAE pretraining is its own step: no segmentation or adversarial terms")
    for name in ("source", "micro"):
        s = given[name]
        if needs[name] and s is not None and not s.tiles.has_labels():
            raise DamnetError(f"the {name} stream has tiles without labels")


def _check_compatible(state: dict[str, Any], cfg: TrainConfig, uri: str) -> None:
    saved = state.get("config", {})
    for key in ("steps", "batch_size", "seed", "lambda_adv", "micro_weight", "mae_weight"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise DamnetError(f"{uri}: checkpoint was made with {key}={saved[key]!r}, this run has "
                              f"{getattr(cfg, key)!r}; use another output folder to start afresh")
