"""MLflow for the steps: each step is one MLflow run nested under a region run.

The region run (one per pipeline run) is found by the tag ``damnet.run_group`` (the Airflow
run id, or ``manual``) in the experiment ``damnet/<region>``. MLflow is imported inside the
functions that use it: the runner does not load it for a step that is up to date.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.records import Layout, StepInput
from damnet import storage

if TYPE_CHECKING:
    from mlflow.entities import Run


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


@contextlib.contextmanager
def mlflow_step_run(layout: Layout, step: str, group: str, tags: dict | None = None) -> Iterator[Run]:
    """An MLflow run for one step, nested under the region run of ``group``."""
    import mlflow

    parent = _parent_run(layout.region, group)
    with mlflow.start_run(run_name=step, parent_run_id=parent, nested=True,
                          tags={"damnet.region": layout.region, "damnet.step": step,
                                "damnet.run_group": group, "damnet.kind": "step", **(tags or {})}) as run:
        yield run


def log_inputs(params: dict, inputs: Mapping[str, StepInput]) -> None:
    """A step's parameters (flattened, ``param.``) and input URIs (``input.``) as run parameters."""
    import mlflow

    mlflow.log_params(_flat({"param": params}) | {f"input.{k}": v["uri"][:500] for k, v in inputs.items()})


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def metrics_logger() -> Callable[[int, dict], None]:
    """A ``train.fit`` callback that streams training metrics to the active MLflow run."""

    def log_entry(step: int, entry: dict) -> None:
        log_metrics({k: v for k, v in entry.items() if k != "step"}, step=step)

    return log_entry


def set_outcome(outcome: str) -> None:
    """Tag the active run ``damnet.outcome`` (done, failed)."""
    import mlflow

    mlflow.set_tag("damnet.outcome", outcome)


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
            with storage.local_copy(uri) as path:
                mlflow.log_artifact(str(path), artifact_path=folder)
        else:  # a folder
            with storage.local_tree(uri) as path:
                mlflow.log_artifacts(str(path), artifact_path=folder or Path(uri.rstrip("/")).name)
