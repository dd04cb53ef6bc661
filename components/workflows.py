"""Files generated from the step options (:mod:`components.spec`): the workflows' parameters
and step arguments (``dags/damnet_ops/workflows.json``, read by the Airflow DAGs and the Kubeflow
pipelines) and the dvc graph's ``params.yaml``. ``python -m components.workflows`` (``make
params``) rewrites them; ``--check`` says which are stale (a test runs it)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.spec import (
    DEFAULT_STORE,
    GPU_STEPS,
    IMAGES,
    MODEL_PATTERN,
    PROFILES,
    REGION_PATTERN,
    RESOURCES,
    UNSET,
    URI_PATTERN,
    Opt,
    option,
    options,
)
from components.step_options import DEFAULT_STEPS, PROFILE_STEPS
from damnet.errors import EXIT_BAD_INPUT, EXIT_REJECTED, EXIT_UNAVAILABLE

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_JSON = ROOT / "dags" / "damnet_ops" / "workflows.json"
PARAMS_YAML = ROOT / "params.yaml"


@dataclass(frozen=True)
class Exposed:
    """A workflow parameter: feeds ``flag`` of ``steps`` (the first one declares it)."""

    param: str
    flag: str
    steps: tuple[str, ...]
    section: str | None = None
    default: Any = UNSET  #: the workflow's own default where it differs (e.g. an example region)
    profiles: bool = False  #: 0 means "the compute profile's default" (steps per profile)
    airflow: bool = True  #: a Param of the Airflow DAG
    kubeflow: bool = True  #: a parameter of the Kubeflow pipeline
    description: str | None = None
    schema: dict[str, Any] | None = None  #: what the workflow asks beyond the option (absolute paths)

    def option(self) -> Opt:
        return option(self.steps[0], self.flag)


WORKFLOW_STEPS = {"region": ("ingest", "validate", "pretrain", "adapt", "select", "export-labels"),
                  "finetune": ("import-labels", "finetune", "evaluate", "promote", "predict", "report")}
_V = "Validation"
_G = "Promotion gate"
_I = "Imagery"
WORKFLOWS: dict[str, list[Exposed]] = {
    "region": [
        Exposed("region", "--region", WORKFLOW_STEPS["region"], default="newtown"),
        Exposed("source_model", "--source-model", ("adapt",), schema={"pattern": MODEL_PATTERN}),
        Exposed("source_region", "--source-region", ("validate", "pretrain", "adapt")),
        Exposed("label_budget", "--budget", ("select",), section="Micro labels"),
        Exposed("audit", "--audit", ("select",), section="Micro labels"),
        Exposed("min_audit", "--min-audit", ("select",), section="Micro labels"),
        Exposed("max_label_share", "--max-label-share", ("select",), section="Micro labels"),
        Exposed("selector", "--selector", ("select",), section="Micro labels"),
        Exposed("reference", "--reference", ("select",), section="Micro labels"),
        Exposed("pretrain", "--use-pretrain", ("adapt",), section="Adaptation", kubeflow=False,
                description="MAE-pretrain the encoder on both domains first"),
        Exposed("adapt_steps", "--steps", ("adapt",), section="Adaptation", profiles=True),
        Exposed("restyle", "--restyle", ("adapt",), section="Adaptation"),
        Exposed("match_gsd", "--match-gsd", ("adapt",), section="Adaptation"),
        Exposed("lambda_adv", "--lambda-adv", ("adapt",), section="Adaptation"),
        Exposed("entropy_weight", "--entropy-weight", ("adapt",), section="Adaptation"),
        Exposed("match_histograms", "--match-histograms", ("adapt",), section="Adaptation"),
        Exposed("imagery", "--imagery", ("ingest",), section=_I, default="", schema={"pattern": URI_PATTERN}),
        Exposed("tile_size", "--tile-size", ("ingest",), section=_I),
        Exposed("bands", "--bands", ("ingest",), section=_I),
        Exposed("label_threshold", "--label-threshold", ("ingest",), section=_I),
        *(Exposed(o, f"--{o.replace('_', '-')}", ("validate",), section=_V)
          for o in ("max_misregistration_px", "tile_misregistration_severity", "max_nodata_fraction",
                    "max_mean_nodata_fraction", "mostly", "min_tiles")),
    ],
    "finetune": [
        Exposed("region", "--region", WORKFLOW_STEPS["finetune"], default="newtown"),
        Exposed("labels", "--labels", ("import-labels",), airflow=False, schema={"pattern": URI_PATTERN}),
        Exposed("source_region", "--source-region", ("finetune", "evaluate")),
        Exposed("finetune_steps", "--steps", ("finetune",), profiles=True),
        Exposed("predict_tile", "--tile", ("predict",)),
        # The workflows never promote a candidate that is not at least as good: margin >= 0.
        Exposed("margin", "--margin", ("promote",), section=_G, schema={"minimum": 0},
                description="the audit F1 gain's lower bound (paired bootstrap over audit tiles) must exceed this; "
                "a tie never promotes"),
        *(Exposed(o, f"--{o.replace('_', '-')}", ("promote",), section=_G)
          for o in ("max_source_drop", "min_audit_tiles", "min_change_tiles", "confidence")),
    ],
}


def _param(exp: Exposed) -> dict[str, Any]:
    opt = exp.option()
    default = opt.default if exp.default is UNSET else exp.default
    schema = {**opt.schema(), **(exp.schema or {})}
    description = exp.description or opt.help
    if exp.profiles:
        default = 0
        schema = {"type": "integer", "minimum": 0}
        description = f"{opt.help}; 0: the compute profile's default"
    elif default is None:
        default = ""
    out = {"default": default, "schema": schema, "description": description, "section": exp.section,
           "airflow": exp.airflow, "kubeflow": exp.kubeflow, "kind": opt.type}
    if exp.profiles:
        step = exp.steps[0]
        out["profiles"] = {p: PROFILE_STEPS[step].get(p, DEFAULT_STEPS[step]) for p in PROFILES}
    return out


def workflows() -> dict[str, Any]:
    """The content of workflows.json."""
    out: dict[str, Any] = {
        "format": "damnet.workflows/1",
        "note": "generated by `python -m components.spec` from components/spec.py; do not edit",
        "region_pattern": REGION_PATTERN, "default_store": DEFAULT_STORE, "profiles": PROFILES,
        "gpu_steps": list(GPU_STEPS),
        "images": IMAGES, "resources": RESOURCES,
        "exit_codes": {"bad_input": EXIT_BAD_INPUT, "rejected": EXIT_REJECTED, "unavailable": EXIT_UNAVAILABLE},
        "workflows": {},
    }
    for name, exposed in WORKFLOWS.items():
        params = {e.param: _param(e) for e in exposed}
        params["compute_profile"] = {
            "default": "cpu", "schema": {"type": "string", "enum": list(PROFILES)}, "section": None,
            "description": "where the GPU steps run and their default steps: " + ", ".join(PROFILES),
            "airflow": True, "kubeflow": False, "kind": "str"}
        arguments: dict[str, list[list[str]]] = {}
        for step in WORKFLOW_STEPS[name]:
            arguments[step] = [[e.flag, e.param] for e in exposed if step in e.steps]
        out["workflows"][name] = {"params": params, "steps": list(WORKFLOW_STEPS[name]), "arguments": arguments}
    return out


# ---------------------------------------------------------------------------- params.yaml

#: What the local dvc graph sets differently from the step defaults: sized for a whole
#: `dvc repro` in about 1.5-3 minutes on 2 CPU cores (far too little data and training for a
#: useful model; the gate keeps its real defaults, so the toy candidate may well be refused).
DVC_VALUES: dict[str, dict[str, Any]] = {
    "ingest": {"tile-size": 64},
    "train": {"steps": 30, "batch-size": 4, "crop": 64},
    "adapt": {"steps": 10, "batch-size": 4, "crop": 64},
    "select": {"budget": 2, "max-label-share": 0.1},
    "finetune": {"steps": 10, "batch-size": 4, "crop": 64},
    "predict": {"tile": 128, "overlap": 32},
}
DVC_STEPS = ("ingest", "validate", "train", "adapt", "select", "finetune", "promote", "predict", "report")
DVC_HEADER = """\
# GENERATED by `make params` (python -m components.spec) from components/spec.py: do not edit.
# Parameters of the local DVC pipeline (dvc.yaml, explained in docs/dvc.md). Each step's
# section is handed to `damnet <step>` as its options (DVC unpacks ${step} into --key value);
# `damnet <step> --help` explains them. Try another value without editing:
#   dvc exp run -S adapt.steps=20
# The values that differ from the steps' defaults (components/spec.py DVC_VALUES) size a whole
# `dvc repro` for 1.5-3 minutes on 2 CPU cores: far too little for a useful model.
"""
DVC_EXTRA = """\
device: cpu              # torch device of every training and inference step

