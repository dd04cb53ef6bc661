"""Train a change model with full labels (the source model) and register it.

Input: the region's tiles (every tile labelled). A stable share of tiles (--holdout) is
kept out of training: it is the source holdout on which later steps measure forgetting.
Output: model.pt, split.json, metrics; the model is registered as ``damnet-source`` (or
``damnet-<region>``) and becomes ``champion`` if there is none yet or it beats the current
champion on the same holdout.
"""

from __future__ import annotations

import argparse

import mlflow
import torch

from components.inputs import tiles_of
from components.records import Layout, StepError, input_of, write_json
from components.step import RunOptions, run_step
from components.training import drop_checkpoint, key_params, stream, train_config
from damnet import registry
from damnet.data import TileSet, split_ids
from damnet.evaluate import evaluate
from damnet.metrics import Confusion
from damnet.models import ChangeNet, count_parameters, preset
from damnet.train import fit


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    tiles, ingest_record = tiles_of(layout)
    cfg = train_config(args, "supervised")
    params = {"train": key_params(cfg), "preset": args.preset, "holdout": args.holdout, "margin": args.margin}
    inputs = {"tiles": input_of(ingest_record, "tiles")}

    def body(run):
        if not tiles.has_labels():
            raise StepError(f"region {layout.region!r}: training needs every tile labelled")
        train_ids, holdout_ids = split_ids(tiles.ids, args.holdout, seed=args.seed)
        index = {t: i for i, t in enumerate(tiles.ids)}
        train_set = tiles.subset([index[t] for t in train_ids])
        write_json(run.path("split.json"), {"train": train_ids, "holdout": holdout_ids})
        torch.manual_seed(args.seed)  # the initial weights too: same inputs, same model
        model = ChangeNet(preset(args.preset))
        result = fit(model, cfg, source=stream(train_set, cfg, "source"), out_dir=run.path("checkpoint"),
                     on_log=run.on_log())
        registry.save_model(model, run.path("model.pt"), region=layout.region, mode="supervised",
                            steps=cfg.steps, preset=args.preset)
        run.outputs.update(model=run.path("model.pt"), split=run.path("split.json"))
        drop_checkpoint(run)
        run.metrics.update(train_seconds=result.seconds, parameters=count_parameters(model),
                           train_tiles=len(train_ids), holdout_tiles=len(holdout_ids))
        holdout = tiles.subset([index[t] for t in holdout_ids]) if holdout_ids else None
        per_tile: dict[str, Confusion] = {}
        f1: float | None = None
        if holdout is not None:
            conf = evaluate(model, holdout, device=args.device, per_tile=per_tile)
            f1 = conf.f1
            run.metrics.update({f"holdout_{k}": v for k, v in conf.as_dict().items()})
        name, version, decision = _register(run, args, holdout, f1, per_tile, len(tiles))
        run.info.update(registered={"name": name, "version": version}, decision=decision.to_dict())
        print(f"  registered {name} version {version}: "
              f"{'champion' if decision.promote else 'challenger'} ({'; '.join(decision.reasons)})")
        if f1 is not None:
            print(f"  holdout F1 {f1:.3f} on {len(holdout_ids)} tile(s)")

    run_step("train", inputs, params, body, layout, RunOptions.from_args(args))



def _register(run, args: argparse.Namespace, holdout: TileSet | None, f1: float | None,
              per_tile: dict[str, Confusion], n_tiles: int) -> tuple[str, str, registry.Decision]:
    """Register ``run``'s model and decide whether it becomes champion (the holdout is the
    gate's audit set; the same rule as promote). A retry of a run killed after registering
    finds its version (tag ``damnet.output``) instead of registering the model twice, and
    one killed after deciding re-applies that decision."""
    name = registry.registered_name(run.layout.region)
    client = mlflow.MlflowClient()
    found = registry.version_tagged(client, name, "damnet.output", run.out)
    if found is not None and "damnet.decision" in found.tags:
        decision = registry.Decision(found.tags["damnet.decision"] == "promoted",
                                     found.tags.get("damnet.reasons", "").split("; "))
        registry.set_aliases(client, name, str(found.version), decision.promote)
        return name, str(found.version), decision
    if found is None:
        info = registry.log_model(run.path("model.pt"))
        found = mlflow.register_model(info.model_uri, name, tags={"damnet.region": run.layout.region,
                                                                  "damnet.output": run.out})
    version = str(found.version)
    champion = registry.alias_version(client, name, registry.CHAMPION)
    if holdout is None:  # nothing to measure it on: never a champion, not even the first one
        decision = registry.Decision(False, [
            f"not evaluated: no holdout tile (the region has {n_tiles} tile(s), --holdout {args.holdout}); "
            "a model that could not be evaluated does not become champion"])
    elif champion is None:
        decision = registry.Decision(True, [f"first model of {name} (holdout F1 {f1:.3f})"])
    else:
        champ_model, _ = registry.load_model(f"models:/{name}/{champion.version}")
        champ_tiles: dict[str, Confusion] = {}
        champ_f1 = evaluate(champ_model, holdout, device=args.device, per_tile=champ_tiles).f1
        decision = registry.gate({"audit_f1": f1, "audit_confusions": per_tile},
                                 {"audit_f1": champ_f1, "audit_confusions": champ_tiles},
                                 None, margin=args.margin, required=("audit_f1",))
    registry.record_decision(client, name, version, decision)
    return name, version, decision
