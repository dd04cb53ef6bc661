"""The GPU path near its hardware (issue 18, item 4): one prepared run for a lent CUDA machine.

    python3 bench/gpu_perf.py --budget-seconds 420 --out gpu_perf.md    # on a CUDA machine
    python bench/gpu_perf.py --device cpu --smoke                        # every part, in seconds

1. **Inference** of ``--preset`` (base): channels-last weights and inputs, bf16 autocast over
   the whole forward, uint8 input batches prefetched from pinned host memory on a side stream
   (``non_blocking`` copies; the uint8 change-probability map copied back the same way). The
   batch grows (doubling) until throughput gains less than 3 % or memory would pass 85 % of the
   card; then ``torch.compile`` is tried at that batch and kept only where it is faster. A
   reference row repeats bench/speed.py's setting (NCHW, batch 8, no prefetch) on this card.
2. **Adapt step**: the real engine (``damnet.train.fit`` in ``adapt`` mode on gpu_check's
   synthetic tiles) with what it supports: bf16 autocast (``amp``), channels-last weights, a
   compiled forward (``nn.Module.compile``, in place), the batch per stream sized the same way.
   Step time is the median gap between steps after the first fifth, as in gpu_check.
3. **DDP scaling** of that adaptation over 1, 2, 4 ... N visible GPUs (``torchrun``
   subprocesses, NCCL, the same batch per GPU); on the CPU smoke run, 1 and 2 Gloo processes.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (one forward of a pair;
one whole engine step) and set against the card's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`,
or ``--peak-tflops``). Every part stops in time for ``--budget-seconds``. Prints one markdown
block (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from damnet.device import autocast  # noqa: E402
from damnet.models import ChangeNet, count_parameters, preset  # noqa: E402
from damnet.train import fit, mode_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import make_tiles, streams  # noqa: E402
from speed import _sync  # noqa: E402

#: docs/benchmarks.md, "GPU": bench/speed.py, base preset, batch 8 at 256 px, bf16, one H100.
BASELINE_MPX_S = 58.41
GOAL_MPX_S = 4 * BASELINE_MPX_S
#: Dense bf16 peak TFLOP/s by device name (first match wins; more specific names first).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)
MEMORY_CAP = 0.85  #: stop growing a batch whose (linear) memory estimate passes this share


class OutOfTime(Exception):
    """A part's share of the budget is spent: stop where it is."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def share(self, fraction: float) -> Deadline:
        """A deadline ``fraction`` of the time left from now (never later than this one)."""
        return Deadline(max(0.0, self.left()) * fraction)


@dataclass
class Plan:
    device: torch.device
    preset: str
    size: int  #: inference tile side (px)
    amp: bool
    channels_last: bool
    compile: bool
    batches: tuple[int, ...]  #: inference batch ladder
    adapt_batches: tuple[int, ...]  #: batch-per-stream ladder of the engine
    crop: int
    steps: int  #: engine steps per measurement
    peak_tflops: float | None
    measure_s: float = 1.5  #: timed seconds per inference measurement (at least 3 batches)

    def model(self) -> ChangeNet:
        torch.manual_seed(0)
        m = ChangeNet(preset(self.preset)).to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def _gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _fits(device: torch.device, peak_gib: float, factor: float) -> bool:
    """Whether ``factor`` times a measured peak stays under :data:`MEMORY_CAP` of the card."""
    if device.type != "cuda":
        return True
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    return peak_gib * factor < MEMORY_CAP * total


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


def _oom() -> tuple[type[BaseException], ...]:
    return (torch.cuda.OutOfMemoryError,) if torch.cuda.is_available() else ()


# --- 1. inference ------------------------------------------------------------------------------

