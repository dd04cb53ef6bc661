"""Which changes a model misses: recall of changed buildings by roof colour, on a synthetic test region.

    .venv/bin/python bench/misses.py --style target_season \\
        --adapt-set restyle=0.5 --adapt-set match_gsd=true --adapt-set lambda_adv=0.01 \\
        --finetune-set restyle=0.5 --finetune-set match_gsd=true

Models: the source model, the adapted one (both cached by ``bench/ablation.py`` with the same
``--adapt-set``; run ``bench/ablation.py --styles STYLE --upto adapt ...`` first), MLFT with our
selector at ``--budget`` scored with and without the source model's second opinion, and the
10 %-label row, each trained for ``--seeds`` seeds. The synthetic generator knows every changed
building (its roof colour, new or demolished), so the test region's change pixels are split by
that and each model's recall is given per group (pixels predicted as change / pixels of the group).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ablation  # noqa: E402


def scene_maps(model, tiles, size: int) -> dict[str, np.ndarray]:
    """Predicted change (bool) of every scene of ``tiles``, put together from its tiles."""
    from damnet.evaluate import change_probability

    model.eval()
    out: dict[str, np.ndarray] = {}
    for b in tiles.iter_batches(8):
        prob = change_probability(model, b.pre, b.post).numpy()  # no_grad inside
        for j, i in enumerate(b.index.tolist()):
            t, w = tiles.tiles[i], tiles.tiles[i]["window"]
            scene = out.setdefault(t["pair"], np.zeros((size, size), bool))
            scene[w["row_off"]:w["row_off"] + w["height"], w["col_off"]:w["col_off"] + w["width"]] = (
                prob[j, :w["height"], :w["width"]] >= 0.5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation.add_row_arguments(ap, seeds=1)
    args = ap.parse_args()

    from damnet.select import score_region, select
    from damnet.synthetic import generate_scene, get_style, scene_seed

    plan = ablation.Plan(adapt=ablation._overrides(args.adapt_set),
                         finetune=ablation._overrides(args.finetune_set))
    pair = ablation.cached_pair(Path(args.work) / "full", plan, args.style, args.split)
    style = get_style(args.style)
    _, test_seed = ablation.region_seeds(args.style, args.split)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    models = {"source only": [pair.src_model], "adaptation": [pair.adapted]}
    # one scoring pass serves both: the reference only adds the disagreement column
    disputed = score_region(pair.adapted, pair.pool, batch_size=8, progress=False, reference=pair.src_model)
    for label, scores in (("MLFT ours, uncertainty only", replace(disputed, disagreement=None)),
                          ("MLFT ours, + source opinion", disputed)):
        models[label] = []
        for seed in range(args.seeds):
            sel = select(scores, args.budget, "combined", audit=1, seed=seed)
            log(f"{label}, seed {seed}: {', '.join(sel.train)}")
            models[label].append(ablation.mlft_model(plan, pair.adapted, pair.disc_state, pair.source, pair.pool,
                                                     pair.unlabelled, sel.train, seed))
    models["10 % labels"] = [ablation.ten_percent_model(plan, pair.src_model, pair.source, pair.pool, seed)
                             for seed in range(args.seeds)]
    log("models trained")

    scenes = [generate_scene(style, size=plan.scene, seed=scene_seed(test_seed, i)) for i in range(plan.test_scenes)]
    groups = {(b["state"], b["roof"]) for scene in scenes for b in scene.changed}
    # model name -> (state, roof) -> change pixels found, per seed
    hits = {name: {g: [0] * len(ms) for g in groups} for name, ms in models.items()}
    pixels: dict = defaultdict(int)
    buildings: dict = defaultdict(int)
    preds = {name: [scene_maps(m, pair.test, plan.scene) for m in ms] for name, ms in models.items()}
    for i, scene in enumerate(scenes):
        name = f"scene_{i:03d}"
        group = [None] + [(b["state"], b["roof"]) for b in scene.changed]
        for k, n in enumerate(np.bincount(scene.changes.ravel(), minlength=len(group))[1:], start=1):
            pixels[group[k]] += int(n)
            buildings[group[k]] += int(n > 0)
        for model_name, per_seed in preds.items():
            for s, pred in enumerate(per_seed):
                counts = np.bincount(scene.changes[pred[name]], minlength=len(group))
                for k in range(1, len(group)):
                    hits[model_name][group[k]][s] += int(counts[k])

    names = list(models)
    print(f"Recall (%) of changed-building pixels by roof colour, source -> {args.style} test region "
          f"({plan.test_scenes} scenes), MLFT budget {args.budget:g}, mean of {args.seeds} seed(s)\n")
    print("| change | roof colour (RGB) | buildings | pixels | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    total = sum(pixels.values())
    for key in sorted(pixels, key=lambda g: (g[0] != "new", g[1])):
        if not pixels[key]:
            continue
        rgb = "/".join(f"{v:.2f}" for v in style.roof_palette[key[1]])
        cells = [f"{100 * statistics.mean(hits[n][key]) / pixels[key]:.1f}" for n in names]
        print(f"| {key[0]} | {key[1]}: {rgb} | {buildings[key]} | {pixels[key]} | " + " | ".join(cells) + " |")
    cells = [f"{100 * statistics.mean(sum(h[s] for h in hits[n].values()) for s in range(len(models[n]))) / total:.1f}"
             for n in names]
    print(f"| all | | {sum(buildings.values())} | {total} | " + " | ".join(cells) + " |")
    soil = "/".join(f"{v:.2f}" for v in style.soil_rgb)
    print(f"\nBare soil of this style: {soil}.")


if __name__ == "__main__":
    main()
