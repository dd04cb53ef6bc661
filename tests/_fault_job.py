"""Run one ``damnet`` command and SIGKILL it just before its N-th write (tests/test_faults.py).

python tests/_fault_job.py N ARGV...

A write is what a step leaves behind: a file put into the store (:mod:`damnet.storage`), a
model version registered, a promotion decision or alias recorded. The process kills itself
with no clean-up at all, like a preempted pod or an OOM kill. ``N = 0`` counts instead: the
number of writes is printed as the last line ``writes: N``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WRITES = 0


def _hooked(owner, name: str, kill_at: int) -> None:
    real = getattr(owner, name)

    def hook(*args, **kwargs):
        global WRITES
        WRITES += 1
        if kill_at == WRITES:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, hook)


def install(kill_at: int) -> None:
    """Count (and kill at) every write of the store, the registry and the aliases."""
    import mlflow

    from damnet import registry, storage

    for method in ("put_text", "put_bytes", "writing", "delete"):
        _hooked(storage.LocalStorage, method, kill_at)
    _hooked(mlflow, "register_model", kill_at)
    _hooked(registry, "record_decision", kill_at)
    _hooked(registry, "set_aliases", kill_at)


def main() -> int:
    kill_at, argv = int(sys.argv[1]), sys.argv[2:]
    install(kill_at)
    from components.cli import main as damnet

    code = damnet(argv)
    print(f"writes: {WRITES}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
