"""Region adaptation DAG: triggered once per new region (UI, REST or the nightly DAG).

ingest -> validate -> [pretrain] -> adapt -> select -> export-labels -> labels pending

Validation stops bad imagery before any GPU time; adapt runs on a GPU in kubernetes mode.
The run ends by emitting the ``damnet-labels-pending`` asset event (with the region and the
task file in its extra): the labelers' queue. When labels come back, ``damnet_finetune``
takes over. Parse-time cost: settings from the environment only.
"""

from __future__ import annotations

from airflow.sdk import Asset, Metadata, Param, TriggerRule, dag, task
from damnet_ops import settings as settings_mod
from damnet_ops.settings import DEVICE_TEMPLATE, PROFILES, REGION_PATTERN, region_dag_arguments, steps_template
from damnet_ops.steps import step_task

URI_PATTERN = r"^$|^(s3://[a-z0-9][a-z0-9.-]{1,62}/|/)[A-Za-z0-9._/+=-]*$"
SELECTORS = ["combined", "random", "entropy", "margin", "mutual_info", "kcenter"]
LABELS_PENDING = Asset(name="damnet-labels-pending", uri="damnet://labels-pending")

S = settings_mod.load()

params = {
    "region": Param("newtown", type="string", pattern=REGION_PATTERN,
                    description="region name: lower-case letters, digits, '-'"),
    "source_model": Param("models:/damnet-source@champion", type="string",
                          pattern=r"^models:/[A-Za-z0-9._-]+(@[A-Za-z0-9_-]+|/[0-9]+)$|^(s3://|/)[A-Za-z0-9._/=+-]+\.pt$",
                          description="registry URI or model file to adapt"),
    "source_region": Param("source", type="string", pattern=REGION_PATTERN),
    "label_budget": Param(0.003, type="number", exclusiveMinimum=0,
                          description="tiles to label: share (< 1) or count (>= 1)"),
    "audit": Param(0.01, type="number", exclusiveMinimum=0,
                   description="audit tiles: share (< 1; raised to min_audit) or count (>= 1)"),
    "min_audit": Param(20, type="integer", minimum=0,
                       description="fewest audit tiles a share gives (at most half the region): the "
                       "promotion gate needs enough audit tiles to decide (>= 10, 5 with change)"),
    "max_label_share": Param(0.01, type="number", exclusiveMinimum=0, maximum=1),
    "selector": Param("combined", type="string", enum=SELECTORS),
    "reference": Param("none", type="string", enum=["none", "source"],
                       description="source: the combined selector also asks the source model for a "
                       "second opinion (tiles it disputes with the adapted model; see docs/benchmarks.md)"),
    "compute_profile": Param("cpu", type="string", enum=PROFILES),
    "pretrain": Param(False, type="boolean", description="MAE-pretrain the encoder on both domains first"),
    "adapt_steps": Param(0, type="integer", minimum=0, description="0: the compute profile's default"),
    # defaults: those of damnet.train.MODES["adapt"] (not imported here: no torch at parse time)
    "restyle": Param(0.0, type="number", minimum=0, maximum=1,
                     description="pixel-level alignment: share of source pairs given the region's band "
                     "histograms (0: off; see docs/benchmarks.md); fine-tuning keeps it"),
    "match_gsd": Param(False, type="boolean",
                       description="resample source batches to the region's ground sample distance "
                       "(when its pixel size differs from the source's); fine-tuning keeps it"),
    "lambda_adv": Param(0.001, type="number", minimum=0, maximum=1,
                        description="weight of the adversarial term in adaptation (0.01 with restyle 0.5 "
                        "and match_gsd: the benchmark's best; fine-tuning keeps its own 0.001)"),
    # Imagery and tiling; defaults of bands and label_threshold: those of `damnet ingest` (not
    # imported here). tests/test_dags.py keeps the two in step.
    "imagery": Param("", type="string", pattern=URI_PATTERN, section="Imagery",
                     description="imagery folder or s3:// prefix (empty: STORE/imagery/REGION)"),
    "tile_size": Param(256, type="integer", minimum=32, maximum=2048, multipleOf=32, section="Imagery"),
    "bands": Param("", type="string", pattern=r"^$|^[^,]+,[^,]+,[^,]+$", section="Imagery",
                   description="R,G,B band numbers or descriptions, e.g. 3,2,1 or B04,B03,B02 "
                   "(empty: the imagery has exactly 3 bands)"),
    "label_threshold": Param(127, type="integer", minimum=0, maximum=254, section="Imagery",
                             description="a label pixel is change when its value (0..255; 0/1 labels read as "
                             "0/255; colour labels by their largest component, transparent pixels as 0) is "
                             "above this; 0 for class-number labels"),
    # Validation thresholds; defaults: those of damnet.validation.ValidationConfig (not imported
    # here: parse time stays cheap). tests/test_dags.py keeps the two in step.
    "max_misregistration_px": Param(4.0, type="number", exclusiveMinimum=0, section="Validation",
                                    description="largest shift between the dates, in pixels: a pair above "
                                    "it fails the region (pairs without enough evidence are reported, "
                                    "not failed)"),
    "tile_misregistration_severity": Param("warning", type="string", enum=["warning", "critical"],
                                           section="Validation",
                                           description="tiles above the misregistration limit: a warning, or "
                                           "critical (fail the region too)"),
    "max_nodata_fraction": Param(0.5, type="number", minimum=0, maximum=1, section="Validation",
                                 description="largest share of a tile's pixels (inside the scene) without data"),
    "max_mean_nodata_fraction": Param(0.25, type="number", minimum=0, maximum=1, section="Validation",
                                      description="largest share of the region's pixels without data"),
    "mostly": Param(0.95, type="number", exclusiveMinimum=0, maximum=1, section="Validation",
                    description="share of tiles that must pass each per-tile check"),
    "min_tiles": Param(4, type="integer", minimum=0, section="Validation",
                       description="fewer tiles fail the region"),
}

