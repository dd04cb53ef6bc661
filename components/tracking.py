"""MLflow for the steps: each step is one MLflow run nested under a region run.

The region run (one per pipeline run) is found by the tag ``damnet.run_group`` (the Airflow
run id, or ``manual``) in the experiment ``damnet/<region>``. MLflow is imported inside the
functions that use it: the runner does not load it for a step that is up to date.

A tracking server (or database server) that does not answer is one error, not minutes of
retries: before a step's run starts, its host must accept a connection within
``DAMNET_MLFLOW_TIMEOUT`` seconds (default 30), and MLflow's own HTTP knobs default to a
request timeout of that many seconds and two retries (``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``; values set in the
environment win). Either failure is a :class:`TrackingUnavailable` naming the tracking URI
without its password (exit status 75: Airflow retries the step later).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.records import Layout, StepInput
from damnet import storage
from damnet.errors import DamnetError, Unavailable, redact_secrets

if TYPE_CHECKING:
    from mlflow.entities import Run


def redact(uri: str) -> str:
    """``uri`` without a password (``postgresql://u:pw@h/db`` -> ``postgresql://u:***@h/db``)."""
    return redact_secrets(uri)


TIMEOUT_ENV = "DAMNET_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT = 30.0  #: seconds a tracking server may take to answer before a step gives up
#: default ports of the tracking URI schemes whose server is probed before a step runs
_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


class TrackingUnavailable(Unavailable):
    """The MLflow tracking server (or its database) does not answer (exit 75: worth a retry)."""


def tracking_timeout() -> float:
    """Seconds from ``DAMNET_MLFLOW_TIMEOUT`` (default 30)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise DamnetError(f"{TIMEOUT_ENV}={text!r}: must be a positive number of seconds")
    return value


def _unavailable(uri: str, reason: str) -> TrackingUnavailable:
    return TrackingUnavailable(f"MLflow tracking at {redact(uri)} is not available ({reason}): check "
                               f"MLFLOW_TRACKING_URI and that the server is up (wait longer: {TIMEOUT_ENV})")


def check_tracking(uri: str, timeout: float) -> None:
    """Raise :class:`TrackingUnavailable` unless the server of ``uri`` accepts a connection within
    ``timeout`` seconds (tried again each second); local stores (SQLite, files) are not probed.
    Also bounds MLflow's own HTTP retries (module docstring)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme not in _PORTS or not parts.hostname:
        return
    if scheme in ("http", "https"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    try:
        address = (parts.hostname, parts.port or _PORTS[scheme])
    except ValueError as exc:  # a port that is not a number
        raise DamnetError(f"MLFLOW_TRACKING_URI={redact(uri)}: {exc}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            raise _unavailable(uri, f"{reason}, for {timeout:g} s")
        time.sleep(min(1.0, left))


def _connection_fault(exc: BaseException) -> str | None:
    """Why ``exc`` (or what it was raised from) means the tracking server did not answer."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        kind = type(cur)
        if kind.__module__.startswith(("requests", "urllib3")) and (
                "Connection" in kind.__name__ or "Timeout" in kind.__name__):
            return "no answer"
        if kind.__module__.startswith("sqlalchemy") and kind.__name__ == "OperationalError":
            return str(cur).strip().splitlines()[0][:200]
        if isinstance(cur, (ConnectionError, TimeoutError)):
            return cur.strerror or type(cur).__name__
        cur = cur.__cause__ or cur.__context__
    return None


def _as_unavailable(exc: BaseException) -> TrackingUnavailable | None:
    reason = _connection_fault(exc)
    if reason is None:
        return None
    import mlflow

    return _unavailable(mlflow.get_tracking_uri(), reason)


def unavailable_from(exc: BaseException) -> TrackingUnavailable | None:
    """An MLflow error raised for want of an answering server, as :class:`TrackingUnavailable`
    (for the command line: an MLflow call outside :func:`reaching_tracking`); else None."""
    return _as_unavailable(exc) if type(exc).__module__.startswith("mlflow") else None


@contextlib.contextmanager
def reaching_tracking() -> Iterator[None]:
    """MLflow calls inside that fail for want of a server raise :class:`TrackingUnavailable`."""
    try:
        yield
    except DamnetError:
        raise
    except Exception as exc:
        error = _as_unavailable(exc)
        if error is None:
            raise
        raise error from exc


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


@contextlib.contextmanager
def mlflow_step_run(layout: Layout, step: str, group: str, tags: dict | None = None) -> Iterator[Run]:
    """An MLflow run for one step, nested under the region run of ``group``.

    A tracking server that does not answer stops the step before its body runs
    (:func:`check_tracking`); a run whose body fails ends FAILED (KILLED on Ctrl-C), as far as
    the server still answers: the body's own error is what propagates.
    """
    import mlflow

    check_tracking(mlflow.get_tracking_uri(), tracking_timeout())
    with reaching_tracking():
        parent = _parent_run(layout.region, group)
        run = mlflow.start_run(run_name=step, parent_run_id=parent, nested=True,
                               tags={"damnet.region": layout.region, "damnet.step": step,
                                     "damnet.run_group": group, "damnet.kind": "step", **(tags or {})})
    try:
        yield run
    except BaseException as exc:
        with contextlib.suppress(Exception):
            _end_run(run.info.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    with reaching_tracking():
        _end_run(run.info.run_id, "FINISHED")


def _end_run(run_id: str, status: str) -> None:
    """End the active run ``run_id`` (as ``mlflow.start_run``'s context does), if still active."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)


def log_inputs(params: dict, inputs: Mapping[str, StepInput]) -> None:
    """A step's parameters (flattened, ``param.``) and input URIs (``input.``) as run parameters."""
    import mlflow

    with reaching_tracking():
        mlflow.log_params(_flat({"param": params}) | {f"input.{k}": v["uri"][:500] for k, v in inputs.items()})


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    import mlflow

    with reaching_tracking():
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def metrics_logger() -> Callable[[int, dict], None]:
    """A ``train.fit`` callback that streams training metrics to the active MLflow run."""

    def log_entry(step: int, entry: dict) -> None:
        log_metrics({k: v for k, v in entry.items() if k != "step"}, step=step)

    return log_entry


def set_outcome(outcome: str) -> None:
    """Tag the active run ``damnet.outcome`` (done, failed). Tagging a failed run is best effort:
    the step's own error is the one to report, even when the server is the fault."""
    import mlflow

    try:
        with reaching_tracking():
            mlflow.set_tag("damnet.outcome", outcome)
    except TrackingUnavailable:
        if outcome != "failed":
            raise


def run_reference(run: Run) -> dict[str, str]:
    """What a step record keeps of its MLflow run (the tracking URI without a password)."""
    import mlflow

    return {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
            "tracking_uri": redact(mlflow.get_tracking_uri())}


def log_artifacts(artifacts: Iterable[tuple[str, str | None]]) -> None:
    """Log (uri, MLflow folder) pairs - files or whole folders - to the active MLflow run."""
    import mlflow

    for uri, folder in artifacts:
        store = storage.storage_for(uri)
        if store.exists(uri):
            with storage.local_copy(uri) as path, reaching_tracking():
                mlflow.log_artifact(str(path), artifact_path=folder)
        else:  # a folder
            with storage.local_tree(uri) as path, reaching_tracking():
                mlflow.log_artifacts(str(path), artifact_path=folder or Path(uri.rstrip("/")).name)
