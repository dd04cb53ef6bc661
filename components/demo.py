"""The main job: a whole new region through the real Airflow DAGs on embedded defaults.

Generates a labelled source domain and a new target region into a local store, trains and
registers the source model, runs the region DAG (dag.test() on SQLite), lets the SIMULATED
labeler answer the exported tasks, runs the fine-tune DAG, and prints where the region
report is and how to open the MLflow and Airflow UIs. CPU only; about 5-8 minutes on 2 cores.

1. generate a labelled source domain and a new target region (its ground truth kept apart)
   into a local store;
2. train and register the source model (``damnet ingest`` + ``damnet train``);
3. run the region DAG (``damnet_region``) with ``dag.test()`` on a migrated SQLite Airflow
   database: ingest, validate, adapt, select, export-labels;
4. the SIMULATED labeler answers the exported tasks from the synthetic ground truth;
5. run the fine-tune DAG (``damnet_finetune``): import-labels, finetune, evaluate, promote,
   predict, report;
6. print where the region report is and how to open MLflow's UI and Airflow's.

Everything local: SQLite for Airflow and MLflow, a folder for the store, the CPU. The DAG
files are loaded from the project's dags/ folder as Airflow's own ``airflow dags test``
loads a bundle (a ``BundleDagBag``); Airflow is imported only once its settings are set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from components.cli import main as damnet
from damnet.errors import DamnetError
from damnet.synthetic import SOURCE_STYLE, write_region

DAGS = Path(__file__).resolve().parents[1] / "dags"


def run(args: argparse.Namespace) -> None:
    if not (DAGS / "damnet_region.py").exists():
        raise DamnetError(f"damnet demo needs the project's dags/ folder next to the package ({DAGS} is missing)")
    run_demo(Path(args.out), region=args.region, style=args.target_style, scenes=args.scenes, size=args.size,
             tile=args.tile_size, budget=args.budget, audit=args.audit, source_steps=args.source_steps,
             adapt_steps=args.adapt_steps, finetune_steps=args.finetune_steps, seed=args.seed,
             max_label_share=args.max_label_share)


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
             max_label_share: float = 0.01) -> dict[str, Any]:
    out = out.resolve()
    (out / "airflow").mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(out))
    os.chdir(out)  # MLflow's default artifact folder (./mlruns) lands in the run folder
    step = Progress(7)

    step("Setting up the Airflow database (SQLite)")
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL)

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

    bag = _dag_bag()
    step(f"Region DAG damnet_region for {region!r}: ingest, validate, adapt, select, export-labels")
    conf = {"region": region, "tile_size": tile, "label_budget": budget, "audit": audit,
            "max_label_share": max_label_share, "compute_profile": "cpu", "adapt_steps": adapt_steps}
    region_run = bag.get_dag("damnet_region").test(run_conf=conf)
    _dag_ok(region_run)

    step("SIMULATED labeler: answering the exported tasks from the synthetic ground truth")
    _check(damnet(["simulate-labeler", "--store", str(store), "--region", region,
                   "--truth", str(out / "truth" / region)]))

    step("Fine-tune DAG damnet_finetune: import-labels, finetune, evaluate, promote, predict, report")
    run = bag.get_dag("damnet_finetune").test(run_conf={"region": region, "compute_profile": "cpu",
                                                        "finetune_steps": finetune_steps})
    step("Done")
    summary = _summary(out, region, region_run, run, started=step.started)
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    return summary


def _dag_bag() -> Any:
    """The project's DAGs, loaded as Airflow loads a DAG bundle (its folder importable)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(DAGS, bundle_path=DAGS)
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag


def _summary(out: Path, region: str, region_run: Any, run: Any, started: float) -> dict[str, Any]:
    """Prints what the demo made and where to look; the summary written to demo.json."""
    store = out / "store"

    def record(name: str) -> dict[str, Any] | None:
        path = store / "regions" / region / "steps" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    report, promote, ingest, select = record("report"), record("promote"), record("ingest"), record("select")
    tiles = ingest["metrics"]["tiles"] if ingest else 0
    assert select is not None  # the region run succeeded
    print(f"  region {region!r}: {tiles} tiles; labelled for fine-tuning: "
          f"{select['metrics']['train_tiles']} ({select['metrics']['train_tiles'] / max(tiles, 1):.2%}), "
          f"audit: {select['metrics']['audit_tiles']}")
    decision = json.loads(Path(promote["outputs"]["decision"]).read_text()) if promote else None
    if decision:
        verdict = "promoted to champion" if decision["promoted"] else "NOT promoted (the gate held it back)"
        print(f"  {decision['registered_model']} version {decision['version']}: {verdict}")
        for reason in decision["reasons"]:
            print(f"    - {reason}")
    states = _states(run)
    failed = sorted(t for t, st in states.items() if st not in ("success", "skipped"))
    if failed:
        print(f"  tasks not successful in the fine-tune run: {', '.join(failed)}")
    if report:
        print(f"\n  Region report: {report['outputs']['report']}")
        print(f"  Open it:       xdg-open {report['outputs']['report']}   (or any browser)")
    print(f"  MLflow UI:     {Path(sys.executable).with_name('mlflow')} ui --backend-store-uri "
          f"sqlite:///{out / 'mlflow.db'} --host 127.0.0.1   # then http://127.0.0.1:5000")
    print("  Airflow UI:    make airflow   # these DAGs and this run on http://127.0.0.1:8080")
    print(f"  Store:         {store}")
    return {"region_run": {"state": str(region_run.state), "tasks": _states(region_run)},
            "finetune_run": {"state": str(run.state), "tasks": states},
            "report": report["outputs"]["report"] if report else None,
            "promoted": bool(decision and decision["promoted"]),
            "seconds": round(time.time() - started, 1)}


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _check(code: int) -> None:
    if code != 0:
        raise SystemExit(code)


def _dag_ok(run: Any) -> None:
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    if run.state != "success":
        bad = ", ".join(f"{t}={s}" for t, s in states.items() if s not in ("success", "skipped"))
        raise SystemExit(f"DAG run {run.dag_id} ended {run.state}: {bad}")
