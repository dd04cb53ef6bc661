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

Checkpoints (model, discriminator, optimisers, scheduler, RNG state, step) are written
atomically every ``checkpoint_every`` steps and loaded with ``weights_only=True``; a killed
run resumes to the same result because batches are a pure function of the step. A loss
that is not finite stops the run with :class:`TrainingDiverged` and keeps the last good
checkpoint. Runs on CPU or CUDA (bf16 autocast on CUDA), and under ``torchrun`` (DDP).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from damnet import storage
from damnet.data import Batch, Stream, gsd_ratio
from damnet.errors import DamnetError
from damnet.models import DISC_INPUTS, MAE, ChangeNet, SegDiscriminator, discriminator_input
from damnet.models.changenet import to_unit

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


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

    def to_dict(self) -> dict:
        return asdict(self)


#: Named starting points; override any field with ``dataclasses.replace``.
MODES = {
    "supervised": TrainConfig(),
    # photometric=0.5, prior_weight=1 end the collapse of the adversarial term under a sensor
    # shift (target_sensor F1 4.8 -> 38.7) but cost resolution, one-tile selection on season
    # and, in the main job, the promotion (audit F1 0.647 -> 0.300): options, not defaults
    # (docs/benchmarks.md).
    # The benchmark's best adaptation (restyle=0.5, match_gsd=True, lambda_adv=1e-2: the
    # adaptation row closes 41 / 86 / 55 % of the gap on season / sensor / resolution, against
    # 12 / 27 / -7 % with these defaults) lost the main job's promotion (audit F1 0.647 -> 0.522,
    # source holdout -0.062): an option per region, not the default (docs/benchmarks.md, third run).
    "adapt": TrainConfig(lambda_adv=1e-3, adv_start=0, adv_ramp=50, lr=5e-4),
    # lr 1e-4, not 3e-4: with a handful of micro tiles, 3e-4 over-fits them; when they hold no
    # change at all the model collapsed to "no change" on the region (docs/benchmarks.md).
    # anchor_weight 1: on real targets one micro tile without change still collapsed it (SZTAKI
    # AirChange recall 22.6 -> 0); the anchor keeps it (docs/benchmarks.md, "Real imagery").
    "finetune": TrainConfig(micro_weight=1.0, source_weight=0.5, lambda_adv=1e-3, lr=1e-4,
                            anchor_weight=1.0),
    "pretrain": TrainConfig(source_weight=0.0, mae_weight=1.0, lr=1.5e-3),
}


def mode_config(mode: str, **overrides) -> TrainConfig:
    try:
        return replace(MODES[mode], **overrides)
    except KeyError:
        raise ValueError(f"unknown training mode {mode!r}; known: {', '.join(MODES)}") from None


@dataclass
class FitResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    discriminator: SegDiscriminator | None = None  #: trained D (adaptation), to carry on with


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor,
                      change_weight: float = 3.0, dice_weight: float = 1.0) -> torch.Tensor:
    """Weighted cross-entropy + soft Dice of the change class, over valid pixels only."""
    logits = logits.float()
    weight = torch.tensor([1.0, change_weight], device=logits.device)
    ce = F.cross_entropy(logits, label, weight=weight, reduction="none")
    v = valid.float()
    ce = (ce * v).sum() / (weight[label] * v).sum().clamp_min(1.0)
    if dice_weight <= 0:
        return ce
    t = label.float() * v
    if t.sum() == 0:
        # No change pixel in the batch (common for micro-label batches): Dice would only push
        # every prediction to 0 - the collapse to "no change" - so the weighted CE alone teaches
        # what is *not* change here.
        return ce
    p = logits.softmax(1)[:, 1] * v
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return ce + dice_weight * dice


