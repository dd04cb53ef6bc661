"""Model files, the MLflow model registry, and the promotion gate.

A **model file** is a ``torch.save`` of plain data only (``weights_only=True`` loads it):
``{"format": "damnet.model/1", "model_config": {...}, "model": state_dict, "meta": {...}}``.
:func:`train.fit` checkpoints load the same way (their ``model`` entry).

In the registry, each model version is an MLflow *pyfunc from code*
(:mod:`damnet.mlflow_model`): the model file is an artifact and the code is a plain Python
file, so nothing is unpickled when it loads, and it takes any input size divisible by 32
(MLflow 3's default ``pt2`` export would fix the input shape). There is one registered
model per region (``damnet-<region>``) plus the source model (``damnet-source``); aliases
``champion`` (serving) and ``challenger`` (the latest candidate).

:func:`gate` is the promotion rule, a pure function of the metrics, so it is tested alone.
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
from damnet.errors import DamnetError
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
        raise ModelError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})") from None
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
                             f"({str(exc).splitlines()[0]})") from None
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


REQUIRED_METRICS = ("audit_f1", "source_f1")


def _number(metrics: dict, key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def gate(candidate: dict, champion: dict | None, reference_source_f1: float | None,
         margin: float = 0.01, max_source_drop: float = 0.05,
         required: tuple[str, ...] = REQUIRED_METRICS) -> Decision:
    """Should ``candidate`` replace ``champion``?

    * every metric in ``required`` is present (and finite) for the candidate;
    * its audit F1 beats the champion's by at least ``margin`` (no champion: it must beat 0);
    * its source-holdout F1 is at most ``max_source_drop`` below ``reference_source_f1``
      (the source model's, on the same holdout): adaptation may not forget the source.
    """
    reasons, checks = [], {}
    missing = [k for k in required if _number(candidate, k) is None]
    if missing:
        reasons.append(f"candidate lacks required metric(s): {', '.join(missing)}")
        return Decision(False, reasons, {"missing": missing})
    cand_f1 = _number(candidate, "audit_f1")
    champ_f1 = None if champion is None else _number(champion, "audit_f1")
    if champion is not None and champ_f1 is None:
        reasons.append("champion has no audit_f1 on this audit set; it cannot be compared")
        return Decision(False, reasons, {"missing": ["champion.audit_f1"]})
    bar = (champ_f1 if champ_f1 is not None else 0.0) + margin
    checks["audit_f1"] = {"candidate": cand_f1, "champion": champ_f1, "needed": bar}
    ok_audit = cand_f1 >= bar if champ_f1 is not None else cand_f1 > 0
    who = f"champion {champ_f1:.4f} + margin {margin}" if champ_f1 is not None else "0 (no champion)"
    reasons.append(f"audit F1 {cand_f1:.4f} {'beats' if ok_audit else 'does not beat'} {who}")
    ok_source = True
    if reference_source_f1 is not None:
        src = _number(candidate, "source_f1")
        drop = reference_source_f1 - src
        ok_source = drop <= max_source_drop
        checks["source_f1"] = {"candidate": src, "reference": reference_source_f1, "drop": drop,
                               "max_drop": max_source_drop}
        reasons.append(f"source holdout F1 {src:.4f} is {drop:+.4f} below the source model's "
                       f"{reference_source_f1:.4f} ({'within' if ok_source else 'beyond'} "
                       f"{max_source_drop})")
    return Decision(ok_audit and ok_source, reasons, checks)


def record_decision(client, name: str, version: str, decision: Decision) -> None:
    """Tag the version with the decision; set ``challenger``; move ``champion`` if it passed."""
    client.set_model_version_tag(name, version, "damnet.decision",
                                 "promoted" if decision.promote else "rejected")
    client.set_model_version_tag(name, version, "damnet.reasons", "; ".join(decision.reasons)[:4900])
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        log.info("%s version %s is now %s", name, version, CHAMPION)
