"""Pick the micro-label set (a label budget of the region's tiles) and a random audit set.

The audit set is what the promotion gate decides on, so it must be large enough to decide:
by default 1 % of the region's tiles but at least 20 (--min-audit; at most half the region);
an explicit count (``--audit 30``) is taken as it is.

Inputs: the adapted model, the region's tiles and, with ``--reference source``, the source
model the region was adapted from, whose disagreement with the adapted model points the
``combined`` selector at changes adaptation made the model blind to (damnet/select.py; off by
default: it helped one benchmark row and cost others, docs/benchmarks.md, fifth run).
Outputs: selection.json (train and audit tile ids, every tile's scores), scores.csv and a plot
of where the picks fall.
"""

from __future__ import annotations

import argparse

from components.inputs import tiles_of
from components.records import Layout, StepError, input_of, upstream, write_json
from components.step import RunOptions, run_step
from damnet import registry, storage
from damnet.select import (
    audit_count,
    budget_count,
    score_region,
    select,
)


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    tiles, t_rec = tiles_of(layout, labels=None)
    adapt = upstream(layout, "adapt")
    inputs = {"tiles": input_of(t_rec, "tiles"), "model": input_of(adapt, "model")}
    if args.reference == "source":
        inputs["reference"] = adapt["inputs"]["source_model"]
    n_audit = check_counts(args, len(tiles), layout.region)
    params = {"budget": args.budget, "audit": args.audit, "selector": args.selector,
              "mc_samples": args.mc_samples, "seed": args.seed}
    if args.audit < 1:  # the floor changes a share's audit set (an exact count keeps its key)
        params["min_audit"] = args.min_audit

    def body(run):
        model, _ = registry.load_model(adapt["outputs"]["model"])
        reference = registry.load_model(inputs["reference"]["uri"])[0] if "reference" in inputs else None
        scores = score_region(model, tiles, mc_samples=args.mc_samples, device=args.device,
                              reference=reference)
        sel = select(scores, args.budget, args.selector, audit=n_audit, seed=args.seed)
        write_json(run.path("selection.json"), sel.to_dict())
        lines = ["tile_id,set,entropy,margin,mutual_info,change_fraction,disagreement"]
        sets = {t: "train" for t in sel.train} | {t: "audit" for t in sel.audit}
        for t, s in sel.scores.items():
            lines.append(f"{t},{sets.get(t, '')},{s['entropy']:.6f},{s['margin']:.6f},"
                         f"{'' if s['mutual_info'] is None else round(s['mutual_info'], 6)},"
                         f"{s['change_fraction']:.6f},"
                         f"{'' if s['disagreement'] is None else round(s['disagreement'], 6)}")
        storage.storage_for(run.out).put_text(run.path("scores.csv"), "\n".join(lines) + "\n")
        plot_selection(sel, run.path("selection.png"))
        run.outputs.update(selection=run.path("selection.json"), scores=run.path("scores.csv"),
                           plot=run.path("selection.png"))
        run.metrics.update(tiles=len(tiles), train_tiles=len(sel.train), audit_tiles=len(sel.audit),
                           train_label_share=len(sel.train) / len(tiles),
                           label_share=(len(sel.train) + len(sel.audit)) / len(tiles))
        run.artifact(run.path("selection.json"))
        run.artifact(run.path("selection.png"))
        print(f"  {len(sel.train)} of {len(tiles)} tile(s) to label for fine-tuning "
              f"({run.metrics['train_label_share']:.2%} of the region), plus {len(sel.audit)} audit tile(s) "
              "for evaluation only")

    run_step("select", inputs, params, body, layout, RunOptions.from_args(args))


def check_counts(args: argparse.Namespace, n_tiles: int, region: str) -> int:
    """The number of audit tiles, after refusing what the region cannot give: a label budget or
    audit count (>= 1: a number of tiles) above its tiles, a budget above --max-label-share,
    and budget and audit set together taking more tiles than there are."""
    budget, audit = args.budget, args.audit
    if n_tiles == 0:
        raise StepError(f"region {region!r} has no tiles to select from (see its ingest)")
    for flag, value in (("--budget", budget), ("--audit", audit)):
        if value >= 1 and value > n_tiles:
            raise StepError(f"{flag} {value:g}: region {region!r} has only {n_tiles} tile(s); give a count "
                            f"up to {n_tiles} or a share (< 1) of the region")
    n, n_audit = budget_count(budget, n_tiles), audit_count(audit, n_tiles, args.min_audit)
    if n > max(1, args.max_label_share * n_tiles):
        raise StepError(f"a budget of {n} tile(s) is {n / n_tiles:.1%} of region {region!r} "
                        f"({n_tiles} tiles), above --max-label-share {args.max_label_share:.1%}")
    if n + n_audit > n_tiles:
        raise StepError(f"--budget {budget:g} and --audit {audit:g}: {n} + {n_audit} tiles, more than the "
                        f"{n_tiles} tile(s) of region {region!r}")
    return n_audit


def plot_selection(sel, uri: str) -> None:
    """Uncertainty against predicted change share of every tile; the picks highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(sel.scores)
    x = [sel.scores[t]["change_fraction"] for t in ids]
    y = [sel.scores[t]["entropy"] for t in ids]
    dis = [sel.scores[t].get("disagreement") for t in ids]
    fig, ax = plt.subplots(figsize=(6.5 if None not in dis else 6, 4), dpi=100)
    if None in dis:
        ax.scatter(x, y, s=8, c="#bbbbbb", label="tiles")
    else:  # shade the tiles by how much the source model disputes the adapted one
        dots = ax.scatter(x, y, s=9, c=dis, cmap="Greys", vmin=0, edgecolors="#999999", linewidths=0.3,
                          label="tiles")
        fig.colorbar(dots, ax=ax, label="disagreement with the source model")
    for group, color, label in ((sel.train, "#d62728", "micro-label set"), (sel.audit, "#1f77b4", "audit set")):
        ax.scatter([sel.scores[t]["change_fraction"] for t in group],
                   [sel.scores[t]["entropy"] for t in group], s=30, c=color, label=label)
    ax.set_xlabel("predicted change share")
    ax.set_ylabel("uncertainty (entropy score)")
    ax.set_title(f"selector: {sel.method}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with storage.storage_for(uri).writing(uri, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
