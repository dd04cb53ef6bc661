"""DAM-Net's region workflow as two Kubeflow pipelines of container components.

    damnet-region     ingest -> validate -> adapt -> select -> export-labels
                      (then the labelers label the selected tiles: hours to days)
    damnet-finetune   [import-labels -> finetune -> evaluate -> promote -> predict] -> report
                      (report is the exit task: it runs whatever happened before it)

The same graph as the Airflow DAGs ``damnet_region`` and ``damnet_finetune``. Every task runs
``damnet <step> --store STORE --region REGION --run-group RUN_ID [options]`` in the project image
(see docs/pipeline.md). Steps hand each other nothing but the store: each one reads its upstream
records under ``STORE/regions/<region>/`` and writes its own, so the order comes from ``.after()``
and there are no kfp artifacts.

This module needs only ``kfp`` and ``kfp-kubernetes`` (the ``.venv-kfp`` venv): it imports nothing
from ``damnet`` or ``components``; tests/test_kfp.py checks every step and option used here
against the real CLI. Compile with::

    .venv-kfp/bin/python -m pipelines.region_pipeline build/kfp          # both pipelines
    .venv-kfp/bin/python -m pipelines.region_pipeline --pipeline region region.yaml
"""

import argparse
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

# Defaults of the image parameters: the tags the Airflow DAGs use (dags/damnet_ops/settings.py).
DEFAULT_IMAGE = "ghcr.io/damnet-ops/damnet:0.1.0"
DEFAULT_GPU_IMAGE = "ghcr.io/damnet-ops/damnet:0.1.0-cuda"
# Pods share no file system: the store must be an object store prefix.
DEFAULT_STORE = "s3://damnet/store"
SOURCE_MODEL = "models:/damnet-source@champion"

# Kubernetes objects the pods read (created with the cluster manifests, never from a pipeline).
S3_CREDENTIALS = "damnet-s3"
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_CREDENTIALS = "damnet-mlflow"  # optional: an MLflow server without authentication needs none
MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CONFIG_MAP = "damnet-config"
CONFIG_KEYS = ("MLFLOW_TRACKING_URI",)
OPTIONAL_CONFIG_KEYS = ("DAMNET_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")

# Pod sizes, as the Airflow step pods (dags/damnet_ops/steps.py): (requests, limits).
CPU_RESOURCES = ({"cpu": "1", "memory": "4Gi"}, {"cpu": "2", "memory": "8Gi"})
GPU_RESOURCES = ({"cpu": "4", "memory": "24Gi"}, {"cpu": "8", "memory": "48Gi"})
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")
GPU_SHM_SIZE = "8Gi"  # memory-backed /dev/shm: the default 64 MiB is too small for torch (k8s GPU template)
GPU_DEVICE = "cuda"  # GPU steps fail fast instead of training on the CPU when no GPU is visible

# Transient failures (S3 or MLflow hiccups, an evicted or preempted pod) are retried; the steps
# are idempotent, so a retry redoes only what is not recorded yet. Steps whose failure is a
# verdict on the input (exit 2: failed expectations, a malformed label export; exit 3: a rejected
# candidate) are not retried: the same input fails the same way.
RETRY = {"num_retries": 2, "backoff_duration": "120s", "backoff_factor": 2.0, "backoff_max_duration": "1800s"}
NO_RETRY_STEPS = ("validate", "import-labels", "promote")

GPU_STEPS = ("adapt", "finetune", "predict")
REGION_STEPS = ("ingest", "validate", "adapt", "select", "export-labels")
FINETUNE_STEPS = ("import-labels", "finetune", "evaluate", "promote", "predict")
FINETUNE_EXIT_STEP = "report"


def _common(step: str, store, region, run_group) -> list:
    return [step, "--store", store, "--region", region, "--run-group", run_group]


# One container component per step. The function name is the step (kfp turns "_" into "-" for
# the task name); the arguments are exactly the step's CLI options (docs/pipeline.md).