class PinnedPrefetch:
    """uint8 (pre, post) batches from (pinned) host memory, copied to the device one batch ahead
    on a side stream with ``non_blocking`` copies, as a DataLoader with ``pin_memory`` would feed
    them. Host batches are (B, H, W, 3) permuted to (B, 3, H, W): channels-last as they land."""

    def __init__(self, plan: Plan, batch: int, channels_last: bool, n_host: int = 1) -> None:
        self.device = plan.device
        cuda = plan.device.type == "cuda"
        g = torch.Generator().manual_seed(0)

        def host() -> torch.Tensor:
            t = torch.randint(0, 256, (batch, plan.size, plan.size, 3), dtype=torch.uint8, generator=g)
            t = t.permute(0, 3, 1, 2) if channels_last else t.permute(0, 3, 1, 2).contiguous()
            return t.pin_memory() if cuda else t  # (pinning keeps the strides)

        self.host = [(host(), host()) for _ in range(n_host)]
        self.out = torch.empty(batch, plan.size, plan.size, dtype=torch.uint8, pin_memory=cuda)
        self.stream = torch.cuda.Stream(plan.device) if cuda else None
        self.i = 0
        self.ahead: tuple[torch.Tensor, torch.Tensor] | None = None

    def _copy(self) -> tuple[torch.Tensor, torch.Tensor]:
        pre, post = self.host[self.i % len(self.host)]
        self.i += 1
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with ctx:
            return pre.to(self.device, non_blocking=True), post.to(self.device, non_blocking=True)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.ahead if self.ahead is not None else self._copy()
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            for t in batch:
                t.record_stream(torch.cuda.current_stream(self.device))
        self.ahead = self._copy()
        return batch


def pair_flops(model: torch.nn.Module, plan: Plan) -> int:
    """FLOPs of one forward of one (pre, post) pair of ``plan.size`` px, counted on the device."""
    x = torch.zeros(1, 3, plan.size, plan.size, dtype=torch.uint8, device=plan.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), autocast(plan.device, plan.amp):
        model(x, x)
    return int(counter.get_total_flops())


def layout_difference(plan: Plan) -> float:
    """Max |difference| of change probabilities between the channels-last model and the same
    weights in NCHW, on one batch of 2 random pairs (the layout must not change the answer)."""
    cl = plan.model().eval()
    plain = ChangeNet(preset(plan.preset)).to(plan.device).eval()
    plain.load_state_dict(cl.state_dict())
    x = torch.randint(0, 256, (2, 3, plan.size, plan.size), dtype=torch.uint8, device=plan.device)
    with torch.no_grad(), autocast(plan.device, plan.amp):
        a = cl(x.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last))
        b = plain(x, x)
    return float((a.float().softmax(1) - b.float().softmax(1)).abs().max())


def time_inference(fwd, plan: Plan, batch: int, deadline: Deadline, channels_last: bool = True,
                   prefetch: bool = True) -> dict:
    """MPx/s of ``fwd`` over batches of ``batch`` pairs (prefetched, map copied back)."""
    feed = PinnedPrefetch(plan, batch, channels_last)
    one = feed.host[0]
    fixed = (one[0].to(plan.device), one[1].to(plan.device))

    def step() -> None:
        pre, post = feed.next() if prefetch else fixed
        with torch.no_grad(), autocast(plan.device, plan.amp):
            logits = fwd(pre, post)
        prob = (logits.float().softmax(1)[:, 1] * 255).to(torch.uint8)
        feed.out.copy_(prob, non_blocking=True)

    _reset_peak(plan.device)
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator, compilation
        step()
    _sync(plan.device)
    n, t = 0, time.perf_counter()
    while n < 3 or (time.perf_counter() - t < plan.measure_s and deadline.left() > 0):
        step()
        n += 1
        if n % 4 == 0:
            _sync(plan.device)
    _sync(plan.device)
    seconds = time.perf_counter() - t
    return {"batch": batch, "pairs_s": n * batch / seconds,
            "mpx_s": n * batch * plan.size**2 / seconds / 1e6, "peak_gib": _gib(plan.device)}


