"""Audit-set metrics of the candidate and the current champion, plus source-holdout forgetting.

Inputs: the fine-tuned candidate, the champion (``damnet-<region>@champion``; before a
region has one, the source champion), the imported audit labels and the source holdout.
Outputs: metrics.json (per model and set: F1, IoU, precision, recall, AP, confusion; on the
audit set also each tile's confusion matrix, ``per_tile``, which the promotion gate resamples,
and the F1's 90 % bootstrap interval over audit tiles, ``f1_interval``), confusion-matrix and
precision-recall plots.
"""

from __future__ import annotations

import argparse
import contextlib

from components.inputs import micro_labels, model_input, source_holdout, source_split_input, tiles_of
from components.records import Layout, StepError, StepInput, input_of, read_record, upstream, write_json
from components.step import RunOptions, run_step
from damnet import registry, storage
from damnet.data import TileSet
from damnet.evaluate import evaluate
from damnet.metrics import Confusion, ScoreHistogram, UndefinedF1, bootstrap_f1


def promoted_from(model: StepInput, finetune_key: str) -> bool:
    """Is the registry model ``model`` (a model_input) the promoted output of that finetune run?"""
    import mlflow

    if "/" not in model.get("digest", "") or not model["uri"].startswith("models:/"):
        return False
    name, version = model["digest"].rsplit("/", 1)
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    return tags.get("damnet.finetune_key") == finetune_key


def champion_ref(region: str) -> str:
    import mlflow

    name = registry.registered_name(region)
    if registry.alias_version(mlflow.MlflowClient(), name, registry.CHAMPION) is not None:
        return f"models:/{name}@{registry.CHAMPION}"
    return f"models:/{registry.SOURCE_MODEL}@{registry.CHAMPION}"


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    finetune = upstream(layout, "finetune")
    audit_labels, l_rec = micro_labels(layout, "audit")
    if not audit_labels:
        raise StepError(f"region {layout.region!r}: the imported labels have no audit tiles to evaluate on")
    _, t_rec = tiles_of(layout, labels=None)
    holdout = source_holdout(layout.of(args.source_region))
    champion = model_input(args.champion or champion_ref(layout.region))
    previous = read_record(layout, "evaluate")
    if (args.champion is None and previous is not None
            and previous["inputs"]["candidate"]["digest"] == finetune["key"]
            and promoted_from(champion, finetune["key"])):
        # This candidate already won and is the champion now: keep the comparison it won.
        champion = previous["inputs"]["champion"]
    source = model_input(f"models:/{registry.SOURCE_MODEL}@{registry.CHAMPION}")
    inputs = {"candidate": input_of(finetune, "model"), "champion": champion, "source_model": source,
              "labels": input_of(l_rec, "labels"), "tiles": input_of(t_rec, "tiles"),
              **(source_split_input(layout.of(args.source_region)) if holdout is not None else {})}
    # per_tile_audit: the gate needs each audit tile's confusion (records without it are stale).
    params = {"source_region": args.source_region, "threshold": 0.5, "per_tile_audit": True}

    def body(run):
        audit = TileSet(t_rec["outputs"]["tiles"], tile_ids=sorted(audit_labels), labels=audit_labels)
        models = {"candidate": finetune["outputs"]["model"], "champion": champion["uri"]}
        if source["uri"] != champion["uri"]:
            models["source"] = source["uri"]
        sets = {"audit": audit, **({"source_holdout": holdout} if holdout is not None else {})}
        results: dict[str, dict] = {}
        curves: dict[str, ScoreHistogram] = {}
        for who, ref in models.items():
            model, _ = registry.load_model(ref)
            results[who] = {"model": ref}
            for set_name, tiles in sets.items():
                hist = ScoreHistogram()
                per_tile: dict[str, Confusion] | None = {} if set_name == "audit" else None
                # the source holdout has the source's radiometry: the region's input tables
                # (--match-histograms) would distort it, so forgetting is measured without them
                with model.tables_off() if set_name == "source_holdout" else contextlib.nullcontext():
                    conf = evaluate(model, tiles, device=args.device, histogram=hist, per_tile=per_tile)
                results[who][set_name] = {**conf.as_dict(), "average_precision": hist.average_precision,
                                          "tiles": len(tiles)}
                if per_tile is not None:
                    results[who][set_name].update(audit_summary(per_tile))
                curves[f"{who}/{set_name}"] = hist
        write_json(run.path("metrics.json"), results)
        plot_confusions(results, run.path("confusion.png"))
        plot_pr(curves, run.path("pr_curves.png"))
        run.outputs.update(metrics=run.path("metrics.json"), confusion=run.path("confusion.png"),
                           pr_curves=run.path("pr_curves.png"))
        for who, r in results.items():
            for set_name in sets:
                run.metrics[f"{who}_{set_name}_f1"] = r[set_name]["f1"]
                run.metrics[f"{who}_{set_name}_iou"] = r[set_name]["iou"]
        run.info.update(models=models)
        for name in ("confusion.png", "pr_curves.png", "metrics.json"):
            run.artifact(run.path(name))
        for who, r in results.items():
            line = ", ".join(_f1_text(r[s], s) for s in sets)
            print(f"  {who:9s} {line}  ({r['model']})")

    run_step("evaluate", inputs, params, body, layout, RunOptions.from_args(args))


def _f1_text(r: dict, set_name: str) -> str:
    ci = r.get("f1_interval")
    return f"{set_name} F1 {r['f1']:.3f}" + (f" (90% interval {ci['low']:.2f}-{ci['high']:.2f})" if ci else "")


def audit_summary(per_tile: dict[str, Confusion]) -> dict:
    """``per_tile`` (tile id -> [tp, fp, fn, tn]), ``change_tiles`` and the F1's 90 % bootstrap
    interval over the tiles (``f1_interval``; None when no tile holds change: F1 is undefined)."""
    try:
        interval = bootstrap_f1(per_tile).as_dict()
    except UndefinedF1:
        interval = None
    return {"per_tile": {t: [c.tp, c.fp, c.fn, c.tn] for t, c in sorted(per_tile.items())},
            "change_tiles": sum(1 for c in per_tile.values() if c.tp + c.fn > 0),
            "f1_interval": interval}


def _savefig(fig, uri: str) -> None:
    import matplotlib.pyplot as plt

    with storage.storage_for(uri).writing(uri, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def plot_confusions(results: dict, uri: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = [(who, s) for who, r in results.items() for s in r if s != "model"]
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.2), dpi=100, squeeze=False)
    for ax, (who, s) in zip(axes[0], cells, strict=True):
        r = results[who][s]
        m = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], dtype=float)
        norm = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{int(v)}\n{norm[i, j]:.1%}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks([0, 1], ["no change", "change"])
        ax.set_yticks([0, 1], ["no change", "change"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{who} / {s}\nF1 {r['f1']:.3f}", fontsize=9)
    fig.tight_layout()
    _savefig(fig, uri)


def plot_pr(curves: dict, uri: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    for name, hist in curves.items():
        _, precision, recall = hist.pr_curve()
        ax.plot(recall, precision, label=f"{name} (AP {hist.average_precision:.3f})",
                linestyle="-" if name.endswith("audit") else "--")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall of the change class")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    _savefig(fig, uri)