@dsl.container_component
def ingest(store: str, region: str, run_group: str, imagery: str, tile_size: int, bands: str,
           label_threshold: int):
    """Tile the region's imagery (empty ``imagery``: STORE/imagery/REGION; empty ``bands``: 3 bands)."""
    # --bands=VALUE in one argument: an empty value reads as "not set", as an empty --imagery does
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("ingest", store, region, run_group), "--imagery", imagery, "--tile-size", tile_size,
        dsl.ConcatPlaceholder(["--bands=", bands]), "--label-threshold", label_threshold])


@dsl.container_component
def validate(store: str, region: str, run_group: str, source_region: str, max_misregistration_px: float,
             tile_misregistration_severity: str, max_nodata_fraction: float, max_mean_nodata_fraction: float,
             mostly: float, min_tiles: int):
    """Great Expectations checks of the tiles; fails the run (exit 2) on bad imagery."""
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("validate", store, region, run_group), "--source-region", source_region,
        "--max-misregistration-px", max_misregistration_px,
        "--tile-misregistration-severity", tile_misregistration_severity,
        "--max-nodata-fraction", max_nodata_fraction, "--max-mean-nodata-fraction", max_mean_nodata_fraction,
        "--mostly", mostly, "--min-tiles", min_tiles])


@dsl.container_component
def adapt(store: str, region: str, run_group: str, source_model: str, source_region: str, steps: int,
          restyle: float, match_gsd: str, lambda_adv: float):
    """Unsupervised domain adaptation of the source model to the region (GPU)."""
    return dsl.ContainerSpec(image=DEFAULT_GPU_IMAGE, command=["damnet"], args=[
        *_common("adapt", store, region, run_group), "--source-model", source_model,
        "--source-region", source_region, "--steps", steps, "--restyle", restyle,
        "--match-gsd", match_gsd, "--lambda-adv", lambda_adv, "--device", GPU_DEVICE])


@dsl.container_component
def select(store: str, region: str, run_group: str, budget: float, audit: float, min_audit: int, selector: str,
           reference: str, max_label_share: float):
    """Pick the tiles to label (micro-label set) and the audit tiles."""
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("select", store, region, run_group), "--budget", budget, "--audit", audit,
        "--min-audit", min_audit, "--selector", selector, "--reference", reference,
        "--max-label-share", max_label_share])


@dsl.container_component
def export_labels(store: str, region: str, run_group: str):
    """Label Studio tasks with pre-annotations for the selected tiles."""
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("export-labels", store, region, run_group)])


@dsl.container_component
def import_labels(store: str, region: str, run_group: str, labels: str):
    """Check and import the labelers' export (empty ``labels``: STORE/labels/REGION)."""
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("import-labels", store, region, run_group), "--labels", labels])


@dsl.container_component
def finetune(store: str, region: str, run_group: str, source_region: str, steps: int):
    """Fine-tune the adapted model on the micro-labels (GPU): the candidate."""
    return dsl.ContainerSpec(image=DEFAULT_GPU_IMAGE, command=["damnet"], args=[
        *_common("finetune", store, region, run_group), "--source-region", source_region,
        "--steps", steps, "--device", GPU_DEVICE])


@dsl.container_component
def evaluate(store: str, region: str, run_group: str, source_region: str):
    """Score candidate and champion on the audit tiles and the source holdout."""
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("evaluate", store, region, run_group), "--source-region", source_region])


@dsl.container_component
def promote(store: str, region: str, run_group: str, margin: float, max_source_drop: float, min_audit_tiles: int,
            min_change_tiles: int, confidence: float):
    """Register the candidate; move ``champion`` only if the gate holds (else exit 3)."""
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("promote", store, region, run_group), "--margin", margin, "--max-source-drop", max_source_drop,
        "--min-audit-tiles", min_audit_tiles, "--min-change-tiles", min_change_tiles,
        "--confidence", confidence])