def inference(plan: Plan, deadline: Deadline, notes: list[str]) -> tuple[list[tuple[str, dict]], dict]:
    """Rows (label, measurement) and the best measurement, within ``deadline``."""
    torch.backends.cudnn.benchmark = True
    model = plan.model().eval()
    rows: list[tuple[str, dict]] = []
    if plan.device.type == "cuda":  # bench/speed.py's setting, for a same-card comparison
        ref = ChangeNet(preset(plan.preset)).to(plan.device).eval()
        rows.append(("reference: NCHW, eager, no prefetch (speed.py)",
                     time_inference(ref, plan, 8, deadline, channels_last=False, prefetch=False)))
        del ref
    best = _batch_search("inference", "", plan.batches, lambda batch: time_inference(model, plan, batch, deadline),
                         "mpx_s", "channels-last, eager, prefetch", plan, deadline, rows, notes)
    assert best is not None, "no inference batch was measured"
    best = dict(best, how="eager")
    notes.append(f"inference: channels-last vs NCHW, same weights: max |change probability difference| "
                 f"{layout_difference(plan):.2g}")
    _try_compile_inference(model, plan, best, deadline, rows, notes)
    return rows, best


def _try_compile_inference(model: ChangeNet, plan: Plan, best: dict, deadline: Deadline,
                           rows: list[tuple[str, dict]], notes: list[str]) -> None:
    if not plan.compile:
        notes.append("inference: torch.compile not tried (off for this run)")
        return
    if deadline.left() < 90:
        notes.append(f"inference: torch.compile not tried ({deadline.left():.0f} s of the part left)")
        return
    t = time.perf_counter()
    try:
        compiled = torch.compile(model, dynamic=False)
        r = time_inference(compiled, plan, best["batch"], deadline)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: stay eager
        notes.append(f"inference: torch.compile failed ({_why(e)}); eager kept")
        return
    rows.append((f"channels-last, torch.compile (compile and timing {time.perf_counter() - t:.0f} s)", r))
    if r["mpx_s"] > best["mpx_s"]:
        best.update(r, how="compiled")
    else:
        notes.append(f"inference: compiled {r['mpx_s']:.1f} MPx/s <= eager {best['mpx_s']:.1f}; eager kept")


# --- 2. the engine's adapt step ----------------------------------------------------------------

