"""One run of a step per region at a time.

A step holds ``STORE/regions/<region>/steps/<step>.lock`` (created atomically, a conditional
write on S3) while it runs. A second run of the same step and region meanwhile stops with an
error naming the run that holds it. A lock left behind by a run that died is taken over by a
retry of the same pipeline run (same run group), by any run on the same host once its process
is gone, or with ``--break-lock``. A lock whose process is alive on this host is never taken
over, not even with ``--break-lock``. A run that broke the lock of a run on another host (which
may still be running) writes to an output folder of its own, and a run commits its record only
while it still holds its lock: two runs never share an output folder, and at most one commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.records import Layout, StepError
from damnet import storage

log = logging.getLogger(__name__)

LOCK_FORMAT = "damnet.lock/1"


class StepLocked(StepError):
    """Another run of the same step of the same region is in progress."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_state(held: dict, run_group: str) -> str:
    """What is known of the run that holds ``held``: "retry" (an earlier attempt of this same
    pipeline run, which has ended), "gone" (a process of this host that no longer exists),
    "alive" (a process of this host that is running, whatever its run group) or "unknown"
    (another host)."""
    here = held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int)
    # (this very process cannot be running the step it is about to run: a reused pid)
    if here and held["pid"] != os.getpid() and _pid_alive(held["pid"]):
        return "alive"
    if run_group != "manual" and held.get("run_group") == run_group:
        return "retry"
    return "gone" if here else "unknown"


@dataclass
class HeldLock:
    """The lock a step run holds; ``broken``: taken from a run whose end is not known (with
    --break-lock), so this run writes to a folder of its own (:func:`components.step.run_step`)."""

    uri: str
    mine: dict
    broken: bool = False

    @property
    def token(self) -> str:
        """Short and unique to this run: names the folder of a run that broke a lock."""
        return hashlib.sha256(json.dumps(self.mine, sort_keys=True).encode()).hexdigest()[:8]

    def held(self) -> dict | None:
        store = storage.storage_for(self.uri)
        try:
            value = json.loads(store.get_text(self.uri))
        except (ValueError, storage.StorageError, OSError):
            return None
        return value if isinstance(value, dict) else None

    def check(self) -> None:
        """Raise :class:`StepLocked` if another run has taken the lock over since this run took
        it (so at most one of two runs commits its record)."""
        other = self.held()
        if other != self.mine:
            who = "nobody holds it now" if other is None else (
                f"now held by run group {other.get('run_group')!r}, host {other.get('host')}, "
                f"pid {other.get('pid')}")
            raise StepLocked(f"{self.uri}: this run lost its lock while it ran ({who}); its outputs are "
                             "not committed and the step record is unchanged")


@contextlib.contextmanager
def step_lock(layout: Layout, name: str, run_group: str, break_lock: bool = False) -> Iterator[HeldLock]:
    """Hold ``STORE/regions/<region>/steps/<name>.lock`` while a step runs (module docstring)."""
    uri = storage.join(layout.region_uri, "steps", f"{name}.lock")
    store = storage.storage_for(uri)
    mine = {"format": LOCK_FORMAT, "step": name, "region": layout.region, "run_group": run_group,
            "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lock = HeldLock(uri, mine)
    if not store.create_exclusive(uri, json.dumps(mine, indent=1).encode()):
        _take_over(lock, layout, name, run_group, break_lock)
    try:
        yield lock
    finally:
        if lock.held() == mine:
            store.delete(uri)
            if not storage.is_s3(uri):  # a run that stored nothing leaves no empty folders
                _prune_empty(Path(uri).parent, Path(layout.store))


def _take_over(lock: HeldLock, layout: Layout, name: str, run_group: str, break_lock: bool) -> None:
    """Take ``lock.uri`` over from the run that holds it, if that is safe or ``break_lock``."""
    store = storage.storage_for(lock.uri)
    other = lock.held()
    state = "unknown" if other is None else _holder_state(other, run_group)
    holder = "" if other is None else (
        f"run group {other.get('run_group')!r}, host {other.get('host')}, pid {other.get('pid')}, "
        f"since {other.get('since')}")
    if state == "alive":
        raise StepLocked(
            f"region {layout.region!r}: step {name!r} is running right now on this host ({holder}; that "
            f"process is alive), so its lock is not taken over, not even with --break-lock; wait for "
            f"it to finish or stop that process (lock: {lock.uri})")
    if state == "unknown" and other is not None and not break_lock:
        raise StepLocked(
            f"region {layout.region!r}: step {name!r} is already running ({holder}); wait for it to "
            f"finish. If that run is gone, run again with --break-lock (lock: {lock.uri})")
    if state == "unknown":
        lock.broken = True
        log.warning("%s: --break-lock: taking the lock over from %s, whose end this host cannot check; "
                    "this run writes to a folder of its own and that run, if still running, will not "
                    "commit", lock.uri, holder or "an unreadable lock")
    else:
        log.warning("%s: taking over the lock of %s (%s)", lock.uri,
                    "an earlier attempt of this run group" if state == "retry" else "a run that is gone",
                    holder)
    store.delete(lock.uri)
    if not store.create_exclusive(lock.uri, json.dumps(lock.mine, indent=1).encode()):
        raise StepLocked(f"region {layout.region!r}: step {name!r}: another run took the lock {lock.uri} "
                         "at the same moment; wait for it to finish")


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents below ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        folder = folder.parent
