"""Fine-tune DAG: started when a region's labels come back (nightly DAG, UI or REST).

wait for labels (deferrable) -> import-labels -> finetune -> evaluate -> promote
-> predict (the new champion's change maps) -> report

When the gate refuses the candidate (decision and reasons recorded on the model version),
``promote`` ends *skipped*: ``predict`` is skipped too and ``report`` still runs, so the
page shows why. A step that really fails fails the run (``steps_failed``).
"""

from __future__ import annotations

from airflow.sdk import Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException
from damnet_ops import settings as settings_mod
from damnet_ops.labels import LabelsSensor
from damnet_ops.settings import DEVICE_TEMPLATE, PROFILES, REGION_PATTERN, region_dag_arguments, steps_template
from damnet_ops.steps import step_task

S = settings_mod.load()

params = {
    "region": Param("newtown", type="string", pattern=REGION_PATTERN),
    "source_region": Param("source", type="string", pattern=REGION_PATTERN),
    "compute_profile": Param("cpu", type="string", enum=PROFILES),
    "finetune_steps": Param(0, type="integer", minimum=0, description="0: the compute profile's default"),
    "predict_tile": Param(256, type="integer", minimum=32, maximum=2048, multipleOf=32),
    # The promotion gate; defaults: those of `damnet promote` (damnet.registry.Evidence; not
    # imported here: parse time stays cheap). tests/test_dags.py keeps the two in step.
    "margin": Param(0.01, type="number", minimum=0, maximum=1, section="Promotion gate",
                    description="the gain's lower bound (90 % paired bootstrap over audit tiles) must exceed "
                    "this; >= 0: a tie never promotes"),
    "max_source_drop": Param(0.05, type="number", minimum=0, maximum=0.2, section="Promotion gate",
                             description="largest allowed drop of source-holdout F1 against the source model"),
    "min_audit_tiles": Param(10, type="integer", minimum=1, section="Promotion gate",
                             description="fewer audit tiles: not enough audit evidence, no promotion"),
    "min_change_tiles": Param(5, type="integer", minimum=1, section="Promotion gate",
                              description="fewer audit tiles with true change: not enough audit evidence"),
    "confidence": Param(0.9, type="number", minimum=0.5, exclusiveMaximum=1, section="Promotion gate",
                        description="level of the two-sided paired bootstrap interval whose lower bound "
                        "must clear the margin"),
}
STEPS = steps_template("finetune_steps", {"cpu-small": 40, "cpu": 100, "gpu": 2000})
DEVICE = DEVICE_TEMPLATE


@dag(**region_dag_arguments("damnet_finetune", __doc__, params))
def damnet_finetune():
    region = ["--region", "{{ params.region }}"]
    wait = LabelsSensor(task_id="wait_for_labels", store=S.store, region="{{ params.region }}",
                        retries=0)
    imported = step_task(S, "import-labels", region, retries=0)
    finetune = step_task(S, "finetune", [*region, "--source-region", "{{ params.source_region }}",
                                         "--steps", STEPS, "--device", DEVICE], gpu=True)
    evaluate = step_task(S, "evaluate", [*region, "--source-region", "{{ params.source_region }}"])
    promote = step_task(S, "promote", [*region, "--margin", "{{ params.margin }}",
                                       "--max-source-drop", "{{ params.max_source_drop }}",
                                       "--min-audit-tiles", "{{ params.min_audit_tiles }}",
                                       "--min-change-tiles", "{{ params.min_change_tiles }}",
                                       "--confidence", "{{ params.confidence }}"], retries=0)
    predict = step_task(S, "predict", [*region, "--tile", "{{ params.predict_tile }}", "--device", DEVICE],
                        gpu=True)
    report = step_task(S, "report", region, trigger_rule=TriggerRule.ALL_DONE)
    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def steps_failed():
        """Fails the run when a step failed (report, which always runs, would hide it)."""
        raise AirflowFailException("a step of this run failed; see its log")

    wait >> imported >> finetune >> evaluate >> promote >> predict >> report
    promote >> report
    [wait, imported, finetune, evaluate, promote, predict, report] >> steps_failed()


damnet_finetune()
