"""The main job: a whole new region through the real Airflow DAGs on embedded defaults.

Generates a labelled source domain and a new target region into a local store, trains and
registers the source model, runs the region DAG (dag.test() on SQLite), lets the SIMULATED
labeler answer the exported tasks, runs the fine-tune DAG, and prints where the region
report is and how to open the MLflow and Airflow UIs. CPU only; about 5-8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from damnet.errors import DamnetError
from damnet.synthetic import TARGET_STYLES

DAGS = Path(__file__).resolve().parents[1] / "dags"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="local folder for everything the demo makes")
    p.add_argument("--region", default="newtown", help="name of the new target region")
    p.add_argument("--target-style", default="target_season", choices=TARGET_STYLES)
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tile-size", type=int, default=64)
    p.add_argument("--budget", type=float, default=0.0099, help="micro-label budget (share of tiles, < 1 %%)")
    p.add_argument("--audit", type=float, default=0.04)
    p.add_argument("--max-label-share", type=float, default=0.01, help="refuse budgets above this share")
    p.add_argument("--source-steps", type=int, default=300)
    p.add_argument("--adapt-steps", type=int, default=150)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if not (DAGS / "damnet_region.py").exists():
        raise DamnetError(f"damnet demo needs the project's dags/ folder next to the package ({DAGS} is missing)")
    sys.path.insert(0, str(DAGS))
    from damnet_ops.demo import run_demo

    run_demo(Path(args.out), region=args.region, style=args.target_style, scenes=args.scenes, size=args.size,
             tile=args.tile_size, budget=args.budget, audit=args.audit, source_steps=args.source_steps,
             adapt_steps=args.adapt_steps, finetune_steps=args.finetune_steps, seed=args.seed,
             max_label_share=args.max_label_share)
