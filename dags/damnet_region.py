"""Region adaptation DAG: triggered once per new region (UI, REST or the nightly DAG).

ingest -> validate -> [pretrain] -> adapt -> select -> export-labels -> labels pending

Validation stops bad imagery before any GPU time; adapt runs on a GPU in kubernetes mode.
The run ends by emitting the ``damnet-labels-pending`` asset event (with the region and the
store in its extra): the labelers' queue. When labels come back, ``damnet_finetune``
takes over. Parse-time cost: settings from the environment and the Params and step arguments
from workflows.json (generated from the steps' option declarations).
"""

from __future__ import annotations

from airflow.sdk import Asset, Metadata, TriggerRule, dag, task
from damnet_ops import settings as settings_mod
from damnet_ops import workflow
from damnet_ops.settings import region_dag_arguments
from damnet_ops.steps import step_task

LABELS_PENDING = Asset(name="damnet-labels-pending", uri="damnet://labels-pending")

S = settings_mod.load()


@dag(**region_dag_arguments("damnet_region", __doc__, workflow.params("region")))
def damnet_region():
    def step(name: str, **kwargs):
        return step_task(S, name, workflow.arguments("region", name), **kwargs)

    ingest = step("ingest")
    validate = step("validate", retries=0)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def pretrain_enabled(**context) -> bool:
        return bool(context["params"]["pretrain"])

    pretrain = step("pretrain")
    adapt = step("adapt", trigger_rule=TriggerRule.NONE_FAILED)
    select = step("select")
    export = step("export-labels")

    @task(outlets=[LABELS_PENDING])
    def labels_pending(**context):
        """Record that the region waits for labels: an asset event with the region and store in its
        extra (`damnet labels-status --region R` names the inbox the labels go to)."""
        yield Metadata(LABELS_PENDING, {"region": context["params"]["region"], "store": S.store})

    gate = pretrain_enabled()
    ingest >> validate >> gate >> pretrain >> adapt
    validate >> adapt
    adapt >> select >> export >> labels_pending()


damnet_region()
