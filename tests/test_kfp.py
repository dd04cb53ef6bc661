"""The Kubeflow pipelines (pipelines/region_pipeline.py): compiled with kfp in its own venv
(.venv-kfp), then their IR checked here: graph, hardware, images, environment, parameters, and
every step and option against the real ``damnet`` CLI, so the pipelines cannot drift from it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KFP_PYTHON = ROOT / ".venv-kfp" / "bin" / "python"
PIPELINES = ROOT / "pipelines"

REGION_STEPS = ["ingest", "validate", "adapt", "select", "export-labels"]
FINETUNE_STEPS = ["import-labels", "finetune", "evaluate", "promote", "predict"]
GPU_STEPS = {"adapt", "finetune", "predict"}
NO_RETRY_STEPS = {"validate", "import-labels", "promote"}  # exit 2 or 3 is a verdict on the input
JOB_ID = "{{$.pipeline_job_uuid}}"
PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")
# Values for what has no default: the region, and the run id kfp fills in at run time.
DUMMIES = {"region": "newtown", JOB_ID: "5b0c3f4e-0000-4000-8000-000000000001"}

WORKFLOWS = json.loads((ROOT / "dags" / "damnet_ops" / "workflows.json").read_text())


def _expected_parameters() -> dict[str, dict]:
    """pipeline -> parameter -> default a run gets: the workflow's parameters (workflows.json)
    with the defaults the real ``damnet`` parser gives their options (the GPU profile's steps;
    yes/no options as text), then store and images. None: no default (the region)."""
    from components.cli import build_parser
    from components.step_options import PROFILE_STEPS

    parser = build_parser()
    out = {}
    for workflow, pipeline in (("region", "damnet-region"), ("finetune", "damnet-finetune")):
        wf = WORKFLOWS["workflows"][workflow]
        expected: dict = {}
        for step, pairs in wf["arguments"].items():
            defaults = vars(parser.parse_args([step, "--region", "newtown"]))
            for flag, name in pairs:
                if not wf["params"][name]["kubeflow"] or name in expected:
                    continue
                value = defaults[flag.lstrip("-").replace("-", "_")]
                if flag == "--steps":
                    value = PROFILE_STEPS[step]["gpu"]
                elif isinstance(value, bool):
                    value = "yes" if value else "no"
                expected[name] = None if name == "region" else value
        images = WORKFLOWS["images"]
        expected.update(store="s3://damnet/store", image=images["cpu"], gpu_image=images["gpu"])
        out[pipeline] = expected
    return out


PARAMETERS = _expected_parameters()


def compile_pipelines(out: Path, *options: str) -> subprocess.CompletedProcess:
    if not KFP_PYTHON.exists():
        pytest.skip(f"{KFP_PYTHON.relative_to(ROOT)} is missing: `make test` creates it (kfp has its own venv)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(KFP_PYTHON), "-m", "pipelines.region_pipeline", *options, str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """pipeline name -> (pipeline spec, kubernetes platform spec) of both compiled pipelines."""
    out = tmp_path_factory.mktemp("kfp")
    started = time.perf_counter()
    proc = compile_pipelines(out)
    assert proc.returncode == 0, proc.stderr
    print(f"compiled in {time.perf_counter() - started:.1f} s: {proc.stdout.split()}")
    result = {}
    for name in PARAMETERS:
        docs = list(yaml.safe_load_all((out / f"{name}.yaml").read_text()))
        assert len(docs) == 2, "the platform spec (kfp-kubernetes) is missing"
        spec, platform = docs
        assert spec["pipelineInfo"]["name"] == name
        result[name] = (spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
    return result


def container_tasks(spec: dict) -> dict[str, tuple[dict, str]]:
    """task name -> (task, name of the DAG holding it), for every container task, sub-DAGs included."""
    found = {}

    def walk(dag_name: str, dag: dict) -> None:
        for name, task in dag["tasks"].items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(task["componentRef"]["name"], component["dag"])
            else:
                found[name] = (task, dag_name)

    walk("root", spec["root"]["dag"])
    return found


def executor(spec: dict, task: dict) -> tuple[str, dict]:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return label, spec["deploymentSpec"]["executors"][label]["container"]


def resolve(spec: dict, task: dict, input_name: str, values: dict | None = None) -> str:
    """The command-line text of a task input, with the pipeline's defaults (dummies where none)
    or the run's ``values`` (pipeline parameter -> value)."""
    binding = task["inputs"]["parameters"][input_name]
    if "runtimeValue" in binding:
        value = binding["runtimeValue"]["constant"]
        return DUMMIES.get(value, value)
    # Inside a sub-DAG (the exit handler) pipeline inputs arrive as "pipelinechannel--<name>".
    name = binding["componentInputParameter"].removeprefix("pipelinechannel--")
    definition = spec["root"]["inputDefinitions"]["parameters"][name]
    if values and name in values:
        return str(values[name])
    if "defaultValue" not in definition:
        return DUMMIES[name]
    value = definition["defaultValue"]
    return str(int(value)) if definition["parameterType"] == "NUMBER_INTEGER" else str(value)


