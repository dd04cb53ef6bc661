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

The pipeline parameters (defaults, descriptions) and each step's options come from
``dags/damnet_ops/workflows.json``, generated from the steps' own option declarations
(components/spec.py), as the Airflow DAGs' Params do. This module needs only ``kfp`` and
``kfp-kubernetes`` (the ``.venv-kfp`` venv): it imports nothing from ``damnet`` or
``components``; tests/test_kfp.py checks every step and option used here against the real CLI.
Compile with::

    .venv-kfp/bin/python -m pipelines.region_pipeline build/kfp          # both pipelines
    .venv-kfp/bin/python -m pipelines.region_pipeline --pipeline region region.yaml
"""

import argparse
import inspect
import json
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

SPEC = json.loads((Path(__file__).resolve().parents[1] / "dags" / "damnet_ops" / "workflows.json").read_text())
DEFAULT_IMAGE = SPEC["images"]["cpu"]
DEFAULT_GPU_IMAGE = SPEC["images"]["gpu"]
# Pods share no file system: the store must be an object store prefix.
DEFAULT_STORE = "s3://damnet/store"

# Kubernetes objects the pods read (created with the cluster manifests, never from a pipeline).
S3_CREDENTIALS = "damnet-s3"
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_CREDENTIALS = "damnet-mlflow"  # optional: an MLflow server without authentication needs none
MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CONFIG_MAP = "damnet-config"
CONFIG_KEYS = ("MLFLOW_TRACKING_URI",)
OPTIONAL_CONFIG_KEYS = ("DAMNET_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")

# Pod sizes, as the Airflow step pods: (requests, limits).
CPU_RESOURCES = tuple(SPEC["resources"]["cpu"])
GPU_RESOURCES = tuple(SPEC["resources"]["gpu"])
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")
GPU_SHM_SIZE = "8Gi"  # memory-backed /dev/shm: the default 64 MiB is too small for torch (k8s GPU template)
GPU_DEVICE = SPEC["profiles"]["gpu"]  # GPU steps fail fast instead of training on the CPU when no GPU is visible
PROFILE = "gpu"  # the compute profile of every pipeline run: steps per profile take its defaults

# Transient failures (S3 or MLflow hiccups, an evicted or preempted pod) are retried; the steps
# are idempotent, so a retry redoes only what is not recorded yet. Steps whose failure is a
# verdict on the input (exit 2: failed expectations, a malformed label export; exit 3: a rejected
# candidate) are not retried: the same input fails the same way.
RETRY = {"num_retries": 2, "backoff_duration": "120s", "backoff_factor": 2.0, "backoff_max_duration": "1800s"}
NO_RETRY_STEPS = ("validate", "import-labels", "promote")

GPU_STEPS = tuple(SPEC["gpu_steps"])
REGION_STEPS = ("ingest", "validate", "adapt", "select", "export-labels")
FINETUNE_STEPS = ("import-labels", "finetune", "evaluate", "promote", "predict")
FINETUNE_EXIT_STEP = "report"
TYPES = {"str": str, "int": int, "float": float, "bool": str}  # yes/no options: "yes" or "no"
COMMON = ("store", "region", "run_group")


def _params(workflow: str) -> dict[str, dict]:
    """The workflow's parameters that a Kubeflow run takes (workflows.json)."""
    return {name: p for name, p in SPEC["workflows"][workflow]["params"].items() if p["kubeflow"]}


def _default(p: dict):
    if "profiles" in p:
        return p["profiles"][PROFILE]
    if p["kind"] == "bool":
        return "yes" if p["default"] else "no"
    return p["default"]


def _signature(names: list[tuple[str, type, object]]) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(n, kind, annotation=t, **({} if d is _REQUIRED else {"default": d}))
                              for n, t, d in names])


_REQUIRED = object()


