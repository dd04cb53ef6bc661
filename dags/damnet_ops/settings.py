"""Deployment settings, read from the environment at parse time (cheap; no database).

``DAMNET_EXECUTION``  ``local`` (default: the step commands run on the worker) or
                      ``kubernetes`` (each step is a pod running the project image)
``DAMNET_STORE``      store root (local folder or s3:// prefix), default runs/store; must be
                      s3:// in kubernetes mode (pods and Airflow's sensor/scan share it)
``DAMNET_IMAGE``      project image for step pods (CPU steps)
``DAMNET_GPU_IMAGE``  project CUDA image for GPU steps
``DAMNET_NAMESPACE``  namespace of the step pods
``DAMNET_GPU_NODE_SELECTOR``  ``key=value`` of GPU nodes (default nvidia.com/gpu.present=true)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from damnet_ops.workflow import SPEC

EXECUTION_MODES = ("local", "kubernetes")


@dataclass(frozen=True)
class Settings:
    execution: str
    store: str
    image: str
    gpu_image: str
    namespace: str
    gpu_node_selector: tuple[str, str]
    service_account: str = "damnet-step"
    secret: str = "damnet-s3"  # noqa: S105 - the name of a Kubernetes secret, not a value
    config_map: str = "damnet-config"


def load() -> Settings:
    execution = os.environ.get("DAMNET_EXECUTION", "local")
    if execution not in EXECUTION_MODES:
        raise ValueError(f"DAMNET_EXECUTION must be one of {EXECUTION_MODES}, got {execution!r}")
    store = os.environ.get("DAMNET_STORE", SPEC["default_store"])
    if execution == "kubernetes" and not store.startswith("s3://"):
        # The step pods and Airflow's own tasks (the labels sensor, the nightly scan) must see
        # the same store; a folder on the Airflow worker is not one the pods can see.
        raise ValueError(f"DAMNET_EXECUTION=kubernetes needs DAMNET_STORE=s3://bucket/prefix (the store "
                         f"the step pods use, with S3 credentials in Airflow's environment too); got {store!r}")
    key, _, value = os.environ.get("DAMNET_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true").partition("=")
    return Settings(
        execution=execution,
        store=store,
        image=os.environ.get("DAMNET_IMAGE", SPEC["images"]["cpu"]),
        gpu_image=os.environ.get("DAMNET_GPU_IMAGE", SPEC["images"]["gpu"]),
        namespace=os.environ.get("DAMNET_NAMESPACE", "damnet"),
        gpu_node_selector=(key, value),
    )


def region_dag_arguments(dag_id: str, doc: str, params: dict, **extra) -> dict:
    """The ``@dag`` arguments the per-region DAGs share (manual trigger, a few runs at once)."""
    import pendulum

    return dict(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
                params=params, max_active_runs=4, tags=["damnet", "region"], doc_md=doc,
                default_args={"retries": 1, "retry_delay": pendulum.duration(minutes=2)}, **extra)
