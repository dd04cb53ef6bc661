"""The Airflow DAGs: they parse cheaply, render correct pods, refuse bad triggers, and run a region."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
DAG_IDS = {"damnet_region", "damnet_finetune", "damnet_nightly"}


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """A migrated SQLite Airflow database; the environment Airflow reads at import."""
    home = tmp_path_factory.mktemp("airflow")
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.syspath_prepend(str(DAGS))
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                       capture_output=True, env={**os.environ, **env}, timeout=600)
        yield home


def dagbag(monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag


def test_dag_files_import_nothing_heavy_and_parse_fast():
    code = ("import sys, time; t = time.perf_counter();"
            "import damnet_region, damnet_finetune, damnet_nightly; dt = time.perf_counter() - t;"
            "heavy = [m for m in ('torch', 'damnet', 'mlflow', 'components', 'rasterio', 'great_expectations')"
            " if m in sys.modules]; print(dt, heavy)")
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONPATH": str(DAGS)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env).stdout.split(maxsplit=1)
    print(f"DAG files imported in {float(out[0]):.2f} s (airflow.sdk included)")
    assert out[1].strip() == "[]"


def test_every_dag_parses_without_errors(airflow_home, monkeypatch):
    started = time.perf_counter()
    bag = dagbag(monkeypatch, DAMNET_EXECUTION="local")
    print(f"DagBag of {len(bag.dags)} DAGs in {time.perf_counter() - started:.2f} s")
    assert set(bag.dag_ids) == DAG_IDS
    region = bag.get_dag("damnet_region")
    assert [t.task_id for t in region.topological_sort()][:2] == ["ingest", "validate"]
    assert region.get_task("adapt").upstream_task_ids == {"validate", "pretrain"}
    assert bag.get_dag("damnet_nightly").timetable.expression == "0 2 * * *"


def _pod(task):
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(task.build_pod_request_obj(dry_run=True))


def test_kubernetes_mode_renders_gpu_pods_for_training_and_cpu_pods_for_the_rest(airflow_home, monkeypatch):
    bag = dagbag(monkeypatch, DAMNET_EXECUTION="kubernetes", DAMNET_IMAGE="reg.example/damnet:1.2.3",
                 DAMNET_GPU_IMAGE="reg.example/damnet:1.2.3-cuda", DAMNET_NAMESPACE="damnet-test",
                 DAMNET_STORE="s3://damnet-test/store")
    region, finetune = bag.get_dag("damnet_region"), bag.get_dag("damnet_finetune")
    for dag, task_id in ((region, "adapt"), (finetune, "finetune"), (finetune, "predict")):
        pod = _pod(dag.get_task(task_id))
        spec, c = pod["spec"], pod["spec"]["containers"][0]
        assert pod["metadata"]["namespace"] == "damnet-test"
        assert c["image"] == "reg.example/damnet:1.2.3-cuda"
        assert c["command"] == ["damnet"] and c["args"][0] == task_id
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"secretRef": {"name": "damnet-s3"}} in c["envFrom"]
        assert not any("AWS_SECRET" in json.dumps(e) for e in c.get("env", []))
        assert spec["serviceAccountName"] == "damnet-step"
    pod = _pod(region.get_task("select"))
    c = pod["spec"]["containers"][0]
    assert c["image"] == "reg.example/damnet:1.2.3" and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "tolerations" not in pod["spec"] or not pod["spec"]["tolerations"]
    assert c["args"][:3] == ["select", "--run-group", "{{ run_id }}"]
    # The nightly scan returns what the DAG maps over: it runs on the worker (a pod's XCom
    # would need pods/exec, which the pod launcher's Role leaves out), against the S3 store.
    scan = bag.get_dag("damnet_nightly").get_task("scan")
    assert (scan.step, scan.returns_json) == ("scan", True)
    assert scan.arguments[:2] == ["--store", "s3://damnet-test/store"] and scan.arguments[-1] == "--json"


def test_kubernetes_mode_refuses_a_store_the_pods_cannot_see(airflow_home, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("DAMNET_EXECUTION", "kubernetes")
    monkeypatch.setenv("DAMNET_STORE", "/srv/damnet")
    bag = DagBag(dag_folder=str(DAGS))
    assert set(bag.import_errors) == {str(DAGS / f"{d}.py") for d in DAG_IDS}
    assert all("needs DAMNET_STORE=s3://" in e and "'/srv/damnet'" in e for e in bag.import_errors.values())


@pytest.mark.parametrize("conf, field", [({"region": "../x"}, "region"), ({"label_budget": 0}, "label_budget"),
                                         ({"selector": "best"}, "selector"), ({"imagery": "x; rm -rf /"}, "imagery"),
                                         ({"restyle": 1.5}, "restyle"), ({"lambda_adv": -1}, "lambda_adv"),
                                         ({"reference": "oracle"}, "reference")])
def test_a_bad_trigger_is_refused_by_param_validation(airflow_home, monkeypatch, conf, field):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag("damnet_region")
    with pytest.raises(ParamValidationError, match=field):
        dag.test(run_conf=conf)


@pytest.mark.slow
def test_the_main_job_runs_the_region_dag_then_the_finetune_dag_end_to_end(tmp_path):
    """``damnet demo`` (the README's first command) on tiny data: real DAGs via dag.test() on a
    migrated SQLite Airflow DB, MLflow on SQLite, the simulated labeler between the two runs."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DAMNET_", "MLFLOW_"))}
    result = subprocess.run(
        [sys.executable, "-m", "components.cli", "demo", "--out", str(out), "--scenes", "1", "--size", "256",
         "--tile-size", "64", "--budget", "2", "--audit", "4", "--max-label-share", "0.5",
         "--source-steps", "20", "--adapt-steps", "6", "--finetune-steps", "8"],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "demo.json").read_text())
    region, finetune = summary["region_run"], summary["finetune_run"]
    assert region["state"] == "success", region
    assert region["tasks"]["pretrain"] == "skipped" and region["tasks"]["labels_pending"] == "success"
    assert {region["tasks"][t] for t in ("ingest", "validate", "adapt", "select", "export_labels")} == {"success"}
    assert finetune["state"] == "success", finetune
    for t in ("wait_for_labels", "import_labels", "finetune", "evaluate", "report"):
        assert finetune["tasks"][t] == "success", finetune
    # A refused candidate is a verdict: promote and predict end skipped, the run succeeds.
    assert finetune["tasks"]["promote"] == ("success" if summary["promoted"] else "skipped"), finetune
    assert finetune["tasks"]["steps_failed"] == "skipped"
    assert Path(summary["report"]).exists()
    assert "Region report:" in result.stdout and "mlflow ui --backend-store-uri" in result.stdout
    for n in range(1, 8):  # progress of every stage is shown
        assert f"[{n}/7]" in result.stdout
    # Promotion is the gate's call on a tiny model; either way it is recorded on the version.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    try:
        # The newest version (champion if promoted, challenger if refused: damnet/registry.py).
        client = mlflow.MlflowClient()
        version = max(client.search_model_versions("name='damnet-newtown'"), key=lambda v: int(v.version))
        alias = "champion" if summary["promoted"] else "challenger"
        assert client.get_model_version_by_alias("damnet-newtown", alias).version == version.version
        assert version.tags["damnet.decision"] == ("promoted" if summary["promoted"] else "rejected")
        exp = mlflow.get_experiment_by_name("damnet/newtown")
        parents = mlflow.search_runs([exp.experiment_id], filter_string="tags.`damnet.kind` = 'region'",
                                     output_format="list")
        assert len(parents) == 2  # one region run per DAG run
    finally:
        mlflow.set_tracking_uri(None)


