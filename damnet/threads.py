"""How many CPU threads torch may use in a step: the CPUs the process really has, or the user's choice.

torch sizes its thread pool to every core the machine has. Two steps side by side (Airflow's
local executor, two DAG runs) or a pod with a CPU limit on a large node then run far more
threads than they have CPUs for, and training gets several times slower. The CPUs a process
may really use are the smaller of

* its CPU affinity (``os.sched_getaffinity``: what ``taskset`` and cpusets allow), and
* its cgroup CPU quota (what a Kubernetes CPU limit sets), rounded up, at least 1:
  cgroup v2 ``cpu.max`` holds ``"QUOTA PERIOD"`` or ``"max PERIOD"`` (no limit); cgroup v1
  ``cpu.cfs_quota_us`` (``-1``: no limit) and ``cpu.cfs_period_us`` in the ``cpu`` controller.

Quotas are read in the process's own cgroup and its parents (``/proc/self/cgroup``) and at
the root of the tree (what a container sees of its own cgroup); the smallest applies.

The thread count is the first of: ``damnet --threads N``, the environment variable
``DAMNET_THREADS``, ``OMP_NUM_THREADS`` (torch's own; torchrun sets it to 1 for several
processes per node), else the CPUs above.

A process cannot see the other steps it shares its CPUs with, so ``damnet`` also sets
``OMP_WAIT_POLICY=PASSIVE`` (unless set) before torch loads: torch's OpenMP threads then sleep
when they wait for work instead of spinning on a CPU that another busy process needs (on 2
shared cores a 2-thread training loop beside other work ran many times slower spinning).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from damnet.errors import DamnetError

log = logging.getLogger(__name__)

#: environment variable that sets the thread count (the ``--threads`` flag wins over it)
ENV_VAR = "DAMNET_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: where cgroup v1 mounts the ``cpu`` controller under the root (the name varies by distribution)
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


class ThreadsError(DamnetError):
    """A thread count that is not a whole number of at least 1."""


def parse_threads(text: str, source: str) -> int:
    """``text`` as a thread count; ``source`` (``--threads``, ``DAMNET_THREADS``) names it in the error."""
    try:
        n = int(text.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ThreadsError(f"{source} must be a whole number of threads, 1 or more; got {text!r}")
    return n


def parse_cpu_max(text: str) -> float | None:
    """CPUs that a cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"``) allows, or None for ``"max ..."``.

    Raises:
        ValueError: the text is not a quota and a period.
    """
    fields = text.split()
    if fields[:1] == ["max"]:
        return None
    if len(fields) != 2:
        raise ValueError(f"cpu.max: expected 'QUOTA PERIOD', got {text!r}")
    return _cpus(fields[0], fields[1])


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs that cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` allow, or None for a
    negative quota (``-1``: no limit).

    Raises:
        ValueError: either file does not hold a whole number.
    """
    if int(quota_text.strip()) < 0:
        return None
    return _cpus(quota_text, period_text)


def _cpus(quota: str, period: str) -> float:
    q, p = int(quota.strip()), int(period.strip())
    if q <= 0 or p <= 0:
        raise ValueError(f"CPU quota {quota.strip()} per period {period.strip()} is not a limit")
    return q / p


def _self_and_parents(base: Path, relative: str) -> Iterator[Path]:
    """``base/relative`` and each of its parents up to ``base`` itself."""
    parts = [p for p in relative.split("/") if p and p != ".."]
    for n in range(len(parts), -1, -1):
        yield base.joinpath(*parts[:n])


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # no such file: this folder sets no limit (or is not a cgroup)
        return None


def _folder_limit(folder: Path) -> float | None:
    """The CPU quota set in one cgroup folder (v2 or v1 files), or None."""
    cpu_max = _read(folder / "cpu.max")
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        if cpu_max is not None:
            return parse_cpu_max(cpu_max)
        if quota is not None and period is not None:
            return parse_cfs(quota, period)
    except ValueError as exc:
        log.warning("%s: ignored (%s)", folder, exc)
    return None


def cgroup_folders(root: Path, self_cgroup: str) -> list[Path]:
    """The cgroup folders whose CPU quota applies to a process whose ``/proc/self/cgroup`` is
    ``self_cgroup``: its own and its parents, in the v2 tree at ``root`` and in the v1 ``cpu``
    controller's tree under it."""
    folders: list[Path] = []
    for line in self_cgroup.splitlines():
        fields = line.split(":", 2)  # hierarchy id : controllers : path
        if len(fields) != 3:
            continue
        _, controllers, relative = fields
        if controllers == "":  # cgroup v2: one unified tree
            folders += _self_and_parents(root, relative)
        elif "cpu" in controllers.split(","):
            folders += [f for mount in V1_CPU_MOUNTS for f in _self_and_parents(root / mount, relative)]
    # A container sees its own cgroup at the root, whatever path /proc/self/cgroup names.
    folders += [root, *(root / mount for mount in V1_CPU_MOUNTS)]
    return list(dict.fromkeys(folders))


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: str | None = None) -> float | None:
    """The smallest CPU quota (in CPUs, e.g. 1.5) of the cgroups the process is in, or None.

    Args:
        root: where the cgroup file system is mounted (a fake tree in tests).
        self_cgroup: the text of ``/proc/self/cgroup`` (read when None).
    """
    if self_cgroup is None:
        self_cgroup = _read(Path("/proc/self/cgroup")) or ""
    limits = [limit for folder in cgroup_folders(root, self_cgroup) if (limit := _folder_limit(folder)) is not None]
    return min(limits, default=None)


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (all of the machine's where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS, Windows


def available_cpus(root: Path = CGROUP_ROOT, self_cgroup: str | None = None, affinity: int | None = None) -> int:
    """CPUs this process may really use: affinity, capped by the cgroup quota rounded up; at least 1.

    Args:
        root, self_cgroup: as :func:`cgroup_cpu_limit`.
        affinity: CPUs of the affinity mask (:func:`affinity_cpus` when None).
    """
    cpus = affinity_cpus() if affinity is None else affinity
    limit = cgroup_cpu_limit(root, self_cgroup)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def choose_threads(requested: int | None = None, environ: Mapping[str, str] | None = None,
                   root: Path = CGROUP_ROOT) -> int:
    """The thread count: ``requested`` (the ``--threads`` flag), else ``DAMNET_THREADS``, else a
    valid ``OMP_NUM_THREADS``, else :func:`available_cpus`.

    Raises:
        ThreadsError: ``requested`` or ``DAMNET_THREADS`` is not a whole number of at least 1.
    """
    env = os.environ if environ is None else environ
    if requested is not None:
        return parse_threads(str(requested), "--threads")
    if env.get(ENV_VAR, "").strip():
        return parse_threads(env[ENV_VAR], ENV_VAR)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:  # torch ignores other values, with a warning of its own
        return int(omp)
    return available_cpus(root)


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads (and inter-op threads, while torch still allows it) to
    :func:`choose_threads`; returns the count."""
    import torch  # here, not at the top: reading the CPUs must stay cheap (Airflow, make)

    n = choose_threads(requested)
    torch.set_num_threads(n)
    # torch refuses once inter-op work has started (or it was set before): keep its setting then.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)
    log.debug("torch threads: %d intra-op, %d inter-op", torch.get_num_threads(), torch.get_num_interop_threads())
    return n