@dsl.container_component
def predict(store: str, region: str, run_group: str, tile: int):
    """Change maps of the region's scenes with the new champion (GPU)."""
    return dsl.ContainerSpec(image=DEFAULT_GPU_IMAGE, command=["damnet"], args=[
        *_common("predict", store, region, run_group), "--tile", tile, "--device", GPU_DEVICE])


@dsl.container_component
def report(store: str, region: str, run_group: str):
    """The region's HTML report from every record it has."""
    return dsl.ContainerSpec(image=DEFAULT_IMAGE, command=["damnet"], args=[
        *_common("report", store, region, run_group)])


def _step(task: dsl.PipelineTask, step: str, image, gpu_image) -> dsl.PipelineTask:
    """Hardware, image, environment, retries and caching of one step's task."""
    gpu = step in GPU_STEPS
    requests, limits = GPU_RESOURCES if gpu else CPU_RESOURCES
    task.set_container_image(gpu_image if gpu else image)
    task.set_cpu_request(requests["cpu"]).set_cpu_limit(limits["cpu"])
    task.set_memory_request(requests["memory"]).set_memory_limit(limits["memory"])
    if gpu:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm",  # noqa: S108 - a pod volume
                                   medium="Memory", size_limit=GPU_SHM_SIZE)
    # Credentials and cluster settings come from Kubernetes objects, never from parameters.
    kubernetes.use_secret_as_env(task, S3_CREDENTIALS, {k: k for k in S3_CREDENTIAL_KEYS})
    kubernetes.use_secret_as_env(task, MLFLOW_CREDENTIALS, {k: k for k in MLFLOW_CREDENTIAL_KEYS}, optional=True)
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, {k: k for k in CONFIG_KEYS})
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, {k: k for k in OPTIONAL_CONFIG_KEYS}, optional=True)
    task.set_env_variable("PYTHONUNBUFFERED", "1")
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "damnet")
    kubernetes.add_pod_label(task, "damnet/step", step)
    # kfp's cache keys on the task's parameters, but a step's real inputs are store contents
    # (new imagery at the same URI, new labels, a new champion): a cache hit would wrongly skip
    # it. The steps skip themselves ("up to date") on the content hashes of their inputs.
    task.set_caching_options(enable_caching=False)
    if step not in NO_RETRY_STEPS:
        task.set_retry(**RETRY)
    return task


@dsl.pipeline(name="damnet-region", description="DAM-Net: adapt the source model to a new region and "
              "export the tiles to label (ingest, validate, adapt, select, export-labels).")
