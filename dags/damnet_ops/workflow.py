"""The DAGs' Params and each step's templated arguments, from ``workflows.json``.

``workflows.json`` is generated from the steps' own option declarations (components/spec.py,
``make params``), so a default, bound or help text is declared once and the DAGs cannot drift
from the command line. Reading it costs a small file read at parse time; nothing is imported
from ``damnet`` or ``components``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import Param

SPEC: dict[str, Any] = json.loads(Path(__file__).with_name("workflows.json").read_text())
REGION_PATTERN: str = SPEC["region_pattern"]
PROFILES: list[str] = list(SPEC["profiles"])
GPU_STEPS: tuple[str, ...] = tuple(SPEC["gpu_steps"])
EXIT_CODES: dict[str, int] = SPEC["exit_codes"]
#: compute profile -> device of the GPU steps (CPU steps keep their default, auto)
DEVICE_TEMPLATE = "{{ %r[params.compute_profile] }}" % SPEC["profiles"]  # noqa: UP031 - Jinja braces


def params(workflow: str) -> dict[str, Param]:
    """The DAG Params of ``workflow`` ("region" or "finetune"), grouped by section."""
    out = {}
    for name, p in SPEC["workflows"][workflow]["params"].items():
        if not p["airflow"]:
            continue
        extra = {"section": p["section"]} if p["section"] else {}
        out[name] = Param(p["default"], description=p["description"], **p["schema"], **extra)
    return out


def arguments(workflow: str, step: str) -> list[str]:
    """``step``'s command-line arguments in ``workflow``, templated from the DAG run's Params."""
    wf = SPEC["workflows"][workflow]
    out: list[str] = []
    for flag, name in wf["arguments"][step]:
        p = wf["params"][name]
        if p["airflow"]:
            out.append(_argument(flag, name, p))
    if step in GPU_STEPS:
        out.append(f"--device={DEVICE_TEMPLATE}")
    return out


def _argument(flag: str, name: str, p: dict[str, Any]) -> str:
    # --flag=VALUE in one argument: an empty value stays an argument and reads as "not set"
    if p["kind"] == "bool":
        return f"{flag}={{{{ 'yes' if params.{name} else 'no' }}}}"
    if "profiles" in p:  # 0: the compute profile's default
        return f"{flag}={{{{ params.{name} or {p['profiles']!r}[params.compute_profile] }}}}"
    return f"{flag}={{{{ params.{name} }}}}"
