"""Fine-tune DAG: started when a region's labels come back (nightly DAG, UI or REST).

wait for labels (deferrable) -> import-labels -> finetune -> evaluate -> promote
-> predict (the new champion's change maps) -> report

When the gate refuses the candidate (decision and reasons recorded on the model version),
``promote`` ends *skipped*: ``predict`` is skipped too and ``report`` still runs, so the
page shows why. A step that really fails fails the run (``steps_failed``).
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException
from damnet_ops import settings as settings_mod
from damnet_ops import workflow
from damnet_ops.labels import LabelsSensor
from damnet_ops.settings import region_dag_arguments
from damnet_ops.steps import step_task

S = settings_mod.load()


@dag(**region_dag_arguments("damnet_finetune", __doc__, workflow.params("finetune")))
def damnet_finetune():
    def step(name: str, **kwargs):
        return step_task(S, name, workflow.arguments("finetune", name), **kwargs)

    wait = LabelsSensor(task_id="wait_for_labels", store=S.store, region="{{ params.region }}",
                        retries=0)
    imported = step("import-labels", retries=0)
    finetune = step("finetune")
    evaluate = step("evaluate")
    promote = step("promote", retries=0)
    predict = step("predict")
    report = step("report", trigger_rule=TriggerRule.ALL_DONE)

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def steps_failed():
        """Fails the run when a step failed (report, which always runs, would hide it)."""
        raise AirflowFailException("a step of this run failed; see its log")

    wait >> imported >> finetune >> evaluate >> promote >> predict >> report
    promote >> report
    [wait, imported, finetune, evaluate, promote, predict, report] >> steps_failed()


damnet_finetune()
