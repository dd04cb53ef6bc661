"""Variants of one MLFT row of the ablation (same data, adapted model and selection), side by side.

    .venv/bin/python bench/mlft_variants.py --style target_season --budget 0.01 \\
        --adapt-set restyle=0.5 --adapt-set match_gsd=true --adapt-set lambda_adv=0.01 \\
        --finetune-set restyle=0.5 --finetune-set match_gsd=true \\
        --variant "base:" --variant "lr3:lr=3e-4" --variant "s150:steps=150"

Each variant is ``NAME:KEY=VALUE,...`` of TrainConfig overrides on top of ``--finetune-set``
(``steps`` sets the MLFT steps, ``method`` the selector). It reads the data, source model and
adapted model that ``bench/ablation.py`` cached in ``--work`` with the same ``--adapt-set``
(run ``bench/ablation.py --styles STYLE --upto adapt ...`` first) and prints test F1, precision
and recall per seed and their mean. Exploratory: tuned on the test region, like the sweep.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ablation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation.add_row_arguments(ap, seeds=3)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:KEY=VALUE,...")
    ap.add_argument("--reference", action="store_true",
                    help="score with the source model's second opinion (select --reference source)")
    args = ap.parse_args()

    from damnet.evaluate import evaluate
    from damnet.select import score_region, select

    plan = ablation.Plan(adapt=ablation._overrides(args.adapt_set),
                         finetune=ablation._overrides(args.finetune_set),
                         reference=args.reference)
    pair = ablation.cached_pair(Path(args.work) / "full", plan, args.style)
    scores = score_region(pair.adapted, pair.pool, batch_size=8, progress=False,
                          reference=pair.src_model if plan.reference else None)

    for variant in args.variant:
        name, _, rest = variant.partition(":")
        items = [kv for kv in rest.split(",") if kv]
        own = ("steps=", "method=")  # not TrainConfig fields of the MLFT row
        overrides = ablation._overrides([kv for kv in items if not kv.startswith(own)])
        extra = dict(kv.split("=", 1) for kv in items if kv.startswith(own))
        steps, method = int(extra.get("steps", plan.finetune_steps)), extra.get("method", "combined")
        runs = []
        for seed in range(args.seeds):
            t = time.time()
            sel = select(scores, args.budget, method, audit=1, seed=seed)
            model = ablation.mlft_model(plan, pair.adapted, pair.disc_state, pair.source, pair.pool,
                                        pair.unlabelled, sel.train, seed, steps, **overrides)
            m = evaluate(model, pair.test, batch_size=8).as_dict()
            runs.append((m, time.time() - t))
            print(f"[{name}] seed {seed}: F1 {100 * m['f1']:.1f} P {100 * m['precision']:.1f} "
                  f"R {100 * m['recall']:.1f} ({runs[-1][1]:.0f} s)", flush=True)
        mean = {k: 100 * statistics.mean(m[k] for m, _ in runs) for k in ("f1", "precision", "recall")}
        print(f"[{name}] {args.style} {method} {args.budget:g}, {steps} steps, {overrides or 'as --finetune-set'}: "
              f"F1 {mean['f1']:.1f} P {mean['precision']:.1f} R {mean['recall']:.1f}, "
              f"{statistics.median(s for _, s in runs):.0f} s per run", flush=True)


if __name__ == "__main__":
    main()
