"""Every parameter of every step, declared once.

Each :class:`Opt` names one command-line option of one ``damnet`` step: its type, default,
bounds, help, whether ``dvc repro`` exposes it (``params.yaml``) and which workflow parameter
of the Airflow DAGs and Kubeflow pipelines feeds it (:data:`WORKFLOWS`). Training defaults
come from :data:`damnet.train.MODES`, the gate's from :class:`damnet.registry.Evidence`, the
validation thresholds from :class:`damnet.validation.ValidationConfig`.

The options themselves are in :mod:`components.step_options`. Derived from them, never
written by hand (:mod:`components.workflows`):

* the ``damnet`` command line (:func:`add_arguments`; bounds are checked at parse time);
* ``dags/damnet_ops/workflows.json``: the DAG Params (with their sections) and each step's
  templated arguments, read by the DAG files and by the Kubeflow pipelines (which may import
  neither ``damnet`` nor ``components``);
* ``params.yaml``: the parameters of the local ``dvc repro`` graph.

``make params`` (``python -m components.workflows``) rewrites both files; a test fails while
they are not current. Adding a training option: a field of ``TrainConfig`` (damnet/train.py)
and one ``Opt`` in :func:`components.step_options.training_options`; the DAG, pipeline and
``params.yaml`` follow.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from damnet import __version__

UNSET: Any = object()

#: Region names: safe in paths, URIs and registry names.
REGION_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
MODEL_PATTERN = r"^models:/[A-Za-z0-9._-]+(@[A-Za-z0-9_-]+|/[0-9]+)$|^(s3://|/)[A-Za-z0-9._/=+-]+\.pt$"
URI_PATTERN = r"^$|^(s3://[a-z0-9][a-z0-9.-]{1,62}/|/)[A-Za-z0-9._/+=-]*$"
DEFAULT_STORE = "runs/store"
IMAGES = {"cpu": f"ghcr.io/damnet-ops/damnet:{__version__}", "gpu": f"ghcr.io/damnet-ops/damnet:{__version__}-cuda"}
#: pod (requests, limits) per kind of step, in Airflow's kubernetes mode and in Kubeflow
RESOURCES = {"cpu": ({"cpu": "1", "memory": "4Gi"}, {"cpu": "2", "memory": "8Gi"}),
             "gpu": ({"cpu": "4", "memory": "24Gi"}, {"cpu": "8", "memory": "48Gi"})}
#: compute profiles of the workflows: the device of the GPU steps
PROFILES = {"cpu-small": "cpu", "cpu": "cpu", "gpu": "cuda"}
#: steps that run on a GPU in kubernetes mode (and take --device from the compute profile)
GPU_STEPS = ("pretrain", "adapt", "finetune", "predict")


@dataclass(frozen=True)
class Opt:
    """One option of one step (see the module docstring)."""

    flag: str
    type: str = "str"  #: str, int, float, bool (a yes/no value), switch (present or not)
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    multiple_of: int | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    required: bool = False
    env: str | None = None  #: the default is read from this environment variable when set
    tunable: bool = False  #: a parameter of the dvc graph (params.yaml)
    group: str | None = None  #: argparse group in --help

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def key(self) -> str:
        """The option's name without dashes (params.yaml keys; DVC unpacks them into flags)."""
        return self.flag.lstrip("-")

    def parse(self, text: str) -> Any:
        """``text`` as this option's value; ArgumentTypeError (argparse's one line) when it is not."""
        if self.type == "bool":
            if text not in ("yes", "no"):
                raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
            return text == "yes"
        if self.type in ("int", "float"):
            return self._number(text)
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise argparse.ArgumentTypeError(f"{text!r} {self.pattern_hint()}")
        return text

    def _number(self, text: str) -> int | float:
        try:
            value: int | float = int(text) if self.type == "int" else float(text)
        except ValueError:
            kind = "a whole number" if self.type == "int" else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not self.in_bounds(value):
            raise argparse.ArgumentTypeError(f"must be {self.bounds_text()}, got {text}")
        return value

    def in_bounds(self, value: float) -> bool:
        lo, hi, lo_open, hi_open = self.minimum, self.maximum, self.exclusive_minimum, self.exclusive_maximum
        return not ((lo is not None and value < lo) or (hi is not None and value > hi)
                    or (lo_open is not None and value <= lo_open) or (hi_open is not None and value >= hi_open)
                    or (self.multiple_of is not None and value % self.multiple_of))

    def bounds_text(self) -> str:
        parts = [f">= {self.minimum:g}" if self.minimum is not None else "",
                 f"> {self.exclusive_minimum:g}" if self.exclusive_minimum is not None else "",
                 f"<= {self.maximum:g}" if self.maximum is not None else "",
                 f"< {self.exclusive_maximum:g}" if self.exclusive_maximum is not None else "",
                 f"a multiple of {self.multiple_of}" if self.multiple_of else ""]
        return " and ".join(p for p in parts if p) or "a number"

    def pattern_hint(self) -> str:
        hints = {REGION_PATTERN: "is not a valid region name: lower-case letters, digits and '-', starting "
                                 "with a letter, at most 40 characters",
                 DEVICE_PATTERN: "is not a torch device: auto, cpu, mps, cuda or cuda:N"}
        return hints.get(self.pattern or "", f"does not match {self.pattern}")

    def schema(self) -> dict[str, Any]:
        """JSON schema of the value (DAG Params)."""
        kind = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "switch": "boolean"}
        out: dict[str, Any] = {"type": kind[self.type]}
        for name, value in (("minimum", self.minimum), ("maximum", self.maximum),
                            ("exclusiveMinimum", self.exclusive_minimum),
                            ("exclusiveMaximum", self.exclusive_maximum), ("multipleOf", self.multiple_of),
                            ("pattern", self.pattern)):
            if value is not None:
                out[name] = value
        if self.choices:
            out["enum"] = list(self.choices)
        return out


