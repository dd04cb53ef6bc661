"""Register the candidate and move the ``champion`` alias only if the promotion gate holds.

Input: the evaluate step's metrics (with each model's per-tile audit confusion matrices).
The candidate is registered in ``damnet-<region>`` and becomes ``challenger``; it becomes
``champion`` only if (:func:`damnet.registry.gate`):

* every required metric is present (audit and source-holdout F1 always are required);
* the audit set can decide: at least --min-audit-tiles tiles, at least --min-change-tiles of
  them with true change; otherwise "not enough audit evidence";
* the lower bound of the --confidence paired bootstrap interval of its audit F1 gain over
  the champion (same tile resamples for both) is above --margin; a tie never promotes;
* its source-holdout F1 is at most --max-source-drop below the source model's.

The decision, its reasons and the intervals (``damnet.audit_f1_ci`` ...) are tags of the model
version and decision.json. A rejected candidate ends the step with an error line and exit
status 3 after the decision is recorded; the champion stays where it was.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import mlflow

from components.records import Layout, input_of, read_json, upstream, write_json
from components.step import RunOptions, run_step
from damnet import registry
from damnet.errors import EXIT_REJECTED, DamnetError


class PromotionRejected(DamnetError):
    """The candidate did not pass the gate; nothing was promoted (exit status 3)."""

    exit_code = EXIT_REJECTED


def gate_inputs(metrics: dict) -> tuple[dict, dict | None, float | None]:
    """(candidate, champion, reference source F1) in the gate's terms, from evaluate's metrics.json."""

    def flat(who):
        r = metrics.get(who)
        if r is None:
            return None
        out = {}
        if "audit" in r:
            out["audit_f1"] = r["audit"].get("f1")
            out["audit_confusions"] = r["audit"].get("per_tile") or {}
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
    # A model that could not be scored on audit tiles and the source holdout never becomes champion.
    required = tuple(dict.fromkeys([*registry.REQUIRED_METRICS,
                                    *(x.strip() for x in args.required.split(",") if x.strip())]))
    evidence = registry.Evidence(min_tiles=args.min_audit_tiles, min_change_tiles=args.min_change_tiles,
                                 confidence=args.confidence, resamples=args.resamples)
    inputs = {"evaluation": input_of(evaluation, "metrics"), "candidate": input_of(finetune, "model")}
    params = {"margin": args.margin, "max_source_drop": args.max_source_drop, "required": list(required),
              "evidence": asdict(evidence)}

    def body(run):
        metrics = read_json(evaluation["outputs"]["metrics"])
        candidate, champion, reference = gate_inputs(metrics)
        champion_model = metrics.get("champion", {}).get("model", "")
        if champion is not None and registry.SOURCE_MODEL in champion_model:
            champion_note = "the region has no champion yet: compared with the source champion"
        else:
            champion_note = f"champion: {champion_model}"
        decision = registry.gate(candidate, champion, reference, margin=args.margin,
                                 max_source_drop=args.max_source_drop, required=required, evidence=evidence)
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
        for k in ("audit_f1", "source_f1"):
            if isinstance(candidate.get(k), int | float):
                client.set_model_version_tag(name, version, f"damnet.{k}", f"{candidate[k]:.6f}")
        registry.record_decision(client, name, version, decision)
        scalars = lambda d: None if d is None else {k: v for k, v in d.items() if k != "audit_confusions"}  # noqa: E731
        result = {"registered_model": name, "version": version, "promoted": decision.promote,
                  **decision.to_dict(), "candidate": scalars(candidate), "champion": scalars(champion),
                  "reference_source_f1": reference}
        write_json(run.path("decision.json"), result)
        run.outputs.update(decision=run.path("decision.json"))
        run.metrics.update(promoted=float(decision.promote))
        audit = decision.checks.get("audit", {})
        for who, metric in (("candidate", "audit_f1"), ("difference", "audit_f1_gain")):
            if who in audit:
                run.metrics.update({f"{metric}_low": audit[who]["low"], f"{metric}_high": audit[who]["high"]})
        if "tiles" in audit:
            run.metrics.update(audit_tiles=audit["tiles"], audit_change_tiles=audit["change_tiles"])
        run.info.update(registered={"name": name, "version": version})
        run.artifact(run.path("decision.json"))
        mlflow.set_tag("damnet.decision", "promoted" if decision.promote else "rejected")
        verdict = "PROMOTED to champion" if decision.promote else "NOT promoted (challenger only)"
        print(f"  {name} version {version}: {verdict}")
        for reason in decision.reasons:
            print(f"    - {reason}")

    record = run_step("promote", inputs, params, body, layout, RunOptions.from_args(args))
    decision = read_json(record["outputs"]["decision"])
    if not decision["promoted"]:
        raise PromotionRejected(
            f"{record['outputs']['decision']}: candidate {decision['registered_model']} version "
            f"{decision['version']} was not promoted: " + "; ".join(decision["reasons"]))