def region_pipeline(
    region: str,
    imagery: str = "",
    source_model: str = SOURCE_MODEL,
    source_region: str = "source",
    label_budget: float = 0.003,
    audit: float = 0.01,
    min_audit: int = 20,
    max_label_share: float = 0.01,
    selector: str = "combined",
    reference: str = "none",
    tile_size: int = 256,
    bands: str = "",
    label_threshold: int = 127,
    adapt_steps: int = 3000,
    restyle: float = 0.0,
    match_gsd: str = "no",
    lambda_adv: float = 0.001,
    max_misregistration_px: float = 4.0,
    tile_misregistration_severity: str = "warning",
    max_nodata_fraction: float = 0.5,
    max_mean_nodata_fraction: float = 0.25,
    mostly: float = 0.95,
    min_tiles: int = 4,
    store: str = DEFAULT_STORE,
    image: str = DEFAULT_IMAGE,
    gpu_image: str = DEFAULT_GPU_IMAGE,
):
    """The first half of a region: up to the label export.

    Args:
        region: region name (lower-case letters, digits, '-'; at most 40 characters).
        imagery: imagery folder or s3:// prefix; empty: STORE/imagery/REGION.
        source_model: registry URI or model file of the model to adapt.
        source_region: the labelled source region (domain distance, adaptation).
        label_budget: tiles to label: a share of the region (< 1) or a count (>= 1).
        audit: audit tiles: a share (< 1; raised to min_audit) or a count.
        min_audit: fewest audit tiles a share gives (at most half the region): the promotion gate needs
            enough audit tiles to decide.
        max_label_share: refuse a budget above this share of the region's tiles.
        selector: random, entropy, margin, mutual_info, kcenter or combined.
        reference: source: the combined selector also weighs the source model's disagreement; none: off.
        tile_size: tile size in pixels.
        bands: R,G,B band numbers or descriptions, e.g. 3,2,1 or B04,B03,B02; empty: exactly 3 bands.
        label_threshold: a label pixel is change when its value (0..255; 0/1 labels read as 0/255; colour
            labels by their largest component, transparent pixels as 0) is above this; 0 for class-number
            labels.
        adapt_steps: adaptation steps (on a GPU).
        restyle: share of source pairs given the region's band histograms (0: off); MLFT keeps it.
        match_gsd: yes: resample source batches to the region's ground sample distance; MLFT keeps it.
        lambda_adv: weight of the adversarial term in adaptation (MLFT keeps its own).
        max_misregistration_px: validation: largest shift between the dates in pixels; a pair above it fails.
        tile_misregistration_severity: validation: tiles above the shift limit are a warning or critical.
        max_nodata_fraction: validation: largest share of a tile's pixels (inside the scene) without data.
        max_mean_nodata_fraction: validation: largest share of the region's pixels without data.
        mostly: validation: share of tiles that must pass each per-tile check.
        min_tiles: validation: fewer tiles fail the region.
        store: store root, an s3:// prefix (the pods share no file system).
        image: project image of the CPU steps.
        gpu_image: project CUDA image of the GPU steps.
    """
    run_group = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # this run's MLflow region run
    common = {"store": store, "region": region, "run_group": run_group}
    t_ingest = _step(ingest(**common, imagery=imagery, tile_size=tile_size, bands=bands,
                            label_threshold=label_threshold), "ingest", image, gpu_image)
    t_validate = _step(validate(**common, source_region=source_region, max_misregistration_px=max_misregistration_px,
                                tile_misregistration_severity=tile_misregistration_severity,
                                max_nodata_fraction=max_nodata_fraction,
                                max_mean_nodata_fraction=max_mean_nodata_fraction, mostly=mostly,
                                min_tiles=min_tiles), "validate", image, gpu_image)
    t_adapt = _step(adapt(**common, source_model=source_model, source_region=source_region, steps=adapt_steps,
                          restyle=restyle, match_gsd=match_gsd, lambda_adv=lambda_adv),
                    "adapt", image, gpu_image)
    t_select = _step(select(**common, budget=label_budget, audit=audit, min_audit=min_audit, selector=selector,
                            reference=reference, max_label_share=max_label_share), "select", image, gpu_image)
    t_export = _step(export_labels(**common), "export-labels", image, gpu_image)
    t_validate.after(t_ingest)
    t_adapt.after(t_validate)
    t_select.after(t_adapt)
    t_export.after(t_select)


@dsl.pipeline(name="damnet-finetune", description="DAM-Net: import a region's labels, fine-tune, "
              "evaluate, promote the candidate if it beats the champion, map the region, report.")