def store() -> Opt:
    return Opt("--store", default=DEFAULT_STORE, env="DAMNET_STORE",
               help="store root: local folder or s3:// prefix (env DAMNET_STORE)")


def common(region_default: str | None = None) -> list[Opt]:
    """Options of every step that works on a region of the store."""
    return [
        store(),
        Opt("--region", default=region_default, required=region_default is None, pattern=REGION_PATTERN,
            help="region name (lower-case letters, digits, '-')"),
        Opt("--run-group", default="manual", env="DAMNET_RUN_GROUP",
            help="groups this step's MLflow run under one region run (e.g. the Airflow run id)"),
        Opt("--force", "switch", False, "run even if the step is up to date"),
        Opt("--break-lock", "switch", False,
            "take over this step's lock from a run of it that is gone (see the error that names it)"),
    ]


def device(help: str = "torch device: auto, cpu, cuda, cuda:1, ...") -> Opt:
    return Opt("--device", default="auto", pattern=DEVICE_PATTERN, help=help)


def source_region(help: str = "the labelled source region") -> Opt:
    return Opt("--source-region", default="source", pattern=REGION_PATTERN, help=help)


def source_model(help: str) -> Opt:
    from damnet import registry

    return Opt("--source-model", default=f"models:/{registry.SOURCE_MODEL}@{registry.CHAMPION}", help=help)


#: Short CPU defaults of --steps (a region runs on a laptop in minutes); the workflows' compute
#: profiles "cpu-small" and "gpu" set their own (:data:`PROFILE_STEPS`).


_CACHE: dict[str, list[Opt]] = {}


def options(step: str) -> list[Opt]:
    """The options of ``step`` (KeyError for a step without any)."""
    if step not in _CACHE:
        from components.step_options import STEP_OPTIONS

        _CACHE[step] = STEP_OPTIONS[step]()
    return _CACHE[step]


def steps() -> list[str]:
    from components.step_options import STEP_OPTIONS

    return list(STEP_OPTIONS)


def option(step: str, flag: str) -> Opt:
    for opt in options(step):
        if opt.flag == flag:
            return opt
    raise KeyError(f"damnet {step} has no option {flag}")


# ---------------------------------------------------------------------------- the command line

def add_arguments(parser: argparse.ArgumentParser, step: str) -> None:
    """``step``'s options on its sub-command parser."""
    groups: dict[str, Any] = {}
    for opt in options(step):
        target: Any = parser
        if opt.group:
            target = groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        if opt.type == "switch":
            target.add_argument(opt.flag, action="store_true", help=opt.help)
            continue
        default = os.environ.get(opt.env, opt.default) if opt.env else opt.default
        kwargs: dict[str, Any] = {"default": default, "help": _help(opt)}
        if opt.required:
            kwargs.update(required=True, default=None)
        if opt.choices:
            kwargs["choices"] = opt.choices
        else:
            kwargs["type"] = opt.parse
        if opt.type == "bool":
            kwargs["metavar"] = "{yes,no}"
        target.add_argument(opt.flag, **kwargs)


def _help(opt: Opt) -> str:
    text = opt.help
    if opt.type in ("int", "float") and opt.bounds_text() != "a number":
        text += f" [{opt.bounds_text()}]"
    if not opt.required and opt.default not in (None, ""):
        shown = ("yes" if opt.default else "no") if opt.type == "bool" else opt.default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def standalone(step: str, run: Callable[[argparse.Namespace], None], doc: str | None,
               argv: list[str] | None = None) -> int:
    """``damnet STEP`` without loading every step's module (``python -m components.<module>``: what
    the labels sensor runs every few minutes): the step's own options, one ``error:`` line."""
    from damnet.errors import DamnetError, redact_secrets

    parser = argparse.ArgumentParser(prog=f"damnet {step}", description=doc)
    add_arguments(parser, step)
    try:
        run(parser.parse_args(argv))
    except DamnetError as exc:
        print(f"error: {redact_secrets(str(exc))}", file=sys.stderr)
        return exc.exit_code
    return 0
