"""Re-score a region's champion on its audit set and flag a drop (the nightly check).

Inputs: ``damnet-<region>@champion`` and the region's imported audit labels. Compares the
audit F1 with the one recorded when that version was promoted (tag ``damnet.audit_f1``);
a drop larger than --max-drop tags the version ``damnet.drift=flagged`` and ends with an
error (exit 2) so the nightly run shows it.
"""

from __future__ import annotations

import argparse

import mlflow

from components.inputs import micro_labels, model_input, tiles_of
from components.records import Layout, input_of, write_json
from components.step import RunOptions, run_step
from damnet import registry
from damnet.data import TileSet
from damnet.errors import DamnetError
from damnet.evaluate import evaluate


class ChampionDrift(DamnetError):
    """The champion scores worse on its audit set than when it was promoted."""


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    name = registry.registered_name(layout.region)
    if registry.alias_version(mlflow.MlflowClient(), name, registry.CHAMPION) is None:
        print(f"[{layout.region}] rescore: {name} has no champion yet; nothing to re-score")
        return
    champion = model_input(f"models:/{name}@{registry.CHAMPION}")
    audit, l_rec = micro_labels(layout, "audit")
    _, t_rec = tiles_of(layout, labels=None)
    inputs = {"champion": champion, "labels": input_of(l_rec, "labels"), "tiles": input_of(t_rec, "tiles")}
    params = {"max_drop": args.max_drop}

    def body(run):
        model, _ = registry.load_model(champion["uri"])
        tiles = TileSet(t_rec["outputs"]["tiles"], tile_ids=sorted(audit), labels=audit)
        f1 = evaluate(model, tiles, device=args.device).f1
        client = mlflow.MlflowClient()
        version = champion["digest"].rsplit("/", 1)[-1]
        tags = client.get_model_version(name, version).tags
        promoted_f1 = float(tags["damnet.audit_f1"]) if "damnet.audit_f1" in tags else None
        drop = None if promoted_f1 is None else promoted_f1 - f1
        flagged = drop is not None and drop > args.max_drop
        client.set_model_version_tag(name, version, "damnet.last_audit_f1", f"{f1:.6f}")
        client.set_model_version_tag(name, version, "damnet.drift", "flagged" if flagged else "ok")
        result = {"model": champion["uri"], "audit_f1": f1, "promoted_audit_f1": promoted_f1, "drop": drop,
                  "flagged": flagged, "audit_tiles": len(tiles)}
        write_json(run.path("rescore.json"), result)
        run.outputs.update(rescore=run.path("rescore.json"))
        run.metrics.update(audit_f1=f1, flagged=float(flagged), **({"drop": drop} if drop is not None else {}))
        print(f"  {champion['uri']}: audit F1 {f1:.4f}"
              + (f" (at promotion {promoted_f1:.4f}, drop {drop:+.4f})" if drop is not None else ""))

    record = run_step("rescore", inputs, params, body, layout, RunOptions.from_args(args))
    if record["metrics"].get("flagged"):
        raise ChampionDrift(f"{name}: champion {record['inputs']['champion']['uri']} audit F1 fell to "
                            f"{record['metrics']['audit_f1']:.4f}, {record['metrics']['drop']:.4f} below its "
                            f"F1 at promotion (more than --max-drop {args.max_drop})")
