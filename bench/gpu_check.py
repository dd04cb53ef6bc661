"""GPU check of the training engine: what issue 3 asks of a CUDA machine, in one run.

    python bench/gpu_check.py --steps 300 --out gpu.md        # on a CUDA machine
    python bench/gpu_check.py --device cpu --steps 4 --preset tiny --batch 2 --crop 64   # smoke test

1. The real engine (``damnet.train.fit``, adversarial adaptation) on synthetic source/target
   tiles, ``--steps`` steps of ``--preset`` with bf16 autocast: median step time (after a
   warm-up), wall time, peak GPU memory.
2. The same with autocast off (fp32; TF32 matmuls off), fewer steps: the AMP speed-up.
3. Resume after a kill on the device: a run checkpoints, "dies", and a second run resumes from
   the checkpoint and finishes; the checkpoint is then loaded on the CPU (weights_only=True),
   as a CPU serving pod would.
Prints a markdown block (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from damnet.checkpoint import CHECKPOINT, load_checkpoint  # noqa: E402
from damnet.data import Stream, TileSet  # noqa: E402
from damnet.models import PRESETS, ChangeNet, count_parameters  # noqa: E402
from damnet.synthetic import write_region  # noqa: E402
from damnet.tiling import TilingConfig, ingest  # noqa: E402
from damnet.train import fit, mode_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import _sync  # noqa: E402


def make_tiles(root: str) -> None:
    for name, style in (("src", "source"), ("tgt", "target_season")):
        write_region(f"{root}/raw/{name}", style, n_scenes=4, size=512, seed=1)
        ingest(f"{root}/raw/{name}", f"{root}/{name}", TilingConfig(size=256, require_labels=True))


def streams(root: str, batch: int, crop: int) -> dict:
    return {"source": Stream(TileSet(f"{root}/src"), batch, crop, name="s"),
            "target": Stream(TileSet(f"{root}/tgt", labels=None), batch, crop, name="t")}


class Killed(Exception):
    """Stands for a preempted pod: the run stops between two checkpoints."""


def engine(root: str, device: torch.device, preset: str, steps: int, batch: int, crop: int,
           amp: bool, out_dir: str | None = None, every: int | None = None,
           kill_after: int | None = None) -> dict:
    torch.manual_seed(0)
    model = ChangeNet(PRESETS[preset])
    cfg = mode_config("adapt", steps=steps, batch_size=batch, crop=crop, device=str(device), amp=amp,
                      log_every=1, checkpoint_every=every or steps)
    stamps: list[float] = []

    def on_log(step, metrics):
        _sync(device)
        stamps.append(time.perf_counter())
        if kill_after is not None and step > kill_after:
            raise Killed

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        result = fit(model, cfg, out_dir=out_dir, on_log=on_log, progress=False, **streams(root, batch, crop))
    except Killed:
        return {"killed": True}
    _sync(device)
    seconds = time.perf_counter() - t
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    steady = gaps[len(gaps) // 5:] or gaps  # drop the first fifth (cudnn autotune, allocator warm-up)
    return {"preset": preset, "params_M": count_parameters(model) / 1e6, "amp": amp, "steps": steps,
            "batch": batch, "crop": crop, "seconds": seconds,
            "median_step_s": statistics.median(steady) if steady else float("nan"),
            "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
            "resumed_from": result.resumed_from, "last": result.history[-1] if result.history else {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="base", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--fp32-steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    lines = [f"torch {torch.__version__}, device {device}"
             + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")]
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        make_tiles(root)
        lines.append(f"synthetic tiles written in {time.perf_counter() - t:.1f} s")
        lines += ["", "| run | steps | batch x crop | median step s | wall s | peak GPU GiB | last seg_source / disc |",
                  "|---|---|---|---|---|---|---|"]
        runs = {}
        for label, amp, steps in (("bf16 autocast", True, args.steps), ("fp32", False, args.fp32_steps)):
            r = runs[label] = engine(root, device, args.preset, steps, args.batch, args.crop, amp)
            last, nan = r["last"], float("nan")
            lines.append(f"| {args.preset} adapt, {label} | {steps} | {args.batch}x2 x {args.crop} | "
                         f"{r['median_step_s']:.4f} | {r['seconds']:.1f} | {r['peak_GiB']:.2f} | "
                         f"{last.get('seg_source', nan):.3f} / {last.get('disc', nan):.3f} |")
            print(lines[-1], flush=True)
        ratio = runs["fp32"]["median_step_s"] / runs["bf16 autocast"]["median_step_s"]
        lines += ["", f"params {runs['fp32']['params_M']:.2f} M; bf16 speed-up over fp32: {ratio:.2f}x"]

        # Resume after a kill: the first run dies one step after its checkpoint at `half`
        # (as if preempted); the second, same settings, must resume from there and finish.
        ckpt = f"{root}/ckpt"
        half = max(2, args.fp32_steps // 5)
        run = dict(out_dir=ckpt, every=half)
        assert engine(root, device, args.preset, 2 * half, args.batch, args.crop, True, **run, kill_after=half)
        state = load_checkpoint(f"{ckpt}/{CHECKPOINT}")
        assert state["step"] == half, state["step"]
        resumed = engine(root, device, args.preset, 2 * half, args.batch, args.crop, True, **run)
        assert resumed["resumed_from"] == half, resumed["resumed_from"]
        final = load_checkpoint(f"{ckpt}/{CHECKPOINT}")
        cpu_model = ChangeNet(PRESETS[args.preset])
        cpu_model.load_state_dict(final["model"])
        with torch.no_grad():
            x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
            finite = bool(torch.isfinite(cpu_model.eval()(x, x)).all())
        lines.append(f"resume: checkpoint at step {half} on {device}, resumed to {final['step']}; "
                     f"checkpoint loaded on the CPU with weights_only=True, finite output: {finite}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
