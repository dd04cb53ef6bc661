"""What every pipeline step shares: the per-region layout, step records, skipping, MLflow.

Layout of a store (a local folder or an ``s3://`` prefix; see docs/pipeline.md)::

    STORE/imagery/<region>/                 imagery as the ops team drops it (default input)
    STORE/labels/<region>/                  label exports coming back from the labelers
    STORE/regions/<region>/steps/<step>.json   the step record: the commit point of a step
    STORE/regions/<region>/<step>/<key>/       that step's outputs for one set of inputs

``<key>`` is a hash of the step's name, the code version, its parameters and the content
hashes of its inputs. A step first computes its key; if the record already has that key
and its outputs exist, it prints "up to date" and does nothing. Otherwise it writes new
outputs under a new key folder and replaces the record last, so a step that fails half-way
leaves the previous record and the outputs it points to untouched.

One run of a step per region at a time: a step holds ``steps/<step>.lock`` (created
atomically, a conditional write on S3) while it runs. A second run of the same step and
region meanwhile stops with an error naming the run that holds it. A lock left behind by a
run that died is taken over by a retry of the same pipeline run (same run group), by any
run on the same host once its process is gone, or with ``--break-lock``.

Each step is also one MLflow run nested under a region run (one per pipeline run, found by
the tag ``damnet.run_group``: the Airflow run id, or ``manual``) in the experiment
``damnet/<region>``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from damnet import __version__, storage
from damnet.errors import DamnetError

log = logging.getLogger(__name__)

RECORD_FORMAT = "damnet.step/1"
REGION_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
DEFAULT_STORE = "runs/store"


class StepError(DamnetError):
    """A step cannot run: a missing upstream step, a bad argument."""


def region_name(text: str) -> str:
    """argparse type: a region name that is safe in paths, URIs and registry names."""
    if not re.fullmatch(REGION_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid region name: lower-case letters, digits and '-', "
            "starting with a letter, at most 40 characters")
    return text


def positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return v


def fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def add_common_arguments(p: argparse.ArgumentParser, region: str | None = None) -> None:
    """--store, --region (required unless ``region`` gives a default), --run-group, --force."""
    p.add_argument("--store", default=os.environ.get("DAMNET_STORE", DEFAULT_STORE),
                   help="store root: local folder or s3:// prefix (env DAMNET_STORE)")
    p.add_argument("--region", type=region_name, required=region is None, default=region,
                   help="region name (lower-case letters, digits, '-')")
    p.add_argument("--run-group", default=os.environ.get("DAMNET_RUN_GROUP", "manual"),
                   help="groups this step's MLflow run under one region run (e.g. the Airflow run id)")
    p.add_argument("--force", action="store_true", help="run even if the step is up to date")
    p.add_argument("--break-lock", action="store_true",
                   help="take over this step's lock from a run of it that is gone (see the error that names it)")


@dataclass(frozen=True)
class Layout:
    store: str
    region: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Layout:
        return cls(storage.absolute(args.store), args.region)

    @property
    def region_uri(self) -> str:
        return storage.join(self.store, "regions", self.region)

    @property
    def tiles(self) -> str:
        return storage.join(self.region_uri, "tiles")

    @property
    def imagery(self) -> str:
        return storage.join(self.store, "imagery", self.region)

    @property
    def inbox(self) -> str:
        return storage.join(self.store, "labels", self.region)

    def record_uri(self, step: str) -> str:
        return storage.join(self.region_uri, "steps", f"{step}.json")

    def step_dir(self, step: str, key: str) -> str:
        return storage.join(self.region_uri, step, key)

    def of(self, region: str) -> Layout:
        return Layout(self.store, region)


def read_record(layout: Layout, step: str) -> dict | None:
    uri = layout.record_uri(step)
    store = storage.storage_for(uri)
    return json.loads(store.get_text(uri)) if store.exists(uri) else None


def upstream(layout: Layout, step: str, hint: str | None = None) -> dict:
    """The record of a step this one depends on; a clear error if it has not run."""
    record = read_record(layout, step)
    if record is None:
        raise StepError(f"region {layout.region!r}: step {step!r} has not run yet in {layout.store} "
                        f"({hint or f'run: damnet {step} --region {layout.region}'})")
    made_from = record.get("inputs", {}).get("tiles", {}).get("digest")
    if step != "ingest" and made_from is not None:
        ingest = read_record(layout, "ingest")
        if ingest is not None and ingest["key"] != made_from:
            # A re-ingested region under older steps: mixing them would pair tiles, models and
            # labels of two different versions of the region.
            raise StepError(f"region {layout.region!r}: the {step!r} record was made from an earlier "
                            f"ingest of the region (tiles {made_from}, now {ingest['key']}); "
                            f"re-run {step} first: damnet {step} --region {layout.region}")
    return record


def write_json(uri: str, data) -> None:
    storage.storage_for(uri).put_text(uri, json.dumps(data, indent=1, default=str))


def read_json(uri: str):
    return json.loads(storage.storage_for(uri).get_text(uri))


def file_digest(uri: str) -> str:
    """sha256 of a file's content (local or s3://)."""
    return storage.storage_for(uri).digest(uri)


