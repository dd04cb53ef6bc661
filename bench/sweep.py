"""Run ablation variants side by side (one process per variant and style), e.g. on a GPU box.

    python bench/sweep.py --work runs/sweep --deadline 420 \\
        --variant "base:" --variant "prior:--adapt-set prior_weight=1"

First writes the shared data and the source model once (regions in parallel), then starts
``bench/ablation.py --styles STYLE ARGS`` for every variant and style at once, each with one
CPU thread, all logging into one file (``--log``) with a ``[variant style]`` prefix; processes
still running at the deadline are stopped, so what finished is kept. Exploratory: the numbers
that count are the ones ``bench/ablation.py`` prints on the reference machine.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ablation  # noqa: E402


def _make_region(args) -> str:
    work, name, style, scenes, seed, plan = args
    return ablation._region(Path(work), name, style, scenes, plan, seed)


def prepare(work: Path, styles: list[str], plan) -> None:
    from damnet.data import TileSet

    jobs = [(str(work), "source", "source", plan.source_scenes, 0, plan)]
    for style in styles:
        jobs += [(str(work), *spec, plan) for spec in ablation.region_specs(plan, style)]
    with ProcessPoolExecutor(len(jobs)) as pool:
        source, *_ = pool.map(_make_region, jobs)
    ablation._source_model(work, plan, TileSet(source))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/sweep")
    ap.add_argument("--styles", default=",".join(ablation.POOL_SEEDS))
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:ARGS")
    ap.add_argument("--deadline", type=float, default=3600, help="seconds from the start")
    ap.add_argument("--log", default=None)
    ap.add_argument("--quick", action="store_true", help="ablation.py's --quick settings")
    args = ap.parse_args()
    started = time.time()
    styles = args.styles.split(",")
    work = Path(args.work) / ("quick" if args.quick else "full")  # as ablation.py does
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, styles, ablation.Plan.quick() if args.quick else ablation.Plan())
    print(f"data and source model ready after {time.time() - started:.0f} s", flush=True)
    log = open(args.log, "a") if args.log else sys.stdout  # noqa: SIM115
    lock = threading.Lock()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for v in args.variant:
        name, _, rest = v.partition(":")
        for style in styles:
            cmd = [sys.executable, str(ROOT / "bench" / "ablation.py"), "--styles", style,
                   "--work", args.work,
                   *(["--quick"] if args.quick else []), *shlex.split(rest)]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

            def pump(p=p, tag=f"[{name} {style}] "):
                for line in p.stdout:
                    with lock:
                        log.write(tag + line)
                        log.flush()

            threading.Thread(target=pump, daemon=True).start()
            procs.append(p)
    while any(p.poll() is None for p in procs) and time.time() - started < args.deadline:
        time.sleep(2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    time.sleep(1)
    print(f"sweep done after {time.time() - started:.0f} s; "
          f"{sum(p.returncode == 0 for p in procs)}/{len(procs)} finished", flush=True)


if __name__ == "__main__":
    main()
