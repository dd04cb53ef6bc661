"""Running a step: skip it when it is up to date, else run it under its lock, record it, log it.

A step first computes its key (:func:`components.records.step_key`: its name, the package
version, its parameters and the content hashes of its inputs). If the record already has that
key and its outputs exist, it prints "up to date" and does nothing. Otherwise it writes new
outputs under a new key folder and replaces the record last, so a step that fails half-way
leaves the previous record and the outputs it points to untouched.

The store's layout and the records: :mod:`components.records`; one run of a step per region
at a time: :mod:`components.locking`; the step's MLflow run: :mod:`components.tracking`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from components import tracking
from components.locking import HeldLock, step_lock
from components.records import (
    RECORD_FORMAT,
    Layout,
    Record,
    StepInput,
    output_folder,
    outputs_exist,
    read_record,
    step_key,
)
from damnet import __version__, storage


@dataclass(frozen=True)
class RunOptions:
    """How to run a step: its run group (MLflow, locks), ``--force``, ``--break-lock``."""

    run_group: str
    force: bool
    break_lock: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """The options from a step's parsed command line (``--run-group``, ``--force``, ``--break-lock``:
        components.spec.common)."""
        return cls(run_group=args.run_group, force=args.force, break_lock=args.break_lock)


def code_version() -> str:
    """Package version, plus the git commit when run from a checkout (or $DAMNET_GIT_SHA)."""
    sha = os.environ.get("DAMNET_GIT_SHA")
    if not sha:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent, timeout=5).stdout.strip()
    return f"{__version__}+{sha}" if sha else __version__


@dataclass
class StepRun:
    """Handed to a step's body: where to write, and what to report."""

    name: str
    layout: Layout
    key: str
    out: str  #: the folder (URI) for this run's outputs
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  #: anything else worth keeping in the record
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)  #: (uri, MLflow folder)

    def path(self, *parts: str) -> str:
        return storage.join(self.out, *parts)

    def artifact(self, uri: str, folder: str | None = None) -> None:
        """Also log ``uri`` (file or folder) to the step's MLflow run."""
        self.artifacts.append((uri, folder))

    def on_log(self) -> Callable[[int, dict], None]:
        """A ``train.fit`` callback that streams training metrics to the active MLflow run."""
        return tracking.metrics_logger()


def _finished(record: Record | None, key: str, force: bool) -> Record | None:
    """``record`` if it is of a finished run of the step with this key, unless ``force``."""
    if record and record["key"] == key and not force and outputs_exist(record):
        return record
    return None


def up_to_date(name: str, inputs: Mapping[str, StepInput], params: dict, layout: Layout,
               options: RunOptions) -> bool:
    """Would :func:`run_step` skip this step?"""
    return _finished(read_record(layout, name), step_key(name, inputs, params), options.force) is not None


def run_step(name: str, inputs: Mapping[str, StepInput], params: dict, body: Callable[[StepRun], None],
             layout: Layout, options: RunOptions) -> Record:
    """Run ``body`` unless the step is up to date; write the record; log the MLflow run.

    ``inputs``: name -> :class:`~components.records.StepInput` (URI and content hash, or the
    upstream record's key: :func:`~components.records.input_of`). Returns the step record.
    """
    with step_lock(layout, name, options.run_group, options.break_lock) as lock:
        return _run_step(name, inputs, params, body, layout, options, lock)


def _run_step(name: str, inputs: Mapping[str, StepInput], params: dict, body: Callable[[StepRun], None],
              layout: Layout, options: RunOptions, lock: HeldLock) -> Record:
    key = step_key(name, inputs, params)
    current = read_record(layout, name)
    previous = _finished(current, key, options.force)
    if previous is not None:
        print(f"[{layout.region}] {name}: up to date (key {key}), nothing to do", flush=True)
        return previous

    # A run that broke the lock of a run that may still be going writes to a folder of its own.
    out = layout.step_dir(name, f"{key}-{lock.token}") if lock.broken else output_folder(layout, name, key, current)
    run = StepRun(name, layout, key, out)
    started = time.time()
    print(f"[{layout.region}] {name}: running (key {key}) ...", flush=True)
    with tracking.mlflow_step_run(layout, name, options.run_group, {"damnet.key": key}) as mlrun:
        tracking.log_inputs(params, inputs)
        try:
            body(run)
        except BaseException:
            tracking.set_outcome("failed")
            raise
        record = _record(run, started, inputs, params) | {"mlflow": tracking.run_reference(mlrun)}
        text = json.dumps(record, indent=1, default=str)
        storage.storage_for(run.out).put_text(run.path("record.json"), text)
        if run.metrics:
            tracking.log_metrics(run.metrics)
        tracking.log_artifacts([(run.path("record.json"), None), *run.artifacts])
        lock.check()  # only a run that still holds its lock commits
        tracking.set_outcome("done")
        # The commit point: downstream steps and re-runs read this record.
        storage.storage_for(layout.record_uri(name)).put_text(layout.record_uri(name), text)
    print(f"[{layout.region}] {name}: done in {record['seconds']:.1f} s -> {run.out}", flush=True)
    return record


def _record(run: StepRun, started: float, inputs: Mapping[str, StepInput], params: dict) -> Record:
    """The step record of a finished ``run`` (:func:`_run_step` adds its MLflow run)."""
    return {
        "format": RECORD_FORMAT, "step": run.name, "region": run.layout.region, "key": run.key,
        "code_version": code_version(), "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 2),
        "inputs": inputs, "params": params, "outputs": run.outputs, "metrics": run.metrics,
        "info": run.info,
    }