def command_line(spec: dict, task: dict, values: dict | None = None) -> list[str]:
    """The task's argv as kfp's launcher builds it: placeholders filled in, ``{"Concat": [...]}``
    arguments (``dsl.ConcatPlaceholder``, e.g. ``--bands=VALUE``) joined."""
    _, container = executor(spec, task)

    def text(arg: str) -> str:
        m = PLACEHOLDER.match(arg)
        if m:
            return resolve(spec, task, m.group(1), values)
        if arg.startswith('{"Concat"'):
            return "".join(text(part) for part in json.loads(arg)["Concat"])
        return arg

    return [text(arg) for arg in container["args"]]


def test_the_pipeline_module_imports_nothing_from_the_project():
    for path in PIPELINES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("damnet", "components"), f"{path.name} imports {name}"


def test_region_pipeline_runs_the_steps_in_order(compiled):
    spec, _ = compiled["damnet-region"]
    tasks = container_tasks(spec)
    assert sorted(tasks) == sorted(REGION_STEPS)
    for before, step in zip([None, *REGION_STEPS], REGION_STEPS, strict=False):
        task, dag = tasks[step]
        assert dag == "root"
        assert task.get("dependentTasks", []) == ([before] if before else []), step


def test_finetune_pipeline_runs_the_steps_in_order_and_always_reports(compiled):
    spec, _ = compiled["damnet-finetune"]
    tasks = container_tasks(spec)
    assert sorted(tasks) == sorted([*FINETUNE_STEPS, "report"])
    dags = {tasks[s][1] for s in FINETUNE_STEPS}
    assert len(dags) == 1 and dags != {"root"}, "the fine-tune steps sit in one exit-handler group"
    for before, step in zip([None, *FINETUNE_STEPS], FINETUNE_STEPS, strict=False):
        assert tasks[step][0].get("dependentTasks", []) == ([before] if before else []), step
    report, dag = tasks["report"]
    group = next(name for name, t in spec["root"]["dag"]["tasks"].items() if t["componentRef"]["name"] in dags)
    assert dag == "root" and report["dependentTasks"] == [group]
    # Airflow's ALL_DONE: the report runs after a rejected candidate (promote exits 3) too.
    assert report["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_gpu_on_the_training_and_prediction_steps_only_and_resources_everywhere(compiled):
    seen = set()
    for spec, platform in compiled.values():
        for step, (task, _) in container_tasks(spec).items():
            label, container = executor(spec, task)
            resources, k8s = container["resources"], platform[label]
            for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
                assert key in resources, (step, key)
            args = container["args"]
            if step in GPU_STEPS:
                seen.add(step)
                assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", step
                assert resources["accelerator"]["resourceCount"] == "1", step
                assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
                assert args[args.index("--device") + 1] == "cuda", step
                shm = {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "8Gi"}
                assert shm in k8s["emptyDirMounts"], step
            else:
                assert "accelerator" not in resources, step
                assert not {"nodeSelector", "tolerations", "emptyDirMounts"} & set(k8s), step
                assert "cuda" not in args, step
    assert seen == GPU_STEPS


def test_every_task_runs_damnet_step_with_store_region_and_the_run_id(compiled):
    for spec, _ in compiled.values():
        for step, (task, _) in container_tasks(spec).items():
            _, container = executor(spec, task)
            assert container["command"] == ["damnet"]
            args = container["args"]
            assert args[0] == step
            for option, input_name in (("--store", "store"), ("--region", "region"), ("--run-group", "run_group")):
                assert args.count(option) == 1, (step, option)
                assert args[args.index(option) + 1] == f"{{{{$.inputs.parameters['{input_name}']}}}}", (step, option)
            assert task["inputs"]["parameters"]["region"]["componentInputParameter"].endswith("region")
            assert task["inputs"]["parameters"]["store"]["componentInputParameter"].endswith("store")
            assert task["inputs"]["parameters"]["run_group"] == {"runtimeValue": {"constant": JOB_ID}}
            assert "--force" not in args, "a retry must not redo recorded work"


def test_parameters_and_their_defaults(compiled):
    for name, expected in PARAMETERS.items():
        spec, _ = compiled[name]
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert set(params) == set(expected), name
        for param, default in expected.items():
            if default is None:  # a run must name its region
                assert "defaultValue" not in params[param] and not params[param].get("isOptional"), param
            else:
                assert params[param]["defaultValue"] == default, (name, param)
            assert params[param].get("description"), (name, param)


def test_images_are_parameters_cpu_and_cuda(compiled):
    for spec, _ in compiled.values():
        defaults = {p: d.get("defaultValue") for p, d in spec["root"]["inputDefinitions"]["parameters"].items()}
        for step, (task, _) in container_tasks(spec).items():
            _, container = executor(spec, task)
            m = PLACEHOLDER.match(container["image"])
            assert m, f"{step}: the image is not the image parameter: {container['image']}"
            assert resolve(spec, task, m.group(1)) == defaults["gpu_image" if step in GPU_STEPS else "image"], step


def test_credentials_and_settings_come_from_kubernetes_objects(compiled):
    for spec, platform in compiled.values():
        for step, (task, _) in container_tasks(spec).items():
            label, container = executor(spec, task)
            k8s = platform[label]
            secrets = {(s["secretName"], e["secretKey"], e["envVar"], s["optional"])
                       for s in k8s["secretAsEnv"] for e in s["keyToEnv"]}
            assert ("damnet-s3", "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", False) in secrets, step
            assert ("damnet-s3", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", False) in secrets, step
            assert ("damnet-mlflow", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_PASSWORD", True) in secrets, step
            config = {(c["configMapName"], e["configMapKey"], e["envVar"], c["optional"])
                      for c in k8s["configMapAsEnv"] for e in c["keyToEnv"]}
            assert ("damnet-config", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", False) in config, step
            assert ("damnet-config", "DAMNET_S3_ENDPOINT_URL", "DAMNET_S3_ENDPOINT_URL", True) in config, step
            assert k8s["podMetadata"]["labels"]["damnet/step"] == step
            # Nothing secret in the pipeline itself.
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"}, step


def test_no_kfp_caching_and_retries_except_on_verdicts(compiled):
    for spec, _ in compiled.values():
        for step, (task, _) in container_tasks(spec).items():
            assert "cachingOptions" in task and not task["cachingOptions"].get("enableCache"), step
            if step in NO_RETRY_STEPS:
                assert "retryPolicy" not in task, step
            else:
                assert task["retryPolicy"]["maxRetryCount"] >= 1, step
                assert task["retryPolicy"]["backoffDuration"] != "0s", step


def test_every_step_and_option_is_accepted_by_the_real_cli(compiled):
    """Each task's command line, with the pipeline defaults filled in, parses with `damnet`'s own
    parser, and each option is spelt in full (argparse would accept an abbreviation)."""
    from components.cli import build_parser

    parser = build_parser()
    steps = next(a for a in parser._actions if a.dest == "step").choices
    checked = set()
    for spec, _ in compiled.values():
        for step, (task, _) in container_tasks(spec).items():
            argv = command_line(spec, task)
            assert argv[0] in steps, f"no `damnet {argv[0]}`"
            known = steps[step]._option_string_actions
            for arg in argv[1:]:
                if arg.startswith("--"):
                    option = arg.split("=", 1)[0]  # --bands=VALUE
                    assert option in known, f"damnet {step} has no option {option}"
            try:
                ns = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"damnet refuses: {' '.join(argv)}")
            assert (ns.step, ns.region, ns.run_group) == (step, "newtown", DUMMIES[JOB_ID])
            checked.add(step)
    assert checked == {*REGION_STEPS, *FINETUNE_STEPS, "report"}


def test_compile_command_sets_image_and_store_defaults_and_refuses_a_local_store(tmp_path):
    out = tmp_path / "region.yaml"
    proc = compile_pipelines(out, "--pipeline", "region", "--image", "reg.example/damnet:2",
                             "--gpu-image", "reg.example/damnet:2-cuda", "--store", "s3://bucket/damnet")
    assert proc.returncode == 0, proc.stderr
    params = yaml.safe_load_all(out.read_text()).__next__()["root"]["inputDefinitions"]["parameters"]
    assert params["image"]["defaultValue"] == "reg.example/damnet:2"
    assert params["gpu_image"]["defaultValue"] == "reg.example/damnet:2-cuda"
    assert params["store"]["defaultValue"] == "s3://bucket/damnet"
    proc = compile_pipelines(tmp_path / "x.yaml", "--pipeline", "region", "--store", "runs/store")
    assert proc.returncode == 2 and "s3://" in proc.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_the_region_pipeline_adapts_with_the_engines_default_alignment():
    from damnet.train import MODES

    region = PARAMETERS["damnet-region"]  # checked against the compiled spec above
    assert region["restyle"] == MODES["adapt"].restyle
    assert region["match_gsd"] == ("yes" if MODES["adapt"].match_gsd else "no")
    assert region["lambda_adv"] == MODES["adapt"].lambda_adv


VALIDATION_PARAMS = ("max_misregistration_px", "tile_misregistration_severity", "max_nodata_fraction",
                     "max_mean_nodata_fraction", "mostly", "min_tiles")


def test_the_region_pipeline_validates_with_the_librarys_thresholds(compiled):
    """The validation thresholds are pipeline parameters with the library's defaults, and the
    validate step gets each of them as its CLI option."""
    from components.cli import build_parser
    from damnet.validation import ValidationConfig

    defaults = ValidationConfig()
    region = PARAMETERS["damnet-region"]  # checked against the compiled spec above
    assert {n: region[n] for n in VALIDATION_PARAMS} == {n: getattr(defaults, n) for n in VALIDATION_PARAMS}
    spec, _ = compiled["damnet-region"]
    task, _ = container_tasks(spec)["validate"]
    ns = build_parser().parse_args(command_line(spec, task))
    assert {n: getattr(ns, n) for n in VALIDATION_PARAMS} == {n: getattr(defaults, n) for n in VALIDATION_PARAMS}
    for name in VALIDATION_PARAMS:  # bound to the pipeline parameter, not a constant
        assert task["inputs"]["parameters"][name]["componentInputParameter"] == name


def _bound(task: dict, names) -> None:
    for name in names:  # bound to the pipeline parameter, not a constant
        assert task["inputs"]["parameters"][name]["componentInputParameter"].removeprefix(
            "pipelinechannel--") == name, name


def test_the_region_pipeline_ingests_and_selects_with_the_steps_defaults(compiled):
    """bands, label_threshold and min_audit are pipeline parameters with the steps' defaults, and
    other values reach the CLI (an empty bands is "not set": exactly 3 bands)."""
    from components.cli import build_parser
    from components.ingest import config_from
    from damnet.imagery import DEFAULT_LABEL_THRESHOLD
    from damnet.select import DEFAULT_MIN_AUDIT

    region = PARAMETERS["damnet-region"]  # checked against the compiled spec above
    assert (region["bands"], region["label_threshold"], region["min_audit"]) == (
        "", DEFAULT_LABEL_THRESHOLD, DEFAULT_MIN_AUDIT)
    parser = build_parser()
    spec, _ = compiled["damnet-region"]
    tasks = container_tasks(spec)
    ingest, select = tasks["ingest"][0], tasks["select"][0]
    _bound(ingest, ("bands", "label_threshold"))
    _bound(select, ("audit", "min_audit"))
    argv = command_line(spec, ingest)
    assert "--bands=" in argv
    config = config_from(parser.parse_args(argv))
    assert (config.bands, config.label_threshold) == (None, DEFAULT_LABEL_THRESHOLD)
    config = config_from(parser.parse_args(command_line(spec, ingest, {"bands": "B04,B03,B02", "label_threshold": 0})))
    assert (config.bands, config.label_threshold) == (("B04", "B03", "B02"), 0)
    ns = parser.parse_args(command_line(spec, select))
    assert (ns.audit, ns.min_audit) == (region["audit"], DEFAULT_MIN_AUDIT)
    ns = parser.parse_args(command_line(spec, select, {"audit": 0.02, "min_audit": 35}))
    assert (ns.audit, ns.min_audit) == (0.02, 35)


GATE_PARAMS = ("margin", "max_source_drop", "min_audit_tiles", "min_change_tiles", "confidence")


def test_the_finetune_pipeline_promotes_with_the_gates_defaults(compiled):
    from components.cli import build_parser
    from damnet.registry import Evidence

    parser = build_parser()
    defaults = parser.parse_args(["promote", "--region", "newtown"])
    expected = {n: getattr(defaults, n) for n in GATE_PARAMS}
    ev = Evidence()
    assert (expected["min_audit_tiles"], expected["min_change_tiles"], expected["confidence"]) == (
        ev.min_tiles, ev.min_change_tiles, ev.confidence)
    finetune = PARAMETERS["damnet-finetune"]  # checked against the compiled spec above
    assert {n: finetune[n] for n in GATE_PARAMS} == expected
    spec, _ = compiled["damnet-finetune"]
    task, _ = container_tasks(spec)["promote"]
    _bound(task, GATE_PARAMS)
    ns = parser.parse_args(command_line(spec, task))
    assert {n: getattr(ns, n) for n in GATE_PARAMS} == expected
    stricter = {"margin": 0.03, "max_source_drop": 0.02, "min_audit_tiles": 30, "min_change_tiles": 12,
                "confidence": 0.95}
    ns = parser.parse_args(command_line(spec, task, stricter))
    assert {n: getattr(ns, n) for n in GATE_PARAMS} == stricter