def tree_digest(uri: str) -> str:
    """sha256 over every file under a folder or prefix: relative names and content
    fingerprints (on S3 the listing's ETag and size, so nothing is downloaded)."""
    h = hashlib.sha256()
    prefix = uri.rstrip("/") + "/"
    entries = storage.storage_for(uri).listing(prefix)
    for key in sorted(entries):
        h.update(f"{key[len(prefix):]}={entries[key]}\n".encode())
    return h.hexdigest()


def code_version() -> str:
    """Package version, plus the git commit when run from a checkout (or $DAMNET_GIT_SHA)."""
    sha = os.environ.get("DAMNET_GIT_SHA")
    if not sha:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent, timeout=5).stdout.strip()
    return f"{__version__}+{sha}" if sha else __version__


def step_key(step: str, inputs: dict[str, dict], params: dict) -> str:
    blob = json.dumps({"step": step, "version": __version__, "params": params,
                       "inputs": {k: v["digest"] for k, v in inputs.items()}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
        import mlflow

        def log_metrics(step: int, entry: dict) -> None:
            mlflow.log_metrics({k: float(v) for k, v in entry.items() if k != "step"}, step=step)

        return log_metrics


def redact(uri: str) -> str:
    """``uri`` without a password (``postgresql://u:pw@h/db`` -> ``postgresql://u:***@h/db``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


def _experiment(region: str) -> str:
    return f"damnet/{region}"


def _parent_run(region: str, group: str) -> str:
    """The id of the region run for this run group (created on first use)."""
    import mlflow

    exp = mlflow.set_experiment(_experiment(region))
    found = mlflow.search_runs([exp.experiment_id], output_format="list", max_results=1,
                               filter_string=f"tags.`damnet.run_group` = '{group}' and "
                                             "tags.`damnet.kind` = 'region'")
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp.experiment_id, run_name=f"{region} {group}",
                            tags={"damnet.run_group": group, "damnet.kind": "region",
                                  "damnet.region": region})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_artifacts(artifacts) -> None:
    """Log (uri, MLflow folder) pairs - files or whole folders - to the active MLflow run."""
    import mlflow

    for uri, folder in artifacts:
        store = storage.storage_for(uri)
        if store.exists(uri):
            with storage.local_copy(uri) as path:
                mlflow.log_artifact(str(path), artifact_path=folder)
        else:  # a folder
            with storage.local_tree(uri) as path:
                mlflow.log_artifacts(str(path), artifact_path=folder or Path(uri.rstrip("/")).name)


@contextlib.contextmanager
def mlflow_step_run(layout: Layout, step: str, group: str, tags: dict | None = None) -> Iterator:
    """An MLflow run for one step, nested under the region run of ``group``."""
    import mlflow

    parent = _parent_run(layout.region, group)
    with mlflow.start_run(run_name=step, parent_run_id=parent, nested=True,
                          tags={"damnet.region": layout.region, "damnet.step": step,
                                "damnet.run_group": group, "damnet.kind": "step", **(tags or {})}) as run:
        yield run


def _finished(name: str, args: argparse.Namespace, key: str, layout: Layout,
              previous: dict | None = None) -> dict | None:
    """The record of a finished run of this step with this key, unless --force."""
    previous = previous if previous is not None else read_record(layout, name)
    if previous and previous["key"] == key and not getattr(args, "force", False) and _outputs_exist(previous):
        return previous
    return None


def output_folder(layout: Layout, name: str, key: str, current: dict | None = None) -> str:
    """Where a run of step ``name`` with ``key`` writes: ``<step>/<key>/``, except for a forced
    re-run over committed outputs of the same key, which gets a folder of its own so a
    failure half-way cannot damage what the record points to. Derived from that record, not
    random: every DDP rank gets the same folder, and a retry of the forced run resumes its
    checkpoint."""
    current = current if current is not None else read_record(layout, name)
    if current is None or current.get("key") != key:
        return layout.step_dir(name, key)
    suffix = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:8]
    return layout.step_dir(name, f"{key}-{suffix}")


def up_to_date(name: str, args: argparse.Namespace, inputs: dict[str, dict], params: dict,
               layout: Layout) -> bool:
    """Would :func:`run_step` skip this step?"""
    return _finished(name, args, step_key(name, inputs, params), layout) is not None


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


def run_step(name: str, args: argparse.Namespace, inputs: dict[str, dict], params: dict,
             body: Callable[[StepRun], None], layout: Layout | None = None) -> dict:
    """Run ``body`` unless the step is up to date; write the record; log the MLflow run.

    ``inputs``: name -> ``{"uri": ..., "digest": ...}`` (content hash, or the upstream
    record's key). Returns the step record.
    """
    layout = layout or Layout.from_args(args)
    with step_lock(layout, name, args.run_group, getattr(args, "break_lock", False)):
        return _run_step(name, args, inputs, params, body, layout)


def _run_step(name: str, args: argparse.Namespace, inputs: dict[str, dict], params: dict,
              body: Callable[[StepRun], None], layout: Layout) -> dict:
    import mlflow

    key = step_key(name, inputs, params)
    current = read_record(layout, name)
    previous = _finished(name, args, key, layout, current)
    if previous is not None:
        print(f"[{layout.region}] {name}: up to date (key {key}), nothing to do", flush=True)
        return previous

    run = StepRun(name, layout, key, output_folder(layout, name, key, current))
    started = time.time()
    print(f"[{layout.region}] {name}: running (key {key}) ...", flush=True)
    with mlflow_step_run(layout, name, args.run_group, {"damnet.key": key}) as mlrun:
        mlflow.log_params(_flat({"param": params}) | {f"input.{k}": v["uri"][:500] for k, v in inputs.items()})
        try:
            body(run)
        except BaseException:
            mlflow.set_tag("damnet.outcome", "failed")
            raise
        record = {
            "format": RECORD_FORMAT, "step": name, "region": layout.region, "key": key,
            "code_version": code_version(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": round(time.time() - started, 2),
            "inputs": inputs, "params": params, "outputs": run.outputs, "metrics": run.metrics,
            "info": run.info,
            "mlflow": {"run_id": mlrun.info.run_id, "experiment_id": mlrun.info.experiment_id,
                       "tracking_uri": redact(mlflow.get_tracking_uri())},
        }
        text = json.dumps(record, indent=1, default=str)
        storage.storage_for(run.out).put_text(run.path("record.json"), text)
        if run.metrics:
            mlflow.log_metrics({k: float(v) for k, v in run.metrics.items()})
        log_artifacts([(run.path("record.json"), None), *run.artifacts])
        mlflow.set_tag("damnet.outcome", "done")
        # The commit point: downstream steps and re-runs read this record.
        storage.storage_for(layout.record_uri(name)).put_text(layout.record_uri(name), text)
    print(f"[{layout.region}] {name}: done in {record['seconds']:.1f} s -> {run.out}", flush=True)
    return record


def _outputs_exist(record: dict) -> bool:
    for uri in record.get("outputs", {}).values():
        if isinstance(uri, str) and (storage.is_s3(uri) or uri.startswith("/")):
            if storage.is_s3(uri):
                store = storage.storage_for(uri)
                if not (store.exists(uri) or store.list(uri.rstrip("/") + "/")):
                    return False
            elif not Path(uri).exists():
                return False
    return True
