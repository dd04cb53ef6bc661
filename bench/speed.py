"""Model size and speed per preset: parameters, FLOPs, inference throughput, training step time.

    .venv/bin/python bench/speed.py                 # CPU, every preset
    .venv/bin/python bench/speed.py --device cuda --presets base --adapt-steps 300

Timings are medians of --repeats runs after a warm-up. On CUDA, the adaptation run is the
real engine (``damnet.train.fit``, adversarial mode, bf16 autocast) on synthetic tiles
(``bench/gpu_check.py``'s run), and peak GPU memory is reported.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from damnet.losses import adversarial_loss, segmentation_loss  # noqa: E402
from damnet.models import (  # noqa: E402
    PRESETS,
    ChangeNet,
    SegDiscriminator,
    count_flops,
    count_parameters,
    discriminator_input,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, device: torch.device, repeats: int, batch: int, size: int) -> dict:
    torch.manual_seed(0)
    model = ChangeNet(PRESETS[name]).to(device)
    disc = SegDiscriminator(2, model.config.disc_channels).to(device)
    amp = device.type == "cuda"
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else torch.no_grad
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    label = torch.randint(0, 2, (batch, size, size), device=device)
    valid = torch.ones(batch, size, size, dtype=torch.bool, device=device)

    model.eval()

    def infer():
        with torch.no_grad(), ctx():
            model(x, x)

    t_inf = median_time(infer, device, repeats)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    opt_d = torch.optim.Adam(disc.parameters(), 1e-4)

    def adapt_step():
        auto = torch.autocast("cuda", dtype=torch.bfloat16) if amp else _null()
        with auto:
            logits = model(torch.cat([x, x]), torch.cat([x, x]))
            src, tgt = logits.chunk(2)
            loss = segmentation_loss(src, label, valid) + 1e-3 * adversarial_loss(
                disc(discriminator_input(tgt, "softmax")), 0.0, "bce")
        opt.zero_grad()
        loss.backward()
        opt.step()
        with auto:
            d_src = disc(discriminator_input(src.detach(), "softmax"))
            d_tgt = disc(discriminator_input(tgt.detach(), "softmax"))
            d = adversarial_loss(d_src, 0.0, "bce") + adversarial_loss(d_tgt, 1.0, "bce")
        opt_d.zero_grad()
        d.backward()
        opt_d.step()

    t_step = median_time(adapt_step, device, repeats)
    return {
        "preset": name,
        "params_M": count_parameters(model) / 1e6,
        "gflops_256": count_flops(ChangeNet(PRESETS[name]), 256) / 1e9,
        "infer_mpx_s": batch * size * size / t_inf / 1e6,
        "adapt_step_s": t_step,
        "batch": batch,
        "size": size,
    }


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--adapt-steps", type=int, default=0, help="CUDA only: run the real engine")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print("| preset | params (M) | GFLOPs / pair @256 | inference MPx/s | adapt step s (batch, size) |")
    print("|---|---|---|---|---|")
    for name in args.presets.split(","):
        r = measure(name, device, args.repeats, args.batch, args.size)
        print(f"| {name} | {r['params_M']:.2f} | {r['gflops_256']:.2f} | {r['infer_mpx_s']:.2f} | "
              f"{r['adapt_step_s']:.3f} ({r['batch']}x2, {r['size']}) |", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.adapt_steps and device.type == "cuda":
        from gpu_check import engine, make_tiles  # the real engine on synthetic tiles

        with tempfile.TemporaryDirectory() as d:
            make_tiles(d)
            for name in args.presets.split(","):
                print(name, engine(d, device, name, args.adapt_steps, 16, 256, amp=True))


if __name__ == "__main__":
    main()
