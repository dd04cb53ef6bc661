"""Two training steps at once: does each keep its speed? (torch threads that fit the machine)

    .venv/bin/python bench/threads.py                    # damnet train --steps 120, alone then two at once
    .venv/bin/python bench/threads.py --steps 40 --threads 1   # another thread count for both runs

Makes a synthetic source region and ingests it into three stores of a temporary folder (one
per run: no shared step lock or MLflow database), then times ``damnet train --steps N`` alone
and two of them started together, with damnet's own thread choice (``DAMNET_THREADS``,
``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` are removed from their environment) unless
--threads is given. Reports each run's wall time, the threads it used, and the ratio
two-at-once / alone: 2.0 is ideal where the two share every CPU, 1.0 where each has CPUs of
its own; the target is 2.3 or less (before damnet chose its threads, two runs on 2 cores took
8.7x). Other work on the machine skews the figure: run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from damnet.threads import affinity_cpus, available_cpus  # noqa: E402

TARGET = 2.3
#: settings damnet chooses itself: the bench removes them from the runs' environment
CHOICES = ("DAMNET_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")
REGION = "bench-src"


def damnet(args: list[str], slot: Path, threads: int | None = None) -> tuple[float, str]:
    """Run ``damnet ARGS`` with the slot's own MLflow database; (wall seconds, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in CHOICES}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{slot / 'mlflow.db'}", GX_ANALYTICS_ENABLED="false")
    flags = ["-v"] + ([] if threads is None else ["--threads", str(threads)])
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "components.cli", *flags, *args], capture_output=True, text=True,
                          cwd=slot, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"damnet {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def used_threads(stderr: str) -> str:
    found = re.search(r"torch threads: (\d+) intra-op", stderr)
    return found.group(1) if found else "?"


def prepare(work: Path, slots: int, scenes: int, size: int) -> list[Path]:
    """A synthetic source region, ingested into one store per slot."""
    imagery = work / "imagery"
    damnet(["synth", "--style", "source", "--out", str(imagery), "--scenes", str(scenes), "--size", str(size)], work)
    folders = []
    for i in range(slots):
        slot = work / f"slot{i}"
        slot.mkdir()
        damnet(["ingest", "--imagery", str(imagery), "--store", str(slot / "store"), "--region", REGION,
                "--require-labels"], slot)
        folders.append(slot)
    return folders


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.machine())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120, help="training steps of each run")
    ap.add_argument("--threads", type=int, default=None, help="pass --threads N to every run (default: damnet's own)")
    ap.add_argument("--scenes", type=int, default=4, help="synthetic source scenes")
    ap.add_argument("--size", type=int, default=512, help="scene side in pixels")
    args = ap.parse_args()
    print(f"{datetime.date.today()}, {platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs, "
          f"affinity {affinity_cpus()}, available to damnet {available_cpus()}")
    with tempfile.TemporaryDirectory(prefix="damnet-threads-") as tmp:
        alone_slot, *pair = prepare(Path(tmp), 3, args.scenes, args.size)

        def train(slot: Path) -> tuple[float, str]:
            return damnet(["train", "--store", str(slot / "store"), "--region", REGION, "--steps", str(args.steps)],
                          slot, args.threads)

        alone, log = train(alone_slot)
        print(f"alone:      {alone:6.1f} s  ({used_threads(log)} threads)")
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(train, pair))
    for i, (seconds, log) in enumerate(both, 1):
        print(f"together {i}: {seconds:6.1f} s  ({used_threads(log)} threads)")
    ratio = max(s for s, _ in both) / alone
    print(f"two at once / alone: {ratio:.2f}x (target <= {TARGET}x, ideal 2x on shared CPUs) "
          f"- {'ok' if ratio <= TARGET else 'over the target'}")


if __name__ == "__main__":
    main()
