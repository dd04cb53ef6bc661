"""Register the candidate and move the ``champion`` alias only if the promotion gate holds.

Input: the evaluate step's metrics. The candidate is registered in ``damnet-<region>`` and
becomes ``challenger``; it becomes ``champion`` only if every required metric is present,
its audit F1 beats the champion's by --margin, and its source-holdout F1 is at most
--max-source-drop below the source model's. The decision and its reasons are tags of the
model version and decision.json. A rejected candidate ends the step with an error line and
exit status 3 after the decision is recorded; the champion stays where it was.
"""

from __future__ import annotations

import argparse

import mlflow

from components.step import Layout, add_common_arguments, read_json, run_step, upstream, write_json
from damnet import registry
from damnet.errors import DamnetError


class PromotionRejected(DamnetError):
    """The candidate did not pass the gate; nothing was promoted (exit status 3)."""

    exit_code = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--margin", type=float, default=0.01, help="audit F1 the candidate must gain")
    p.add_argument("--max-source-drop", type=float, default=0.05,
                   help="largest allowed drop of source-holdout F1 against the source model")
    p.add_argument("--required", default=",".join(registry.REQUIRED_METRICS),
                   help="comma-separated metrics the candidate must have")


def gate_inputs(metrics: dict) -> tuple[dict, dict | None, float | None]:
    """(candidate, champion, reference source F1) in the gate's terms, from evaluate's metrics.json."""

    def flat(who):
        r = metrics.get(who)
        if r is None:
            return None
        out = {}
        if "audit" in r:
            out["audit_f1"] = r["audit"].get("f1")
        if "source_holdout" in r:
            out["source_f1"] = r["source_holdout"].get("f1")
        return out

    reference = metrics.get("source", metrics.get("champion", {})).get("source_holdout", {}).get("f1")
    return flat("candidate") or {}, flat("champion"), reference


def _registered_already(client, name: str, tags: dict[str, str]) -> str | None:
    """The version of ``name`` registered for this candidate and evaluation (``tags``) by a run
    that failed before recording a decision, if any (a decided version stays as it is)."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such registered model yet
        return None
    for mv in versions:
        if all(mv.tags.get(k) == v for k, v in tags.items()) and "damnet.decision" not in mv.tags:
            return str(mv.version)
    return None


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    evaluation = upstream(layout, "evaluate")
    finetune = upstream(layout, "finetune")
    required = tuple(x.strip() for x in args.required.split(",") if x.strip())
    inputs = {"evaluation": {"uri": evaluation["outputs"]["metrics"], "digest": evaluation["key"]},
              "candidate": {"uri": finetune["outputs"]["model"], "digest": finetune["key"]}}
    params = {"margin": args.margin, "max_source_drop": args.max_source_drop, "required": list(required)}

    def body(run):
        metrics = read_json(evaluation["outputs"]["metrics"])
        candidate, champion, reference = gate_inputs(metrics)
        champion_model = metrics.get("champion", {}).get("model", "")
        if champion is not None and registry.SOURCE_MODEL in champion_model:
            champion_note = "the region has no champion yet: compared with the source champion"
        else:
            champion_note = f"champion: {champion_model}"
        decision = registry.gate(candidate, champion, reference, margin=args.margin,
                                 max_source_drop=args.max_source_drop, required=required)
        decision.reasons.append(champion_note)
        name = registry.registered_name(layout.region)
        client = mlflow.MlflowClient()
        client_tags = {"damnet.finetune_key": finetune["key"], "damnet.evaluate_key": evaluation["key"]}
        # A retry after a failure past this point (before the record was written) finds the
        # version it registered already instead of registering the same candidate twice.
        version = _registered_already(client, name, client_tags)
        if version is None:
            info = registry.log_model(finetune["outputs"]["model"], name,
                                      tags={"damnet.region": layout.region, "damnet.evaluate_key": evaluation["key"]})
            version = str(info.registered_model_version)
        for k, v in client_tags.items():
            client.set_model_version_tag(name, version, k, v)
        for k, v in candidate.items():
            if v is not None:
                client.set_model_version_tag(name, version, f"damnet.{k}", f"{v:.6f}")
        registry.record_decision(client, name, version, decision)
        result = {"registered_model": name, "version": version, "promoted": decision.promote,
                  **decision.to_dict(), "candidate": candidate, "champion": champion,
                  "reference_source_f1": reference}
        write_json(run.path("decision.json"), result)
        run.outputs.update(decision=run.path("decision.json"))
        run.metrics.update(promoted=float(decision.promote))
        run.info.update(registered={"name": name, "version": version})
        run.artifact(run.path("decision.json"))
        mlflow.set_tag("damnet.decision", "promoted" if decision.promote else "rejected")
        verdict = "PROMOTED to champion" if decision.promote else "NOT promoted (challenger only)"
        print(f"  {name} version {version}: {verdict}")
        for reason in decision.reasons:
            print(f"    - {reason}")

    record = run_step("promote", args, inputs, params, body, layout)
    decision = read_json(record["outputs"]["decision"])
    if not decision["promoted"]:
        raise PromotionRejected(
            f"{record['outputs']['decision']}: candidate {decision['registered_model']} version "
            f"{decision['version']} was not promoted: " + "; ".join(decision["reasons"]))