def adversarial_loss(logits: torch.Tensor, target: float, kind: str) -> torch.Tensor:
    logits = logits.float()
    if kind == "lsgan":
        return ((torch.sigmoid(logits) - target) ** 2).mean()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _schedule(cfg: TrainConfig):
    warm = max(1, int(cfg.warmup * cfg.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def load_checkpoint(uri: str) -> dict:
    """A checkpoint written by :func:`fit` (tensors and plain data only; no pickled code)."""
    with storage.local_copy(uri) as path:
        return torch.load(path, map_location="cpu", weights_only=True)


def save_state(uri: str, state: dict) -> None:
    with storage.storage_for(uri).writing(uri, suffix=".pt") as tmp:
        torch.save(state, tmp)


def fit(model: ChangeNet, cfg: TrainConfig, *, source: Stream | None = None,
        target: Stream | None = None, micro: Stream | None = None,
        unlabelled: Stream | None = None, out_dir: str | Path | None = None,
        discriminator: SegDiscriminator | None = None, progress: bool | None = None,
        on_log=None) -> FitResult:
    """Train ``model`` in place for ``cfg.steps`` steps (resuming from ``out_dir`` if it holds one).

    ``on_log(step, metrics)`` is called every ``log_every`` steps on rank 0.
    """
    from tqdm.auto import tqdm

    _check_streams(cfg, source, target, micro, unlabelled)
    reference = target if target is not None else micro
    if cfg.match_gsd and source is not None and reference is not None:
        ratio = gsd_ratio(source.tiles, reference.tiles)
        if ratio != 1:
            source = source.rescaled(ratio)
            zoom = source.effective_scale()
            log.info("source batches resampled to the target ground sample distance (x%.2f)%s", ratio,
                     f"; x{zoom:.2f} where the tile size caps the window" if abs(zoom - ratio) > 1e-3 else "")
    device = resolve_device(cfg.device)
    rank, world = _rank_world()
    amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    model.to(device)
    # New parts (MAE decoder, discriminator) start from the run's seed, not from whatever
    # the caller's RNG happened to be: same seed, same run; identical on every DDP rank.
    torch.manual_seed(cfg.seed)
    mae = MAE(model.encoder).to(device) if cfg.mae_weight > 0 else None
    adversarial = cfg.lambda_adv > 0
    disc = None
    if adversarial:
        channels = DISC_INPUTS[cfg.disc_input]
        disc = (discriminator or SegDiscriminator(channels, model.config.disc_channels)).to(device)
    trainable: nn.Module = mae if mae is not None else model
    teacher = _teacher(model) if cfg.pseudo_weight > 0 else None
    anchor = _teacher(model) if cfg.anchor_weight > 0 else None
    params = list(trainable.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99)) if disc else None

    ckpt_uri = storage.join(str(out_dir), CHECKPOINT) if out_dir is not None else None
    start, history = 0, []
    if ckpt_uri and storage.storage_for(ckpt_uri).exists(ckpt_uri):
        state = load_checkpoint(ckpt_uri)
        _check_compatible(state, cfg, ckpt_uri)
        model.load_state_dict(state["model"])
        if mae is not None and "mae" in state:
            mae.load_state_dict(state["mae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            opt_d.load_state_dict(state["opt_d"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        if anchor is not None:
            anchor.load_state_dict(state["anchor"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start, history = int(state["step"]), list(state["history"])
        log.info("resumed from %s at step %d", ckpt_uri, start)
    else:
        torch.manual_seed(cfg.seed * 1000 + rank)

    g_module: nn.Module = trainable
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        g_module = DDP(trainable, device_ids=[device.index] if device.type == "cuda" else None)
        if disc is not None:  # D is averaged by hand: it also runs frozen inside the G step
            for p in disc.parameters():
                dist.broadcast(p.data, src=0)
    trainable.train()
    if disc is not None:
        disc.train()

    def save(step: int) -> None:
        if ckpt_uri is None or rank != 0:
            return
        state = {
            "step": step, "config": cfg.to_dict(), "model_config": model.config.to_dict(),
            "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
            "rng_cpu": torch.get_rng_state(), "history": history,
        }
        if mae is not None:
            state["mae"] = mae.state_dict()
        if disc is not None:
            state["disc"] = disc.state_dict()
            state["opt_d"] = opt_d.state_dict()
        if teacher is not None:
            state["teacher"] = teacher.state_dict()
        if anchor is not None:
            state["anchor"] = anchor.state_dict()
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        save_state(ckpt_uri, state)

    started = time.time()
    bar = tqdm(range(start, cfg.steps), desc="train", unit="step", initial=start, total=cfg.steps,
               disable=(None if progress is None else not progress) if rank == 0 else True)
    running: dict[str, float] = {}
    for step in bar:
        lam = cfg.lambda_at(step)
        terms: dict[str, torch.Tensor] = {}
        with autocast():
            if mae is not None:
                b = unlabelled.batch(step, rank, world).to(device)
                terms["mae"] = cfg.mae_weight * g_module(torch.cat([b.pre, b.post]))
                maps = {}
            else:
                terms, maps = _generator_terms(g_module, cfg, step, rank, world, device, lam,
                                               source, target, micro, disc, teacher, anchor)
        loss = sum(terms.values())
        if not torch.isfinite(loss.detach()):
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {step} ({', '.join(terms)}); stopped. "
                + (f"The last good checkpoint is kept at {ckpt_uri}." if ckpt_uri else "")
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if teacher is not None:
            _ema_update(teacher, model, cfg.ema_decay)

        if disc is not None and step >= cfg.adv_start and (step + 1) % cfg.d_every == 0:
            disc.requires_grad_(True)
            for _ in range(cfg.d_steps):
                with autocast():
                    d_s = disc(discriminator_input(maps["source"].detach(), cfg.disc_input))
                    d_t = disc(discriminator_input(maps["target"].detach(), cfg.disc_input))
                    d_loss = 0.5 * (adversarial_loss(d_s, 0.0, cfg.adv_loss)
                                    + adversarial_loss(d_t, 1.0, cfg.adv_loss))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                if world > 1:
                    for p in disc.parameters():
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
                            p.grad /= world
                opt_d.step()
            terms["disc"] = d_loss.detach()

        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = cfg.log_every if (step + 1) % cfg.log_every == 0 else (step + 1) % cfg.log_every
            entry = {"step": step + 1, "lr": sched.get_last_lr()[0], "lambda_adv": lam,
                     **{k: v / n for k, v in running.items()}}
            history.append(entry)
            running = {}
            bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k not in ("step", "lr")})
            if on_log is not None and rank == 0:
                on_log(step + 1, entry)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
            if world > 1:
                dist.barrier()
    model.eval()
    return FitResult(cfg.steps, time.time() - started, history, start, disc)


def _teacher(model: ChangeNet) -> ChangeNet:
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def _ema_update(teacher: nn.Module, model: nn.Module, decay: float) -> None:
    for t, m in zip(teacher.parameters(), model.parameters(), strict=True):
        t.lerp_(m.detach(), 1 - decay)
    for t, m in zip(teacher.buffers(), model.buffers(), strict=True):
        t.copy_(m)


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


def _pseudo_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor,
                 threshold: float) -> torch.Tensor:
    """Cross-entropy to the teacher's confident pixels, averaged per class (so the many
    confident background pixels cannot outvote the few confident change pixels)."""
    p = teacher.float().softmax(1)[:, 1]
    losses = []
    for cls, mask in ((1, p >= threshold), (0, p <= 1 - threshold)):
        mask = mask & valid
        if mask.any():
            ce = F.cross_entropy(student.float(), torch.full_like(valid, cls, dtype=torch.long),
                                 reduction="none")
            losses.append(ce[mask].mean())
    return sum(losses) / len(losses) if losses else student.sum() * 0.0


def _change_prior(target_logits: torch.Tensor, valid: torch.Tensor, source: Batch | None) -> torch.Tensor:
    """Binary KL(source label change share || target predicted change share) over the batch."""
    v = valid.float()
    q = ((target_logits.float().softmax(1)[:, 1] * v).sum() / v.sum().clamp_min(1)).clamp(1e-4, 1 - 1e-4)
    if source is None or source.label is None:
        return q * 0.0
    sv = source.valid.float()
    r = ((source.label.float() * sv).sum() / sv.sum().clamp_min(1)).clamp(1e-3, 1 - 1e-3)
    return r * torch.log(r / q) + (1 - r) * torch.log((1 - r) / (1 - q))


def _anchor_loss(student: torch.Tensor, anchor: torch.Tensor, valid: torch.Tensor,
                 on: str = "all") -> torch.Tensor:
    """KL(anchor || student) of the per-pixel class distributions, averaged over valid pixels
    (``on="change"``: over the valid pixels the anchor predicts as change, so it keeps what the
    starting model finds without holding the model to its misses)."""
    log_s = student.float().log_softmax(1)
    log_a = anchor.float().log_softmax(1)
    kl = (log_a.exp() * (log_a - log_s)).sum(1)
    if on == "change":
        valid = valid & (log_a[:, 1] > log_a[:, 0])
    v = valid.float()
    return (kl * v).sum() / v.sum().clamp_min(1)


def _generator_terms(g, cfg, step, rank, world, device, lam, source, target, micro, disc, teacher=None,
                     anchor=None):
    """One forward pass over all streams of this step; the weighted loss terms and the maps."""
    parts = []
    if cfg.source_weight > 0:
        parts.append(("source", source.batch(step, rank, world)))
    if cfg.micro_weight > 0:
        parts.append(("micro", micro.batch(step, rank, world)))
    if _needs_target(cfg, step):
        parts.append(("target", target.batch(step, rank, world)))
    names = [name for name, _ in parts]
    batches = [b.to(device) for _, b in parts]
    by_name = dict(zip(names, batches, strict=True))
    # Jitter strength per part: labelled batches get cfg.photometric; the self-training student
    # sees at least strength 1 on target (its teacher sees the clean images).
    strengths = [max(1.0, cfg.photometric) if n == "target" and teacher is not None
                 else cfg.photometric if n in ("source", "micro") else 0.0 for n in names]
    restyle = cfg.restyle > 0 and "source" in by_name and "target" in by_name
    if restyle or any(s > 0 for s in strengths):  # strength 0 is the plain uint8 -> 0..1 conversion
        pres, posts = [], []
        for name, b, s in zip(names, batches, strengths, strict=True):
            pre, post = b.pre, b.post
            if restyle and name == "source":
                ref = by_name["target"]
                pre, post = restyle_pairs(to_unit(pre), to_unit(post), to_unit(ref.pre), to_unit(ref.post),
                                          cfg.restyle)
            pres.append(photometric_jitter(pre, s))
            posts.append(photometric_jitter(post, s))
        pre, post = torch.cat(pres), torch.cat(posts)
    else:
        pre, post = torch.cat([b.pre for b in batches]), torch.cat([b.post for b in batches])
    logits = g(pre, post)
    maps = dict(zip(names, logits.split([b.pre.shape[0] for b in batches]), strict=True))
    terms = {}
    for (name, _), b in zip(parts, batches, strict=True):
        if name in ("source", "micro"):
            w = cfg.source_weight if name == "source" else cfg.micro_weight
            terms[f"seg_{name}"] = w * segmentation_loss(maps[name], b.label, b.valid,
                                                         cfg.change_weight, cfg.dice_weight)
    if cfg.entropy_weight > 0:
        info = discriminator_input(maps["target"], "self_info").sum(1)
        terms["entropy"] = cfg.entropy_weight * (info * batches[-1].valid).sum() / \
            batches[-1].valid.sum().clamp_min(1)
    if cfg.prior_weight > 0:
        terms["prior"] = cfg.prior_weight * _change_prior(maps["target"], by_name["target"].valid,
                                                          by_name.get("source") or by_name.get("micro"))
    if teacher is not None:
        tb = by_name["target"]
        with torch.no_grad():
            t_logits = teacher(tb.pre, tb.post)
        terms["pseudo"] = cfg.pseudo_weight * _pseudo_loss(maps["target"], t_logits, tb.valid,
                                                           cfg.pseudo_threshold)
    if anchor is not None:
        tb = by_name["target"]
        with torch.no_grad():
            a_logits = anchor(tb.pre, tb.post)
        terms["anchor"] = cfg.anchor_weight * _anchor_loss(maps["target"], a_logits, tb.valid, cfg.anchor_on)
    if lam > 0:
        disc.requires_grad_(False)
        d_out = disc(discriminator_input(maps["target"], cfg.disc_input))
        terms["adv"] = lam * adversarial_loss(d_out, 0.0, cfg.adv_loss)  # fool D: target looks like source
    return terms, maps


def _needs_target(cfg: TrainConfig, step: int | None = None) -> bool:
    """Whether any term of this training (at ``step``; None: at some step) reads unlabelled
    target batches. The adversarial terms start at ``adv_start``."""
    adversarial = cfg.lambda_adv > 0 and (step is None or step >= cfg.adv_start)
    return (adversarial or cfg.entropy_weight > 0 or cfg.prior_weight > 0
            or cfg.pseudo_weight > 0 or cfg.anchor_weight > 0 or cfg.restyle > 0)


def _check_streams(cfg, source, target, micro, unlabelled) -> None:
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
        if needs[name] and not s.tiles.has_labels():
            raise DamnetError(f"the {name} stream has tiles without labels")


def _check_compatible(state: dict, cfg: TrainConfig, uri: str) -> None:
    saved = state.get("config", {})
    for key in ("steps", "batch_size", "seed", "lambda_adv", "micro_weight", "mae_weight"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise DamnetError(f"{uri}: checkpoint was made with {key}={saved[key]!r}, this run has "
                              f"{getattr(cfg, key)!r}; use another output folder to start afresh")


def load_weights(model: ChangeNet, uri: str, part: str = "all") -> None:
    """Load weights from a file or URI into ``model`` (``part``: "all" or "encoder").

    Accepts a checkpoint of :func:`fit` (its ``model`` entry), a ChangeNet state dict, or an
    encoder-only state dict (e.g. from MAE pretraining elsewhere). Loaded with
    ``weights_only=True``: nothing in the file is executed.
    """
    state = load_checkpoint(uri)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if part not in ("all", "encoder"):
        raise ValueError(f"part must be 'all' or 'encoder', got {part!r}")
    target: nn.Module = model
    if part == "encoder":
        target = model.encoder
        prefix = "encoder."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or state
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise DamnetError(f"{uri}: weights do not fit this model ({first})") from None
    if unexpected or (missing and part == "encoder"):
        raise DamnetError(f"{uri}: weights do not fit this model (missing {list(missing)[:3]}, "
                          f"unexpected {list(unexpected)[:3]})")
    if missing:
        raise DamnetError(f"{uri}: weights do not fit this model (missing {list(missing)[:3]})")