def adapt_run(plan: Plan, root: str, batch: int, steps: int, compiled: bool, deadline: Deadline,
              count_flops: bool = False) -> dict:
    """``fit`` in adapt mode for ``steps`` steps: median step time after the first fifth, peak
    memory; ``count_flops``: one step under FlopCounterMode instead (its FLOPs, no timing)."""
    model = plan.model()
    if compiled:
        model.compile()  # in place: still a ChangeNet, as fit expects
    cfg = mode_config("adapt", steps=1 if count_flops else steps, batch_size=batch, crop=plan.crop,
                      device=str(plan.device), amp=plan.amp, log_every=1, checkpoint_every=10**9)
    stamps: list[float] = []

    def on_log(step: int, metrics: dict) -> None:
        _sync(plan.device)
        stamps.append(time.perf_counter())
        if deadline.left() <= 0 and len(stamps) >= 4:
            raise OutOfTime

    _reset_peak(plan.device)
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            fit(model, cfg, progress=False, **streams(root, batch, plan.crop))
        return {"flops": int(counter.get_total_flops())}
    with contextlib.suppress(OutOfTime):
        fit(model, cfg, on_log=on_log, progress=False, **streams(root, batch, plan.crop))
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    steady = gaps[len(gaps) // 5:] or gaps
    step_s = statistics.median(steady) if steady else float("nan")
    return {"batch": batch, "steps": len(stamps), "step_s": step_s, "pairs_s": 2 * batch / step_s,
            "peak_gib": _gib(plan.device), "first_step_s": gaps[0] if gaps else float("nan")}


def host_batch_seconds(plan: Plan, root: str, batch: int, n: int = 3) -> float:
    """Seconds the host spends assembling one step's source + target batches (read, crop, flip)."""
    s = streams(root, batch, plan.crop)
    t = time.perf_counter()
    for step in range(n):
        s["source"].batch(step), s["target"].batch(step)
    return (time.perf_counter() - t) / n


def _batch_search(part: str, unit: str, batches, measure, rate: str, row: str, plan: Plan, deadline: Deadline,
                  rows: list[tuple[str, dict]], notes: list[str]) -> dict | None:
    """Measure ``batches`` in order (each row added to ``rows``) until the budget, memory or a gain
    under 3 % in ``rate`` stops the search; the best measurement, None if none was made."""
    best: dict | None = None
    for batch in batches:
        if deadline.left() <= 0:
            notes.append(f"{part}: batch search stopped at {batch}{unit} (budget)")
            break
        try:
            r = measure(batch)
        except _oom():
            notes.append(f"{part}: batch {batch}{unit} ran out of memory; search stopped")
            break
        rows.append((row, r))
        if best is not None and r[rate] < 1.03 * best[rate]:
            notes.append(f"{part}: batch {batch}{unit} gained < 3 % over {best['batch']}; search stopped")
            best = max(best, r, key=lambda x: x[rate])
            break
        best = r
        if not _fits(plan.device, r["peak_gib"], 2.0):
            notes.append(f"{part}: batch {2 * batch}{unit} would pass {MEMORY_CAP:.0%} of GPU memory; search stopped")
            break
    return best


def adapt(plan: Plan, root: str, deadline: Deadline, notes: list[str]) -> tuple[list[tuple[str, dict]], dict]:
    rows: list[tuple[str, dict]] = []
    best = _batch_search("adapt", " per stream", plan.adapt_batches,
                         lambda batch: adapt_run(plan, root, batch, plan.steps, False, deadline.share(0.3)),
                         "pairs_s", "engine, channels-last, eager", plan, deadline, rows, notes)
    assert best is not None, "no adapt batch was measured"
    best = dict(best, how="eager")
    if not plan.compile:
        notes.append("adapt: compiled forward not tried (off for this run)")
    elif deadline.left() < 150:
        notes.append(f"adapt: compiled forward not tried ({deadline.left():.0f} s of the part left)")
    else:
        try:
            r = adapt_run(plan, root, best["batch"], plan.steps + 10, True, deadline)
            rows.append((f"engine, channels-last, compiled forward (first step {r['first_step_s']:.0f} s)", r))
            if r["pairs_s"] > best["pairs_s"]:
                best.update(r, how="compiled")
            else:
                notes.append(f"adapt: compiled {r['step_s']:.4f} s/step >= eager {best['step_s']:.4f}; eager kept")
        except Exception as e:  # noqa: BLE001 - any compiler failure means: stay eager
            notes.append(f"adapt: compiled forward failed ({_why(e)}); eager kept")
    best["flops"] = adapt_run(plan, root, best["batch"], 1, False, deadline, count_flops=True)["flops"]
    best["host_s"] = host_batch_seconds(plan, root, best["batch"])
    return rows, best


# --- 3. DDP scaling ----------------------------------------------------------------------------

def ddp_worker(args: argparse.Namespace) -> None:
    """One torchrun rank: adapt for ``--steps`` steps, rank 0 writes its timing to ``--ddp-worker``."""
    import torch.distributed as dist

    cuda = args.device.startswith("cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    plan = make_plan(args, torch.device(f"cuda:{local}" if cuda else "cpu"))
    # No deadline here: on_log runs on rank 0 only, and a rank that stopped alone would leave the
    # others waiting in a collective; the parent's timeout bounds the whole group instead.
    r = adapt_run(plan, args.tiles, args.adapt_batch, plan.steps, False, Deadline(1e9))
    if dist.get_rank() == 0:
        Path(args.ddp_worker).write_text(json.dumps(dict(r, world=dist.get_world_size())))
    dist.destroy_process_group()


def ddp_scaling(args: argparse.Namespace, plan: Plan, root: str, batch: int, deadline: Deadline,
                notes: list[str]) -> list[dict]:
    n = torch.cuda.device_count() if plan.device.type == "cuda" else 2
    counts = sorted({k for k in (1, 2, 4, 8, 16) if k <= n} | {n})
    rows: list[dict] = []
    for k in counts:
        if deadline.left() < 20:
            notes.append(f"DDP: {k} GPUs not run (budget)")
            break
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "r.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(k),
                   __file__, "--ddp-worker", str(out), "--tiles", root, "--adapt-batch", str(batch),
                   "--budget-seconds", str(int(deadline.left())), *worker_flags(args)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)  # its own group: a timeout ends every rank
            try:
                log, _ = proc.communicate(timeout=max(10, deadline.left()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                notes.append(f"DDP: {k} processes passed the budget; stopped")
                break
            if proc.returncode != 0 or not out.exists():
                tail = [ln for ln in log.splitlines() if "Error" in ln][-1:] or log.strip().splitlines()[-1:]
                notes.append(f"DDP: {k} processes failed (exit {proc.returncode}): {(tail or ['no output'])[0][:200]}")
                break
            rows.append(json.loads(out.read_text()))
    return rows


def worker_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device.split(":")[0], "--preset", args.preset, "--crop", str(args.crop),
             "--steps", str(args.steps)]
    return flags + (["--smoke"] if args.smoke else [])


# --- report ------------------------------------------------------------------------------------

def _f(x: float, fmt: str = ".1f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def machine_lines(plan: Plan, args: argparse.Namespace) -> list[str]:
    dev = plan.device
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        props = torch.cuda.get_device_properties(dev)
        gpu = (f"{torch.cuda.device_count()} x {name} ({props.total_memory / 2**30:.0f} GiB, "
               f"{props.multi_processor_count} SMs), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        gpu = "no GPU (CPU smoke run: tiny preset, fp32, no compile: the figures mean nothing)"
    peak = plan.peak_tflops
    return [f"### bench/gpu_perf.py, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "",
            f"- machine: {platform.node()}, {os.cpu_count()} CPUs; {gpu}",
            f"- torch {torch.__version__}, Python {platform.python_version()}; command: "
            f"`{' '.join(['python', *sys.argv])}`",
            f"- preset {plan.preset} ({count_parameters(ChangeNet(preset(plan.preset))) / 1e6:.2f} M parameters); "
            f"bf16 autocast {'on' if plan.amp else 'off'}; channels-last {'on' if plan.channels_last else 'off'}; "
            f"peak for MFU {_f(peak, '.0f')} TFLOP/s dense bf16"
            + (" (--peak-tflops)" if args.peak_tflops else "" if peak else " (unknown card: give --peak-tflops)"),
            f"- goal (issue 18): inference >= {GOAL_MPX_S:.0f} MPx/s, 4x the {BASELINE_MPX_S} MPx/s of "
            "docs/benchmarks.md (speed.py, base, batch 8 at 256 px, one H100)"]


def _mfu(tflops: float, peak: float | None) -> str:
    return f"{100 * tflops / peak:.1f} %" if peak else "n/a"


def inference_lines(plan: Plan, rows: list[tuple[str, dict]], best: dict, flops: int) -> list[str]:
    lines = ["", f"#### Inference ({plan.size} px pairs; GFLOPs per pair {flops / 1e9:.2f})", "",
             "| run | batch | MPx/s | TFLOP/s | MFU | peak GiB |", "|---|---|---|---|---|---|"]
    for label, r in rows:
        tf = r["pairs_s"] * flops / 1e12
        lines.append(f"| {label} | {r['batch']} | {r['mpx_s']:.1f} | {tf:.1f} | {_mfu(tf, plan.peak_tflops)} | "
                     f"{_f(r['peak_gib'], '.2f')} |")
    ratio = best["mpx_s"] / BASELINE_MPX_S
    verdict = "met" if best["mpx_s"] >= GOAL_MPX_S else "NOT met"
    lines += ["", f"Best: {best['how']}, batch {best['batch']}: **{best['mpx_s']:.1f} MPx/s**, {ratio:.2f}x the "
              f"{BASELINE_MPX_S} MPx/s baseline; goal ({GOAL_MPX_S:.0f} MPx/s): **{verdict}**."]
    return lines


def adapt_lines(plan: Plan, rows: list[tuple[str, dict]], best: dict) -> list[str]:
    flops = best["flops"]
    lines = ["", f"#### Adapt step (damnet.train.fit, adapt mode, {plan.crop} px crops; "
             f"GFLOPs per step at batch {best['batch']}: {flops / 1e9:.1f})", "",
             "| run | batch per stream | steps | median step s | pairs/s | TFLOP/s | MFU | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        tf = flops * r["batch"] / best["batch"] / r["step_s"] / 1e12  # FLOPs scale with the batch
        lines.append(f"| {label} | {r['batch']} | {r['steps']} | {r['step_s']:.4f} | {r['pairs_s']:.1f} | "
                     f"{tf:.1f} | {_mfu(tf, plan.peak_tflops)} | {_f(r['peak_gib'], '.2f')} |")
    lines += ["", f"Best: {best['how']}, batch {best['batch']} per stream, {best['step_s']:.4f} s/step. The host "
              f"assembles one step's source + target batches in {best['host_s']:.4f} s (read, crop, flip; "
              "the engine does this between steps, without prefetch)."]
    return lines


def ddp_lines(rows: list[dict], batch: int, ran: bool) -> list[str]:
    lines = ["", f"#### DDP adaptation scaling (torchrun; batch {batch} per stream per process)", ""]
    if not ran:
        return lines + ["Not run: one GPU visible (DDP scaling needs two or more)."]
    lines += ["| processes | median step s | steps/s | pairs/s (all) | scaling efficiency |", "|---|---|---|---|---|"]
    base = rows[0]["pairs_s"] / rows[0]["world"] if rows else float("nan")
    for r in rows:
        total = r["pairs_s"] * r["world"]
        lines.append(f"| {r['world']} | {r['step_s']:.4f} | {1 / r['step_s']:.2f} | {total:.1f} | "
                     f"{100 * total / (base * r['world']):.0f} % |")
    return lines


# --- main --------------------------------------------------------------------------------------

def make_plan(args: argparse.Namespace, device: torch.device) -> Plan:
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else ""
    if args.smoke:
        return Plan(device, "tiny", 64, False, True, False, (1, 2), (1, 2), 64, 4, args.peak_tflops, 0.2)
    ladder = tuple(b for b in (8, 16, 32, 64, 128, 256, 512, 1024) if b <= args.max_batch)
    return Plan(device, args.preset, args.size, cuda, True, cuda and not args.no_compile, ladder,
                tuple(b for b in (8, 16, 32, 64, 128) if b <= args.max_batch), args.crop, args.steps,
                peak_tflops(name, args.peak_tflops))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, 64 px, fp32, no compile: seconds")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--size", type=int, default=256, help="inference tile side (speed.py's 256 by default)")
    ap.add_argument("--crop", type=int, default=256, help="engine crop side")
    ap.add_argument("--steps", type=int, default=20, help="engine steps per measurement")
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card (TFLOP/s)")
    ap.add_argument("--budget-seconds", type=float, default=420)
    ap.add_argument("--out", default=None)
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tiles", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--adapt-batch", type=int, default=16, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    deadline = Deadline(args.budget_seconds)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # what fp32 is left under autocast
    plan = make_plan(args, device)
    multi = device.type == "cuda" and torch.cuda.device_count() > 1
    notes: list[str] = []
    lines = machine_lines(plan, args)
    model = plan.model().eval()
    flops = pair_flops(model, plan)
    del model
    rows, best = inference(plan, deadline.share(0.4), notes)
    lines += inference_lines(plan, rows, best, flops)
    print("\n".join(lines), file=sys.stderr, flush=True)  # so far, in case the run is cut short
    with tempfile.TemporaryDirectory() as root:
        make_tiles(root)
        a_rows, a_best = adapt(plan, root, deadline.share(0.6 if multi or args.smoke else 0.95), notes)
        lines += adapt_lines(plan, a_rows, a_best)
        ddp_rows = ddp_scaling(args, plan, root, a_best["batch"], deadline, notes) if multi or args.smoke else []
    lines += ddp_lines(ddp_rows, a_best["batch"], multi or args.smoke)
    lines += ["", "Notes:", *[f"- {n}" for n in notes or ["none"]],
              f"- wall time {args.budget_seconds - deadline.left():.0f} s of a {args.budget_seconds:.0f} s budget"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
