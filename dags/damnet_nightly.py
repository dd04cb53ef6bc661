"""Nightly DAG: start the region and fine-tune runs that are due, and re-score champions.

``damnet scan`` (a step command; light, so on the worker in both modes: its JSON result,
the command's last output line, is what the tasks below map over) finds

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
from damnet_ops.steps import full_arguments, mapped_step_task, step_task

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
    def confs(found: dict, key: str) -> list[dict]:
        return [found.get("conf", {}).get(r, {"region": r}) for r in found[key]]

    @task
    def rescore_args(found: dict, **context) -> list[list[str]]:
        run_id = context["run_id"]
        return [full_arguments(S, "rescore", ["--region", r], run_id=run_id) for r in found["rescore"]]

    found = step_task(S, "scan", ["--source-regions", ",".join(SOURCE_REGIONS)], returns_json=True).output
    TriggerDagRunOperator.partial(task_id="start_region_runs", trigger_dag_id="damnet_region").expand(
        conf=confs.override(task_id="new_imagery")(found, "new_imagery"))
    TriggerDagRunOperator.partial(task_id="start_finetune_runs", trigger_dag_id="damnet_finetune").expand(
        conf=confs.override(task_id="labels_ready")(found, "labels_ready"))
    mapped_step_task(S, "rescore", rescore_args(found), task_id="rescore_champions")


damnet_nightly()
