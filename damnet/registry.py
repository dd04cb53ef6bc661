"""Model files, the MLflow model registry, and the promotion gate.

A **model file** is a ``torch.save`` of plain data only (``weights_only=True`` loads it):
``{"format": "damnet.model/1", "model_config": {...}, "model": state_dict, "meta": {...}}``.
:func:`train.fit` checkpoints load the same way (their ``model`` entry).

In the registry, each model version is an MLflow *pyfunc from code*
(:mod:`damnet.mlflow_model`): the model file is an artifact and the code is a plain Python
file, so nothing is unpickled when it loads, and it takes any input size divisible by 32
(MLflow 3's default ``pt2`` export would fix the input shape). There is one registered
model per region (``damnet-<region>``) plus the source model (``damnet-source``). Aliases, one
rule (:func:`set_aliases`): ``champion`` is the version in service (moved only by a
promotion); ``challenger`` is the newest candidate the gate refused, while it is newer than
the champion: a promotion removes it. Every version also carries its verdict and reasons as
tags (``damnet.decision``, ``damnet.reasons``).

:func:`gate` is the promotion rule, a pure function of the metrics, so it is tested alone:
the candidate must be *shown* to beat the champion on the audit tiles (the lower bound of a
paired bootstrap interval of the F1 gain clears the margin), on an audit set large enough to
decide, without forgetting the source.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from damnet import storage
from damnet.checkpoint import unreadable
from damnet.errors import DamnetError, redact_secrets
from damnet.metrics import Interval, bootstrap_f1, bootstrap_f1_difference, confusion_counts
from damnet.models import ChangeNet, ModelConfig

log = logging.getLogger(__name__)

MODEL_FORMAT = "damnet.model/1"
MODEL_FILE = "model.pt"
SOURCE_MODEL = "damnet-source"
CHAMPION, CHALLENGER = "champion", "challenger"


class ModelError(DamnetError):
    """A model reference that cannot be resolved or loaded."""


def registered_name(region: str) -> str:
    return SOURCE_MODEL if region == "source" else f"damnet-{region}"


def save_model(model: ChangeNet, uri: str, **meta) -> None:
    """Write ``model`` as a model file (atomic; local path or s3://)."""
    state = {"format": MODEL_FORMAT, "model_config": model.config.to_dict(),
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "meta": json.loads(json.dumps(meta, default=str))}
    with storage.storage_for(uri).writing(uri, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_model_file(path: str | Path) -> tuple[ChangeNet, dict]:
    """A ChangeNet and its meta from a local model file or :func:`train.fit` checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise ModelError(f"{path}: not a readable model file ({unreadable(exc)})") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ModelError(f"{path}: not a DAM-Net model file (no model / model_config entries)")
    try:
        model = ChangeNet(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: weights do not fit the model config it names ({first})") from None
    return model.eval(), dict(state.get("meta", {}))


def load_model(ref: str) -> tuple[ChangeNet, dict]:
    """Load a model from a file/URI (``.pt``) or a registry URI ``models:/NAME@ALIAS`` / ``/VERSION``."""
    if ref.startswith("models:/"):
        import mlflow

        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref)
        except Exception as exc:  # noqa: BLE001 - MlflowException and transport errors alike
            raise ModelError(f"{ref}: cannot be resolved in the MLflow registry "
                             f"({redact_secrets(str(exc).splitlines()[0])})") from None
        found = sorted(Path(local).rglob(MODEL_FILE))
        if not found:
            raise ModelError(f"{ref}: the registered model has no {MODEL_FILE} artifact")
        model, meta = load_model_file(found[0])
        meta.setdefault("registry_uri", ref)
        return model, meta
    if not storage.storage_for(ref).exists(ref):
        raise ModelError(f"{ref}: no such model file")
    with storage.local_copy(ref) as path:
        return load_model_file(path)


# --------------------------------------------------------------------------- registry


def log_model(model_uri: str, registered_model: str | None = None, tags: dict | None = None):
    """Log the model file at ``model_uri`` as a pyfunc in the active run; register it if named.

    Returns MLflow's ``ModelInfo`` (``registered_model_version`` is set when registered).
    """
    import mlflow

    code = Path(__file__).with_name("mlflow_model.py")
    # Inputs are dicts of arrays of any size: no type hints and no signature, on purpose
    # (MLflow warns "Add type hints to the `predict` method"; that is expected).
    with tempfile.TemporaryDirectory() as tmp, storage.local_copy(model_uri) as path:
        local = Path(tmp) / MODEL_FILE
        local.write_bytes(Path(path).read_bytes())
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(code), artifacts={"model": str(local)},
            # The damnet package travels with the model, so it loads (and serves) anywhere.
            code_paths=[str(Path(__file__).parent)],
            registered_model_name=registered_model, tags=tags,
            pip_requirements=["torch==2.13.0", "numpy"],
        )


def alias_version(client, name: str, alias: str):
    """The ModelVersion behind ``name@alias``, or None if the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """Model-version tags of the audit evidence, e.g. ``damnet.audit_f1_ci`` = ``"0.41-0.63"``."""
        audit = self.checks.get("audit", {})
        tags = {"damnet.evidence": audit.get("evidence", "not checked")}
        for key in ("tiles", "change_tiles"):
            if key in audit:
                tags[f"damnet.audit_{key}"] = str(audit[key])
        if "candidate" in audit:
            ci = Interval(**audit["candidate"])
            tags["damnet.audit_f1_ci"] = ci.text()
            tags["damnet.audit_f1_ci_level"] = f"{ci.confidence:g}"
        if "difference" in audit:
            tags["damnet.audit_f1_gain_ci"] = Interval(**audit["difference"]).text(signed=True)
        return tags


REQUIRED_METRICS = ("audit_f1", "source_f1")


@dataclass(frozen=True)
class Evidence:
    """What the gate asks of the audit set before audit F1 may decide, and how it measures
    the uncertainty (a percentile bootstrap over audit tiles, :mod:`damnet.metrics`)."""

    min_tiles: int = 10  #: audit tiles
    min_change_tiles: int = 5  #: audit tiles with at least one truly changed pixel
    confidence: float = 0.9  #: two-sided interval; its lower bound is a one-sided 95 % bound
    resamples: int = 2000
    seed: int = 0


def _number(metrics: dict, key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _audit_check(candidate: dict, champion: dict | None, margin: float, ev: Evidence) -> tuple[bool, str, dict]:
    """(passed, reason, checks) of the audit comparison; see :func:`gate`."""
    tiles = candidate.get("audit_confusions") or {}
    if not tiles:
        return False, ("not enough audit evidence: the evaluation has no per-tile audit results "
                       "(re-run evaluate)"), {"evidence": "not enough", "tiles": 0}
    counts = confusion_counts(tiles)
    changed = counts[:, 0] + counts[:, 2]
    n, k = len(counts), int((changed > 0).sum())
    checks: dict[str, object] = {"tiles": n, "change_tiles": k, "changed_pixels": int(changed.sum()),
                                 "margin": margin, "evidence": "not enough"}
    if n < ev.min_tiles:
        return False, (f"not enough audit evidence: {n} audit tile{'s' if n != 1 else ''}, the gate needs "
                       f"at least {ev.min_tiles} to decide (label more: select --audit)"), checks
    if k == 0:
        return False, (f"not enough audit evidence: none of the {n} audit tiles holds a changed pixel, "
                       "so audit F1 is undefined"), checks
    if k < ev.min_change_tiles:
        return False, (f"not enough audit evidence: {k} of {n} audit tiles hold true change, the gate "
                       f"needs at least {ev.min_change_tiles} (label more: select --audit)"), checks
    champ_tiles = None
    if champion is not None:
        champ_tiles = champion.get("audit_confusions") or {}
        if sorted(champ_tiles) != sorted(tiles):
            return False, ("the champion was not scored on the same audit tiles: the two cannot be "
                           "compared (re-run evaluate)"), checks
    checks["evidence"] = "enough"
    cand = bootstrap_f1(tiles, confidence=ev.confidence, resamples=ev.resamples, seed=ev.seed)
    checks["candidate"] = cand.as_dict()
    pct = _pct(ev.confidence)
    head = (f"audit F1 {cand.estimate:.3f} ({pct} interval {cand.text()}, {n} tile{'s' if n != 1 else ''}, "
            f"{k} with change)")
    if champ_tiles is None:  # compared with a model that finds nothing (F1 0)
        gain, low = cand.estimate, cand.low
        head += ", no champion to compare with"
        what = f"its lower bound {low:.3f}"
    else:
        order = list(tiles)
        champ_values = [champ_tiles[t] for t in order]
        champ = bootstrap_f1(champ_values, confidence=ev.confidence, resamples=ev.resamples, seed=ev.seed)
        diff = bootstrap_f1_difference([tiles[t] for t in order], champ_values, confidence=ev.confidence,
                                       resamples=ev.resamples, seed=ev.seed)
        checks["champion"], checks["difference"] = champ.as_dict(), diff.as_dict()
        gain, low = diff.estimate, diff.low
        head += (f", against the champion's {champ.estimate:.3f} ({champ.text()}): gain {gain:+.3f} "
                 f"({pct} interval {diff.text(signed=True)})")
        what = f"the gain's lower bound {low:+.3f}"
    if champ_tiles is not None and abs(gain) < 1e-12 and margin >= 0:  # the rule refuses it anyway: say why
        return False, f"{head}: a tie never promotes", checks
    if low > margin:
        return True, f"{head}; {what} clears the margin {margin:g}", checks
    return False, f"{head}; {what} does not clear the margin {margin:g}: not shown to be better", checks


def gate(candidate: dict, champion: dict | None, reference_source_f1: float | None,
         margin: float = 0.01, max_source_drop: float = 0.05,
         required: tuple[str, ...] = REQUIRED_METRICS, evidence: Evidence | None = None) -> Decision:
    """Should ``candidate`` replace ``champion``?

    ``candidate`` / ``champion``: ``audit_f1``, ``source_f1`` and ``audit_confusions`` (tile id
    -> that tile's ``tp, fp, fn, tn`` on the audit set; the champion scored on the same tiles).
    The candidate is promoted only if all of these hold:

    * every metric in ``required`` is present (and finite) for the candidate;
    * the audit set is evidence enough to decide (``evidence``): at least ``min_tiles`` audit
      tiles, at least ``min_change_tiles`` of them with a truly changed pixel (with none, F1 is
      undefined). Otherwise: "not enough audit evidence", never a promotion;
    * the candidate is shown to beat the champion: the lower bound of the ``confidence``
      (default 90 %) paired-bootstrap interval of F1(candidate) - F1(champion), both scored on
      the same tile resamples, is above ``margin`` (no champion: the lower bound of the
      candidate's own F1 interval is). So a tie (gain 0) never promotes at a margin >= 0; a
      negative margin is an explicit override that accepts a candidate up to that much worse;
    * its source-holdout F1 is at most ``max_source_drop`` below ``reference_source_f1``
      (the source model's, on the same holdout): adaptation may not forget the source. When
      ``source_f1`` is required, a missing reference refuses too.
    """
    ev = evidence or Evidence()
    missing = [k for k in required if _number(candidate, k) is None]
    if missing:
        return Decision(False, [f"candidate lacks required metric(s): {', '.join(missing)}"],
                        {"missing": missing})
    ok_audit, reason, audit_checks = _audit_check(candidate, champion, margin, ev)
    reasons, checks = [reason], {"audit": audit_checks}
    ok_source = True
    src = _number(candidate, "source_f1")
    if reference_source_f1 is not None and src is not None:
        drop = reference_source_f1 - src
        ok_source = drop <= max_source_drop
        checks["source_f1"] = {"candidate": src, "reference": reference_source_f1, "drop": drop,
                               "max_drop": max_source_drop}
        where = f"{drop:.3f} below" if drop > 0 else ("level with" if drop == 0 else f"{-drop:.3f} above")
        reasons.append(f"source-holdout F1 {src:.3f} is {where} the source model's {reference_source_f1:.3f} "
                       f"({'within' if ok_source else 'beyond'} the allowed drop of {max_source_drop:g})")
    elif "source_f1" in required:
        ok_source = False
        reasons.append("source-holdout F1 cannot be checked: the source model has no score on the "
                       "source holdout")
    return Decision(ok_audit and ok_source, reasons, checks)


def record_decision(client, name: str, version: str, decision: Decision) -> None:
    """Tag the version with the decision, then set the aliases (:func:`set_aliases`)."""
    client.set_model_version_tag(name, version, "damnet.decision",
                                 "promoted" if decision.promote else "rejected")
    client.set_model_version_tag(name, version, "damnet.reasons", "; ".join(decision.reasons)[:4900])
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    set_aliases(client, name, version, decision.promote)


def set_aliases(client, name: str, version: str, promote: bool) -> None:
    """A promoted ``version`` becomes ``champion`` and no ``challenger`` is left (the candidate
    it named lost to this one or is this one); a refused one becomes ``challenger`` and the
    champion stays. Idempotent: a retry re-applies a recorded decision."""
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        if alias_version(client, name, CHALLENGER) is not None:
            client.delete_registered_model_alias(name, CHALLENGER)
        log.info("%s version %s is now %s", name, version, CHAMPION)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)


def version_tagged(client, name: str, tag: str, value: str):
    """The newest version of ``name`` whose tag ``tag`` is ``value``, or None (also when the
    registered model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    found = [mv for mv in versions if mv.tags.get(tag) == value]
    return max(found, key=lambda mv: int(mv.version)) if found else None