def _write_record(store: Path, region: str, step: str, **fields) -> None:
    path = store / "regions" / region / "steps" / f"{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": "k", "outputs": {}, **fields}))


def test_nightly_scan_finds_new_imagery_arrived_labels_and_champions(tmp_path, capsys):
    from components.cli import main
    from components.records import file_digest, tree_digest
    from components.scan import scan_store

    store = tmp_path / "store"
    for region in ("source", "fresh", "labelled", "steady"):
        (store / "imagery" / region / "pre").mkdir(parents=True)
        (store / "imagery" / region / "pre" / "a.tif").write_bytes(region.encode())
    for region in ("labelled", "steady"):
        _write_record(store, region, "ingest",
                      inputs={"imagery": {"digest": tree_digest(str(store / "imagery" / region))}})
        _write_record(store, region, "export-labels")
    (store / "labels" / "labelled").mkdir(parents=True)
    (store / "labels" / "labelled" / "export.json").write_text("[]")
    (store / "labels" / "steady").mkdir(parents=True)
    (store / "labels" / "steady" / "export.json").write_text("[1]")
    digest = file_digest(str(store / "labels" / "steady" / "export.json"))
    _write_record(store, "steady", "import-labels", inputs={"labels": {"digest": digest}})
    _write_record(store, "steady", "promote")

    # A region ingested from imagery elsewhere, with its own tile size.
    elsewhere = tmp_path / "drop" / "harbour"
    (elsewhere / "pre").mkdir(parents=True)
    (elsewhere / "pre" / "a.tif").write_bytes(b"harbour")
    _write_record(store, "harbour", "ingest", params={"tiling": {"size": 512, "bands": [3, 2, 1],
                                                                 "label_threshold": 0}},
                  inputs={"imagery": {"uri": str(elsewhere), "digest": tree_digest(str(elsewhere))}})
    # A region whose imagery is gone is left alone (a run would only fail).
    _write_record(store, "vanished", "ingest", inputs={"imagery": {"uri": str(tmp_path / "gone"), "digest": "x"}})

    found = scan_store(str(store))
    assert found == {"new_imagery": ["fresh"], "labels_ready": ["labelled"], "rescore": ["steady"],
                     "conf": {"fresh": {"region": "fresh"}}}
    # The step the nightly DAG runs: the same result, as its last line.
    capsys.readouterr()
    assert main(["scan", "--store", str(store), "--run-group", "r1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == found
    assert main(["scan", "--store", str(store), "--source-regions", "source,fresh"]) == 0
    assert "new imagery: -\nlabels arrived: labelled\nchampions to re-score: steady" in capsys.readouterr().out
    # New imagery under a region that was ingested before is new again, and the region is
    # re-run the way it was ingested.
    (store / "imagery" / "steady" / "pre" / "b.tif").write_bytes(b"more")
    (elsewhere / "pre" / "b.tif").write_bytes(b"more")
    found = scan_store(str(store))
    assert found["new_imagery"] == ["fresh", "harbour", "steady"]
    assert found["conf"]["harbour"] == {"region": "harbour", "imagery": str(elsewhere), "tile_size": 512,
                                        "bands": "3,2,1", "label_threshold": 0}


def test_nightly_dag_starts_a_region_run_for_new_imagery(airflow_home, tmp_path, monkeypatch):
    store = tmp_path / "store"
    (store / "imagery" / "fresh" / "pre").mkdir(parents=True)
    (store / "imagery" / "fresh" / "pre" / "a.tif").write_bytes(b"x")
    bag = dagbag(monkeypatch, DAMNET_EXECUTION="local", DAMNET_STORE=str(store))
    run = bag.get_dag("damnet_nightly").test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states[("start_region_runs", 0)] == "success"
    from airflow.models import DagRun

    triggered = DagRun.find(dag_id="damnet_region")
    assert any(r.conf == {"region": "fresh"} for r in triggered)


def test_the_labels_trigger_fires_when_labels_arrive(tmp_path, monkeypatch):
    import asyncio

    monkeypatch.syspath_prepend(str(DAGS))
    from damnet_ops.labels import LabelsArrivedTrigger

    trigger = LabelsArrivedTrigger(str(tmp_path), "newtown", poll_seconds=0.05)
    classpath, kwargs = trigger.serialize()
    assert classpath == "damnet_ops.labels.LabelsArrivedTrigger" and kwargs["region"] == "newtown"

    async def scenario():
        events = trigger.run()
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # no labels yet: still polling
        inbox = tmp_path / "labels" / "newtown"
        inbox.mkdir(parents=True)
        (inbox / "export.json").write_text("[]")
        return await asyncio.wait_for(waiting, 5)

    event = asyncio.run(scenario())
    assert event.payload == {"labels": str(tmp_path / "labels" / "newtown" / "export.json")}


def test_labels_status_says_whether_and_where_the_labels_came_back(tmp_path, capsys):
    from components.cli import main

    def status(*extra: str) -> str:
        assert main(["labels-status", "--store", str(tmp_path), "--region", "newtown", *extra]) == 0
        return capsys.readouterr().out.strip()

    inbox = tmp_path / "labels" / "newtown"
    assert json.loads(status("--json")) == {"region": "newtown", "inbox": str(inbox), "labels": None}
    assert status() == f"[newtown] no labels yet in {inbox}"
    (inbox / "masks").mkdir(parents=True)
    (inbox / "masks" / "t1.png").write_bytes(b"png")
    assert json.loads(status("--json"))["labels"] == str(inbox / "masks")
    (inbox / "export.json").write_text("[]")  # a Label Studio export wins, as import-labels reads it
    assert status() == f"[newtown] labels: {inbox / 'export.json'}"


def test_every_dag_param_renders_into_arguments_the_step_parses_back(airflow_home, monkeypatch):
    """The Params and step arguments come from workflows.json (generated from the steps' option
    declarations): each Param's default reaches its step as the step's own default, and a value
    from the trigger form reaches it as that value."""
    from components.cli import build_parser

    parser = build_parser()
    bag = dagbag(monkeypatch, DAMNET_EXECUTION="local")
    checked = 0
    for dag_id in ("damnet_region", "damnet_finetune"):
        dag = bag.get_dag(dag_id)
        for task in dag.tasks:
            if not hasattr(task, "step"):
                continue
            ns = parser.parse_args(_argv(dag, task.task_id, {}))
            own = parser.parse_args([task.step, "--region", "newtown"])
            for arg in (a for a in task.arguments if a.startswith("--") and "=" in a):  # workflow options
                dest = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
                if dest not in ("region", "steps", "device"):  # steps, device: from the compute profile
                    assert getattr(ns, dest) == getattr(own, dest), (dag_id, task.task_id, dest)
                    checked += 1
    assert checked >= 25


def test_the_region_dag_adapts_with_the_engines_default_alignment(airflow_home, monkeypatch):
    from damnet.train import MODES

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag("damnet_region")
    assert (dag.params["restyle"], dag.params["match_gsd"]) == (MODES["adapt"].restyle, MODES["adapt"].match_gsd)
    assert dag.params["lambda_adv"] == MODES["adapt"].lambda_adv


VALIDATION_PARAMS = ("max_misregistration_px", "tile_misregistration_severity", "max_nodata_fraction",
                     "max_mean_nodata_fraction", "mostly", "min_tiles")


def _argv(dag, task_id: str, conf: dict) -> list[str]:
    """The command line of ``dag``'s task ``task_id`` as a run with ``conf`` renders it."""
    from jinja2 import Template

    params = {**{k: dag.params[k] for k in dag.params}, **conf}
    task = dag.get_task(task_id)
    args = [Template(a).render(params=params, run_id="manual__1") for a in task.arguments]
    return [task.step, *args]


def _validate_argv(dag, conf: dict) -> list[str]:
    return _argv(dag, "validate", conf)


def test_the_validation_thresholds_are_region_dag_params_that_reach_the_step(airflow_home, monkeypatch):
    from components.cli import build_parser
    from damnet.validation import ValidationConfig

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag("damnet_region")
    defaults = ValidationConfig()
    parser = build_parser()
    for name in VALIDATION_PARAMS:
        assert dag.params[name] == getattr(defaults, name), name
        assert dag.params.get_param(name).schema.get("section") == "Validation", name
    ns = parser.parse_args(_validate_argv(dag, {}))
    assert {n: getattr(ns, n) for n in VALIDATION_PARAMS} == {n: getattr(defaults, n) for n in VALIDATION_PARAMS}
    # An ops user lets a region with 6 px shifts and more nodata through, from the trigger form.
    conf = {"max_misregistration_px": 6.5, "tile_misregistration_severity": "critical", "max_nodata_fraction": 0.8,
            "max_mean_nodata_fraction": 0.4, "mostly": 0.9, "min_tiles": 2}
    ns = parser.parse_args(_validate_argv(dag, conf))
    assert {n: getattr(ns, n) for n in VALIDATION_PARAMS} == conf


@pytest.mark.parametrize("conf, field", [({"max_misregistration_px": 0}, "max_misregistration_px"),
                                         ({"max_nodata_fraction": 1.5}, "max_nodata_fraction"),
                                         ({"tile_misregistration_severity": "fatal"}, "tile_misregistration_severity"),
                                         ({"mostly": 0}, "mostly"), ({"min_tiles": -1}, "min_tiles")])
def test_bad_validation_thresholds_are_refused_by_param_validation(airflow_home, monkeypatch, conf, field):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag("damnet_region")
    with pytest.raises(ParamValidationError, match=field):
        dag.test(run_conf=conf)


# --------------------------------------------------------------------------- ingest, select, promote options


def _options(ns, names) -> dict:
    return {n: getattr(ns, n) for n in names}


def test_the_ingest_options_are_region_dag_params_that_reach_the_step(airflow_home, monkeypatch):
    from components.cli import build_parser
    from components.ingest import config_from
    from damnet.imagery import DEFAULT_LABEL_THRESHOLD

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag("damnet_region")
    parser = build_parser()
    for name in ("imagery", "tile_size", "bands", "label_threshold"):
        assert dag.params.get_param(name).schema.get("section") == "Imagery", name
    assert (dag.params["bands"], dag.params["label_threshold"]) == ("", DEFAULT_LABEL_THRESHOLD)
    argv = _argv(dag, "ingest", {})
    assert "--bands=" in argv  # one argument: an empty value is "not set", never a missing value
    ns = parser.parse_args(argv)
    config = config_from(ns)
    assert (config.bands, config.label_threshold) == (None, DEFAULT_LABEL_THRESHOLD)
    assert config == config_from(parser.parse_args(["ingest", "--region", "newtown"]))  # the same tiling
    for conf, bands in (({"bands": "3,2,1", "label_threshold": 0, "tile_size": 128}, (3, 2, 1)),
                        ({"bands": "B04,B03,B02", "label_threshold": 200}, ("B04", "B03", "B02"))):
        config = config_from(parser.parse_args(_argv(dag, "ingest", conf)))
        assert (config.bands, config.label_threshold) == (bands, conf["label_threshold"])
        assert config.size == conf.get("tile_size", 256)


def test_the_audit_floor_is_a_region_dag_param_that_reaches_select(airflow_home, monkeypatch):
    from components.cli import build_parser
    from damnet.select import DEFAULT_MIN_AUDIT

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag("damnet_region")
    parser = build_parser()
    defaults = parser.parse_args(["select", "--region", "newtown"])
    assert dag.params["min_audit"] == DEFAULT_MIN_AUDIT == defaults.min_audit
    assert dag.params["audit"] == defaults.audit
    ns = parser.parse_args(_argv(dag, "select", {}))
    assert (ns.audit, ns.min_audit) == (defaults.audit, DEFAULT_MIN_AUDIT)
    ns = parser.parse_args(_argv(dag, "select", {"audit": 0.02, "min_audit": 35}))
    assert (ns.audit, ns.min_audit) == (0.02, 35)


GATE_PARAMS = ("margin", "max_source_drop", "min_audit_tiles", "min_change_tiles", "confidence")


def test_the_promotion_gate_is_finetune_dag_params_that_reach_promote(airflow_home, monkeypatch):
    from components.cli import build_parser
    from damnet.registry import Evidence

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag("damnet_finetune")
    parser = build_parser()
    defaults = _options(parser.parse_args(["promote", "--region", "newtown"]), GATE_PARAMS)
    ev = Evidence()
    assert (defaults["min_audit_tiles"], defaults["min_change_tiles"], defaults["confidence"]) == (
        ev.min_tiles, ev.min_change_tiles, ev.confidence)
    for name in GATE_PARAMS:
        assert dag.params[name] == defaults[name], name
        assert dag.params.get_param(name).schema.get("section") == "Promotion gate", name
    assert _options(parser.parse_args(_argv(dag, "promote", {})), GATE_PARAMS) == defaults
    # An ops user asks for a stricter gate from the trigger form.
    conf = {"margin": 0.03, "max_source_drop": 0.02, "min_audit_tiles": 30, "min_change_tiles": 12,
            "confidence": 0.95}
    assert _options(parser.parse_args(_argv(dag, "promote", conf)), GATE_PARAMS) == conf


@pytest.mark.parametrize("dag_id, conf, field", [
    ("damnet_region", {"bands": "3,2"}, "bands"), ("damnet_region", {"label_threshold": 255}, "label_threshold"),
    ("damnet_region", {"min_audit": -1}, "min_audit"), ("damnet_finetune", {"confidence": 1.0}, "confidence"),
    ("damnet_finetune", {"min_audit_tiles": 0}, "min_audit_tiles"),
    ("damnet_finetune", {"min_change_tiles": 0}, "min_change_tiles"), ("damnet_finetune", {"margin": -0.1}, "margin")])
def test_bad_step_options_are_refused_by_param_validation(airflow_home, monkeypatch, dag_id, conf, field):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag(monkeypatch, DAMNET_EXECUTION="local").get_dag(dag_id)
    with pytest.raises(ParamValidationError, match=field):
        dag.test(run_conf=conf)