def step_component(workflow: str, step: str):
    """One container component: ``damnet STEP --store .. --region .. --run-group .. [--flag=VALUE ...]``
    with an input per workflow parameter the step takes (each option as ``--flag=VALUE``, one
    argument, so an empty value reads as "not set")."""
    params = _params(workflow)
    flags = [(flag, name) for flag, name in SPEC["workflows"][workflow]["arguments"][step]
             if name in params and name != "region"]
    inputs = [*COMMON, *(name for _, name in flags)]
    gpu = step in GPU_STEPS

    def container(*values):
        v = dict(zip(inputs, values, strict=True))
        args = [step, "--store", v["store"], "--region", v["region"], "--run-group", v["run_group"]]
        args += [dsl.ConcatPlaceholder([f"{flag}=", v[name]]) for flag, name in flags]
        if gpu:
            args += ["--device", GPU_DEVICE]
        return dsl.ContainerSpec(image=DEFAULT_GPU_IMAGE if gpu else DEFAULT_IMAGE, command=["damnet"], args=args)

    container.__name__ = container.__qualname__ = step.replace("-", "_")
    container.__doc__ = f"damnet {step} (see docs/pipeline.md)."
    container.__signature__ = _signature(
        [(n, str, _REQUIRED) for n in COMMON] + [(name, TYPES[params[name]["kind"]], _REQUIRED) for _, name in flags])
    return dsl.container_component(container)


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


def _pipeline_signature(workflow: str) -> tuple[inspect.Signature, str]:
    """The pipeline function's parameters (the workflow's, then store and images) and its docstring."""
    params = _params(workflow)
    names = [("region", str, _REQUIRED)] + [(n, TYPES[p["kind"]], _default(p)) for n, p in params.items()
                                              if n != "region"]
    names += [("store", str, DEFAULT_STORE), ("image", str, DEFAULT_IMAGE), ("gpu_image", str, DEFAULT_GPU_IMAGE)]
    docs = {n: (f"{p['section']}: " if p["section"] else "") + p["description"] for n, p in params.items()}
    docs.update(store="store root, an s3:// prefix (the pods share no file system).",
                image="project image of the CPU steps.", gpu_image="project CUDA image of the GPU steps.")
    args = "\n".join(f"    {n}: {docs[n]}" for n, _, _ in names)
    return _signature(names), f"Args:\n{args}\n"


def _wire(workflow: str, steps: tuple[str, ...], values: dict, image, gpu_image) -> list[dsl.PipelineTask]:
    """One task per step, in order; each runs after the one before it."""
    tasks: list[dsl.PipelineTask] = []
    for step in steps:
        component = COMPONENTS[workflow][step]
        names = list(inspect.signature(component.pipeline_func).parameters)
        task = _step(component(**{n: values[n] for n in names}), step, image, gpu_image)
        if tasks:
            task.after(tasks[-1])
        tasks.append(task)
    return tasks


def _values(workflow: str, args: tuple) -> dict:
    names = list(_pipeline_signature(workflow)[0].parameters)
    return {**dict(zip(names, args, strict=True)), "run_group": dsl.PIPELINE_JOB_ID_PLACEHOLDER}


def _region(*args):
    """The first half of a region: up to the label export."""
    v = _values("region", args)
    _wire("region", REGION_STEPS, v, v["image"], v["gpu_image"])


def _finetune(*args):
    """The second half of a region, once its labels are in the store."""
    v = _values("finetune", args)
    # The report runs after the others whatever their outcome (Airflow's ALL_DONE): a rejected
    # candidate (promote exits 3, predict does not run) still gets a page saying why.
    report = COMPONENTS["finetune"][FINETUNE_EXIT_STEP]
    t_report = _step(report(store=v["store"], region=v["region"], run_group=v["run_group"]), FINETUNE_EXIT_STEP,
                     v["image"], v["gpu_image"])
    with dsl.ExitHandler(t_report, name="finetune-and-promote"):
        _wire("finetune", FINETUNE_STEPS, v, v["image"], v["gpu_image"])


COMPONENTS = {"region": {s: step_component("region", s) for s in REGION_STEPS},
              "finetune": {s: step_component("finetune", s) for s in (*FINETUNE_STEPS, FINETUNE_EXIT_STEP)}}
for _func, _workflow in ((_region, "region"), (_finetune, "finetune")):
    _func.__signature__, _args = _pipeline_signature(_workflow)  # type: ignore[attr-defined]
    _func.__doc__ = f"{_func.__doc__}\n\n{_args}"
region_pipeline = dsl.pipeline(
    name="damnet-region", description="DAM-Net: adapt the source model to a new region and export the tiles to "
    "label (ingest, validate, adapt, select, export-labels).")(_region)
finetune_pipeline = dsl.pipeline(name="damnet-finetune", description="DAM-Net: import a region's labels, fine-tune, "
                                 "evaluate, promote the candidate if it beats the champion, map the region, "
                                 "report.")(_finetune)


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
