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
from damnet.data import split_ids
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
        f1: float | None = None
        per_tile: dict[str, Confusion] = {}
        if holdout is not None:
            conf = evaluate(model, holdout, device=args.device, per_tile=per_tile)
            f1 = conf.f1
            run.metrics.update({f"holdout_{k}": v for k, v in conf.as_dict().items()})
        name = registry.registered_name(layout.region)
        info = registry.log_model(run.path("model.pt"), name, tags={"damnet.region": layout.region})
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        champion = registry.alias_version(client, name, registry.CHAMPION)
        champ_f1: float | None = None
        champ_tiles: dict[str, Confusion] = {}
        if champion is not None and holdout is not None:
            champ_model, _ = registry.load_model(f"models:/{name}/{champion.version}")
            champ_f1 = evaluate(champ_model, holdout, device=args.device, per_tile=champ_tiles).f1
        # The holdout is this gate's audit set (the same rule as promote, evidence included).
        decision = registry.gate({"audit_f1": f1, "audit_confusions": per_tile},
                                 None if champion is None else {"audit_f1": champ_f1, "audit_confusions": champ_tiles},
                                 None, margin=args.margin if champion is not None else 0.0, required=("audit_f1",))
        if champion is None:
            decision = registry.Decision(True, ["first model of " + name], decision.checks)
        registry.record_decision(client, name, version, decision)
        run.info.update(registered={"name": name, "version": version}, decision=decision.to_dict())
        print(f"  registered {name} version {version}: "
              f"{'champion' if decision.promote else 'challenger'} ({'; '.join(decision.reasons)})")
        if f1 is not None:
            print(f"  holdout F1 {f1:.3f} on {len(holdout_ids)} tile(s)")

    run_step("train", inputs, params, body, layout, RunOptions.from_args(args))