def finetune_pipeline(
    region: str,
    labels: str = "",
    source_region: str = "source",
    finetune_steps: int = 2000,
    margin: float = 0.01,
    max_source_drop: float = 0.05,
    min_audit_tiles: int = 10,
    min_change_tiles: int = 5,
    confidence: float = 0.9,
    predict_tile: int = 256,
    store: str = DEFAULT_STORE,
    image: str = DEFAULT_IMAGE,
    gpu_image: str = DEFAULT_GPU_IMAGE,
):
    """The second half of a region, once its labels are in the store.

    Args:
        region: region name (lower-case letters, digits, '-'; at most 40 characters).
        labels: Label Studio JSON export or folder of masks; empty: STORE/labels/REGION.
        source_region: the labelled source region.
        finetune_steps: fine-tuning steps (on a GPU).
        margin: promotion gate: the gain's lower bound (90 % paired bootstrap over audit tiles) must exceed
            this; >= 0: a tie never promotes.
        max_source_drop: promotion gate: largest allowed drop of source-holdout F1 against the source model.
        min_audit_tiles: promotion gate: fewer audit tiles: not enough audit evidence, no promotion.
        min_change_tiles: promotion gate: fewer audit tiles with true change: not enough audit evidence.
        confidence: promotion gate: level of the two-sided paired bootstrap interval whose lower bound must
            clear the margin.
        predict_tile: prediction window in pixels (a multiple of 32).
        store: store root, an s3:// prefix (the pods share no file system).
        image: project image of the CPU steps.
        gpu_image: project CUDA image of the GPU steps.
    """
    run_group = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    common = {"store": store, "region": region, "run_group": run_group}
    # The report runs after the others whatever their outcome (Airflow's ALL_DONE): a rejected
    # candidate (promote exits 3, predict does not run) still gets a page saying why.
    t_report = _step(report(**common), FINETUNE_EXIT_STEP, image, gpu_image)
    with dsl.ExitHandler(t_report, name="finetune-and-promote"):
        t_import = _step(import_labels(**common, labels=labels), "import-labels", image, gpu_image)
        t_finetune = _step(finetune(**common, source_region=source_region, steps=finetune_steps),
                           "finetune", image, gpu_image)
        t_evaluate = _step(evaluate(**common, source_region=source_region), "evaluate", image, gpu_image)
        t_promote = _step(promote(**common, margin=margin, max_source_drop=max_source_drop,
                                  min_audit_tiles=min_audit_tiles, min_change_tiles=min_change_tiles,
                                  confidence=confidence), "promote", image, gpu_image)
        t_predict = _step(predict(**common, tile=predict_tile), "predict", image, gpu_image)
        t_finetune.after(t_import)
        t_evaluate.after(t_finetune)
        t_promote.after(t_evaluate)
        t_predict.after(t_promote)


PIPELINES = {"region": ("damnet-region.yaml", region_pipeline),
             "finetune": ("damnet-finetune.yaml", finetune_pipeline)}


def compile(path: str | Path, pipeline=region_pipeline, **defaults) -> Path:
    """Write ``pipeline``'s IR YAML to ``path``; ``defaults`` override parameter defaults."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path), pipeline_parameters=defaults or None)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.region_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder (--pipeline all: damnet-region.yaml and damnet-finetune.yaml in it) "
                   "or the YAML file of the one pipeline")
    p.add_argument("--pipeline", choices=("all", *PIPELINES), default="all")
    p.add_argument("--image", help=f"default of the image parameter (default {DEFAULT_IMAGE})")
    p.add_argument("--gpu-image", help=f"default of the gpu_image parameter (default {DEFAULT_GPU_IMAGE})")
    p.add_argument("--store", help=f"default of the store parameter (default {DEFAULT_STORE})")
    args = p.parse_args(argv)
    if args.store is not None and not args.store.startswith("s3://"):
        p.error(f"--store must be an s3:// prefix (the step pods share no file system), got {args.store!r}")
    defaults = {k: v for k, v in (("image", args.image), ("gpu_image", args.gpu_image), ("store", args.store))
                if v is not None}
    if args.pipeline == "all":
        targets = [(Path(args.out) / name, func) for name, func in PIPELINES.values()]
    else:
        targets = [(Path(args.out), PIPELINES[args.pipeline][1])]
    for path, func in targets:
        print(compile(path, func, **defaults))
    return 0


if __name__ == "__main__":
    sys.exit(main())
