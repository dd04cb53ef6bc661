"""Nightly DAG: start the region and fine-tune runs that are due, and re-score champions.

* regions whose imagery is new or changed since their last ingest -> ``damnet_region``
* regions whose labels arrived since their last import -> ``damnet_finetune``
* every region with a champion and audit labels -> ``damnet rescore`` (fails, and tags the
  model version ``damnet.drift=flagged``, when the champion's audit F1 dropped)
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from damnet_ops import settings as settings_mod
from damnet_ops.steps import full_arguments, mapped_step_task

S = settings_mod.load()
SOURCE_REGIONS = tuple(os.environ.get("DAMNET_SOURCE_REGIONS", "source").split(","))


@dag(
    dag_id="damnet_nightly",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["damnet", "nightly"],
    doc_md=__doc__,
)
def damnet_nightly():
    @task
    def scan() -> dict[str, list[str]]:
        from damnet_ops.scan import scan_store

        return scan_store(S.store, SOURCE_REGIONS)

    @task
    def confs(found: dict, key: str) -> list[dict]:
        return [found.get("conf", {}).get(r, {"region": r}) for r in found[key]]

    @task
    def rescore_args(found: dict, **context) -> list[list[str]]:
        run_id = context["run_id"]
        return [full_arguments(S, "rescore", ["--region", r], run_id=run_id) for r in found["rescore"]]

    found = scan()
    TriggerDagRunOperator.partial(task_id="start_region_runs", trigger_dag_id="damnet_region").expand(
        conf=confs.override(task_id="new_imagery")(found, "new_imagery"))
    TriggerDagRunOperator.partial(task_id="start_finetune_runs", trigger_dag_id="damnet_finetune").expand(
        conf=confs.override(task_id="labels_ready")(found, "labels_ready"))
    mapped_step_task(S, "rescore", rescore_args(found), task_id="rescore_champions")


damnet_nightly()