# false: a refused candidate (exit 3, decision recorded) does not stop `dvc repro`; predict
# and report still run with the champion that stayed. true: the promote stage fails.
fail_on_reject: false

# The labelled source region (always named `source`: registry model damnet-source).
source:
  style: source          # damnet synth --style
  scenes: 2
  size: 256
  seed: 0

# Target regions, one chain of stages each (dvc.yaml foreach); key = region name, value = its
# synthetic imagery. The ground truth goes to data/truth/<region> (the simulated labeler's).
targets:
  newtown:
    style: target_season # target_season, target_sensor or target_resolution
    scenes: 2
    size: 256
    seed: 1
"""


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if value in ("", "yes", "no") or not re.fullmatch(r"[A-Za-z0-9_./:@-]+", value) \
            else value
    return repr(value) if isinstance(value, float) else str(value)


def params_yaml() -> str:
    """The content of params.yaml."""
    lines = [DVC_HEADER, DVC_EXTRA]
    for step in DVC_STEPS:
        lines.append(f"{step}:")
        for opt in options(step):
            if not opt.tunable or opt.flag == "--device":
                continue
            value = DVC_VALUES.get(step, {}).get(opt.key, opt.default)
            if value is None:
                continue
            if opt.type == "bool":
                value = "yes" if value else "no"
            lines.append(f"  {opt.key}: {_yaml_value(value)}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- generation

def generated() -> dict[Path, str]:
    """Every generated file and the content it must have."""
    return {WORKFLOWS_JSON: json.dumps(workflows(), indent=1) + "\n", PARAMS_YAML: params_yaml()}


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def stale() -> list[Path]:
    return [path for path, text in generated().items() if not path.exists() or path.read_text() != text]


def main(argv: Iterable[str] | None = None, write: Callable[[Path, str], Any] = Path.write_text) -> int:
    p = argparse.ArgumentParser(prog="python -m components.spec", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only say which generated files are stale (exit 1)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.check:
        for path in stale():
            print(f"stale: {_shown(path)} (run: make params)")
        return 1 if stale() else 0
    for path, text in generated().items():
        write(path, text)
        print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
