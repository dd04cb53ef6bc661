"""The main job on embedded defaults: a whole new region through the real DAGs, on a laptop.

1. generate a labelled source domain and a new target region (its ground truth kept apart)
   into a local store;
2. train and register the source model (``damnet ingest`` + ``damnet train``);
3. run the region DAG (``damnet_region``) with ``dag.test()`` on a migrated SQLite Airflow
   database: ingest, validate, adapt, select, export-labels;
4. the SIMULATED labeler answers the exported tasks from the synthetic ground truth;
5. run the fine-tune DAG (``damnet_finetune``): import-labels, finetune, evaluate, promote,
   predict, report;
6. print where the region report is and how to open MLflow's UI and Airflow's.

Everything local: SQLite for Airflow and MLflow, a folder for the store, the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1]


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.started = total, 0, time.time()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {text}  (elapsed {time.time() - self.started:.0f} s)", flush=True)


def environment(out: Path) -> dict[str, str]:
    """Settings for Airflow, MLflow and the steps; set before Airflow is imported."""
    return {
        "AIRFLOW_HOME": str(out / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{out / 'airflow' / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "DAMNET_EXECUTION": "local",
        "DAMNET_ECHO_STEPS": "1",
        "DAMNET_STORE": str(out / "store"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GX_ANALYTICS_ENABLED": "false",
    }


def run_demo(out: Path, region: str = "newtown", style: str = "target_season", scenes: int = 8,
             size: int = 512, tile: int = 64, budget: float = 0.0099, audit: float = 0.04,
             source_steps: int = 300, adapt_steps: int = 150, finetune_steps: int = 100, seed: int = 0,
             max_label_share: float = 0.01) -> dict:
    out = out.resolve()
    (out / "airflow").mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(out))
    os.chdir(out)  # MLflow's default artifact folder (./mlruns) lands in the run folder
    step = Progress(7)

    step("Setting up the Airflow database (SQLite)")
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL)

    from components.cli import main as damnet
    from damnet.synthetic import SOURCE_STYLE, write_region

    store = out / "store"
    step(f"Generating a source domain and the new region {region!r} ({style}), {scenes} scene(s) of {size} px each")
    write_region(str(store / "imagery" / "source"), SOURCE_STYLE, n_scenes=scenes, size=size, seed=seed,
                 quicklook_uri=str(out / "quicklooks" / "source.png"))
    write_region(str(store / "imagery" / region), style, n_scenes=scenes, size=size, seed=seed + 1,
                 labels_uri=str(out / "truth" / region), quicklook_uri=str(out / "quicklooks" / f"{region}.png"))

    step("Training and registering the source model (damnet ingest + damnet train)")
    s = ["--store", str(store), "--run-group", "demo-source"]
    _check(damnet(["ingest", *s, "--region", "source", "--tile-size", str(tile), "--require-labels"]))
    _check(damnet(["train", *s, "--steps", str(source_steps), "--crop", str(tile)]))

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")

    step(f"Region DAG damnet_region for {region!r}: ingest, validate, adapt, select, export-labels")
    conf = {"region": region, "tile_size": tile, "label_budget": budget, "audit": audit,
            "max_label_share": max_label_share, "compute_profile": "cpu", "adapt_steps": adapt_steps}
    region_run = bag.get_dag("damnet_region").test(run_conf=conf)
    region_states = {ti.task_id: ti.state for ti in region_run.get_task_instances()}
    _dag_ok(region_run)

    step("SIMULATED labeler: answering the exported tasks from the synthetic ground truth")
    _check(damnet(["simulate-labeler", "--store", str(store), "--region", region,
                   "--truth", str(out / "truth" / region)]))

    step("Fine-tune DAG damnet_finetune: import-labels, finetune, evaluate, promote, predict, report")
    run = bag.get_dag("damnet_finetune").test(run_conf={"region": region, "compute_profile": "cpu",
                                                        "finetune_steps": finetune_steps})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}

    import json

    def record(name):
        path = store / "regions" / region / "steps" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    step("Done")
    report, promote = record("report"), record("promote")
    tiles = record("ingest")["metrics"]["tiles"] if record("ingest") else 0
    select = record("select")
    print(f"  region {region!r}: {tiles} tiles; labelled for fine-tuning: "
          f"{select['metrics']['train_tiles']} ({select['metrics']['train_tiles'] / max(tiles, 1):.2%}), "
          f"audit: {select['metrics']['audit_tiles']}")
    if promote:
        decision = json.loads(Path(promote["outputs"]["decision"]).read_text())
        verdict = "promoted to champion" if decision["promoted"] else "NOT promoted (the gate held it back)"
        print(f"  {decision['registered_model']} version {decision['version']}: {verdict}")
        for reason in decision["reasons"]:
            print(f"    - {reason}")
    failed = sorted(t for t, st in states.items() if st not in ("success", "skipped"))
    if failed:
        print(f"  tasks not successful in the fine-tune run: {', '.join(failed)}")
    if report:
        print(f"\n  Region report: {report['outputs']['report']}")
        print(f"  Open it:       xdg-open {report['outputs']['report']}   (or any browser)")
    print(f"  MLflow UI:     {Path(sys.executable).with_name('mlflow')} ui --backend-store-uri "
          f"sqlite:///{out / 'mlflow.db'} --host 127.0.0.1   # then http://127.0.0.1:5000")
    print("  Airflow UI:    make airflow   # airflow standalone with these DAGs on http://127.0.0.1:8080")
    print(f"  Store:         {store}")
    summary = {"region_run": {"state": str(region_run.state), "tasks": _plain(region_states)},
               "finetune_run": {"state": str(run.state), "tasks": _plain(states)},
               "report": report["outputs"]["report"] if report else None,
               "promoted": bool(promote) and json.loads(Path(promote["outputs"]["decision"]).read_text())["promoted"],
               "seconds": round(time.time() - step.started, 1)}
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    return summary


def _plain(states: dict) -> dict:
    return {k: str(v) for k, v in states.items()}


def _check(code: int) -> None:
    if code != 0:
        raise SystemExit(code)


def _dag_ok(run) -> None:
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    if run.state != "success":
        bad = ", ".join(f"{t}={s}" for t, s in states.items() if s not in ("success", "skipped"))
        raise SystemExit(f"DAG run {run.dag_id} ended {run.state}: {bad}")
