"""One run of a step per region at a time.

A step holds ``STORE/regions/<region>/steps/<step>.lock`` (created atomically, a conditional
write on S3) while it runs. A second run of the same step and region meanwhile stops with an
error naming the run that holds it. A lock left behind by a run that died is taken over by a
retry of the same pipeline run (same run group), by any run on the same host once its process
is gone, or with ``--break-lock``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
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


def _lock_left_behind(held: dict, run_group: str) -> bool:
    """Is ``held`` a lock of a run that is gone?"""
    if run_group != "manual" and held.get("run_group") == run_group:
        return True  # a retry of the same pipeline run: the attempt that held it has ended
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        return not _pid_alive(held["pid"])
    return False


@contextlib.contextmanager
def step_lock(layout: Layout, name: str, run_group: str, break_lock: bool = False) -> Iterator[None]:
    """Hold ``STORE/regions/<region>/steps/<name>.lock`` while a step runs (module docstring)."""
    uri = storage.join(layout.region_uri, "steps", f"{name}.lock")
    store = storage.storage_for(uri)
    mine = {"format": LOCK_FORMAT, "step": name, "region": layout.region, "run_group": run_group,
            "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data = json.dumps(mine, indent=1).encode()

    def held() -> dict | None:
        try:
            value = json.loads(store.get_text(uri))
        except (ValueError, storage.StorageError):
            return None
        return value if isinstance(value, dict) else None

    if not store.create_exclusive(uri, data):
        other = held()
        if other is not None and not break_lock and not _lock_left_behind(other, run_group):
            raise StepLocked(
                f"region {layout.region!r}: step {name!r} is already running (run group "
                f"{other.get('run_group')!r}, host {other.get('host')}, pid {other.get('pid')}, since "
                f"{other.get('since')}); wait for it to finish. If that run is gone, run again with "
                f"--break-lock (lock: {uri})")
        log.warning("%s: taking over the lock of a run that is gone: %s", uri, other)
        store.delete(uri)
        if not store.create_exclusive(uri, data):
            raise StepLocked(f"region {layout.region!r}: step {name!r}: another run took the lock {uri} "
                             "at the same moment; wait for it to finish")
    try:
        yield
    finally:
        if held() == mine:
            store.delete(uri)
            if not storage.is_s3(uri):  # a run that stored nothing leaves no empty folders
                _prune_empty(Path(uri).parent, Path(layout.store))


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents below ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        folder = folder.parent