ADAPT_STEPS = steps_template("adapt_steps", {"cpu-small": 60, "cpu": 150, "gpu": 3000})
DEVICE = DEVICE_TEMPLATE


@dag(**region_dag_arguments("damnet_region", __doc__, params))
def damnet_region():
    region = ["--region", "{{ params.region }}"]
    # --bands=VALUE: one argument, so an empty value reads as "not set" (exactly 3 bands)
    ingest = step_task(S, "ingest", [*region, "--imagery", "{{ params.imagery }}",
                                     "--tile-size", "{{ params.tile_size }}", "--bands={{ params.bands }}",
                                     "--label-threshold", "{{ params.label_threshold }}"])
    validate = step_task(S, "validate", [
        *region, "--source-region", "{{ params.source_region }}",
        "--max-misregistration-px", "{{ params.max_misregistration_px }}",
        "--tile-misregistration-severity", "{{ params.tile_misregistration_severity }}",
        "--max-nodata-fraction", "{{ params.max_nodata_fraction }}",
        "--max-mean-nodata-fraction", "{{ params.max_mean_nodata_fraction }}",
        "--mostly", "{{ params.mostly }}", "--min-tiles", "{{ params.min_tiles }}"], retries=0)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def pretrain_enabled(**context) -> bool:
        return bool(context["params"]["pretrain"])

    pretrain = step_task(S, "pretrain", [*region, "--source-region", "{{ params.source_region }}",
                                         "--device", DEVICE], gpu=True)
    adapt = step_task(S, "adapt", [*region, "--source-model", "{{ params.source_model }}",
                                   "--source-region", "{{ params.source_region }}",
                                   "--use-pretrain", "{{ 'yes' if params.pretrain else 'no' }}",
                                   "--restyle", "{{ params.restyle }}",
                                   "--match-gsd", "{{ 'yes' if params.match_gsd else 'no' }}",
                                   "--lambda-adv", "{{ params.lambda_adv }}",
                                   "--steps", ADAPT_STEPS, "--device", DEVICE],
                      gpu=True, trigger_rule=TriggerRule.NONE_FAILED)
    select = step_task(S, "select", [*region, "--budget", "{{ params.label_budget }}",
                                     "--audit", "{{ params.audit }}", "--min-audit", "{{ params.min_audit }}",
                                     "--selector", "{{ params.selector }}",
                                     "--reference", "{{ params.reference }}",
                                     "--max-label-share", "{{ params.max_label_share }}"])
    export = step_task(S, "export-labels", region)

    @task(outlets=[LABELS_PENDING])
    def labels_pending(**context):
        """Record that the region waits for labels: an asset event with the region in its extra."""
        region_name = context["params"]["region"]
        yield Metadata(LABELS_PENDING, {"region": region_name, "store": S.store,
                                        "inbox": f"{S.store.rstrip('/')}/labels/{region_name}"})

    gate = pretrain_enabled()
    ingest >> validate >> gate >> pretrain >> adapt
    validate >> adapt
    adapt >> select >> export >> labels_pending()


damnet_region()
