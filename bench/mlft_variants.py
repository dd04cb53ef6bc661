"""Variants of one MLFT row of the ablation (same data, adapted model and selection), side by side.

    .venv/bin/python bench/mlft_variants.py --style target_season --budget 0.01 \\
        --adapt-set restyle=0.5 --adapt-set match_gsd=true --adapt-set lambda_adv=0.01 \\
        --finetune-set restyle=0.5 --finetune-set match_gsd=true \\
        --variant "base:" --variant "lr3:lr=3e-4" --variant "s150:steps=150"

Each variant is ``NAME:KEY=VALUE,...`` of TrainConfig overrides on top of ``--finetune-set``
(``steps`` sets the MLFT steps, ``method`` the selector or ``ten_percent`` for the 10 % row,
``select.KEY`` a keyword of ``damnet.select.select``). It reads the data, source model and
adapted model that ``bench/ablation.py`` cached in ``--work`` with the same ``--adapt-set``
(run ``bench/ablation.py --styles STYLE --upto adapt ...`` first) and prints test F1, precision
and recall per seed and their mean. Exploratory: try changes on ``--split val`` (a pool/test pair
the published table does not use) and confirm on the test pair once.
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


def _number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


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
    pair = ablation.cached_pair(Path(args.work) / "full", plan, args.style, args.split)
    scores = score_region(pair.adapted, pair.pool, batch_size=8, progress=False,
                          reference=pair.src_model if plan.reference else None)

    done: dict[tuple, dict] = {}
    for variant in args.variant:
        name, _, rest = variant.partition(":")
        items = [kv for kv in rest.split(",") if kv]
        own = ("steps=", "method=", "select.")  # not TrainConfig fields of the MLFT row
        overrides = ablation._overrides([kv for kv in items if not kv.startswith(own)])
        extra = dict(kv.split("=", 1) for kv in items if kv.startswith(own))
        select_kw = {k.removeprefix("select."): _number_or_text(v) for k, v in extra.items()
                     if k.startswith("select.")}
        steps, method = int(extra.get("steps", plan.finetune_steps)), extra.get("method", "combined")
        runs = []
        for seed in range(args.seeds):
            t = time.time()
            if method == "ten_percent":
                picks = ("10 %",)
            else:
                picks = tuple(select(scores, args.budget, method, audit=1, seed=seed, **select_kw).train)
            key = (picks, seed, steps, tuple(sorted(overrides.items())))
            if key not in done:  # training is deterministic: the same picks give the same model
                if method == "ten_percent":
                    model = ablation.ten_percent_model(plan, pair.src_model, pair.source, pair.pool, seed)
                else:
                    model = ablation.mlft_model(plan, pair.adapted, pair.disc_state, pair.source, pair.pool,
                                                pair.unlabelled, list(picks), seed, steps, **overrides)
                done[key] = evaluate(model, pair.test, batch_size=8).as_dict()
            m = done[key]
            runs.append((m, time.time() - t))
            print(f"[{name}] seed {seed}: F1 {100 * m['f1']:.1f} P {100 * m['precision']:.1f} "
                  f"R {100 * m['recall']:.1f} ({runs[-1][1]:.0f} s) picks {', '.join(picks)}", flush=True)
        mean = {k: 100 * statistics.mean(m[k] for m, _ in runs) for k in ("f1", "precision", "recall")}
        print(f"[{name}] {args.style} {method} {args.budget:g}, {steps} steps, {overrides or 'as --finetune-set'}: "
              f"F1 {mean['f1']:.1f} P {mean['precision']:.1f} R {mean['recall']:.1f}, "
              f"{statistics.median(s for _, s in runs):.0f} s per run", flush=True)


if __name__ == "__main__":
    main()
