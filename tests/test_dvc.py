"""The project's real DVC pipeline (dvc.yaml) end to end, in a scratch git repository.

The scratch repository holds copies of dvc.yaml, .dvcignore, data/.gitignore, .gitignore and
the code folders the stages depend on (``damnet``, ``components``; PYTHONPATH points the
``damnet`` command at these copies, so the code DVC hashes is the code that runs), and the
project's params.yaml with only its sizes made smaller. Checks: ``dvc repro`` runs every
stage, the evaluate metrics reach ``dvc metrics show``, a second ``dvc repro`` runs nothing,
and ``dvc exp run -S finetune.steps=...`` re-runs exactly the stages downstream of finetune.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The smallest run the steps accept: 2 scenes of 128 px = 8 tiles of 64 px per region, a
# few training steps. Keys must exist in the project's params.yaml (checked below).
TINY = {
    "source": {"scenes": 2, "size": 128},
    "train": {"steps": 4},
    "adapt": {"steps": 2},
    "select": {"budget": 1, "audit": 2, "max-label-share": 0.5},
    "finetune": {"steps": 2},
    "predict": {"tile": 64, "overlap": 16},
}
TINY_TARGET = {"scenes": 2, "size": 128}
# What a change of finetune.* must re-run, and nothing else.
AFTER_FINETUNE = ("finetune", "evaluate", "promote", "predict", "report")


def tiny_params() -> tuple[dict, str]:
    """The project's params.yaml with the sizes above and only its first target region."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in TINY.items():
        for key, value in values.items():
            assert key in params[group], f"params.yaml has no {group}.{key}"
            params[group][key] = value
    region, target = next(iter(params["targets"].items()))
    assert set(TINY_TARGET) <= set(target), f"params.yaml targets.{region} lacks {set(TINY_TARGET) - set(target)}"
    params["targets"] = {region: {**target, **TINY_TARGET}}
    return params, region


def make_repo(repo: Path, params: dict) -> None:
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    if (ROOT / "data" / ".gitignore").exists():
        (repo / "data").mkdir()
        shutil.copy2(ROOT / "data" / ".gitignore", repo / "data" / ".gitignore")
    for name in ("damnet", "components"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def environment(repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DAMNET_", "GIT_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(repo),
               DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false")
    return env


class Shell:
    def __init__(self, repo: Path):
        self.repo = repo
        self.env = environment(repo)

    def __call__(self, *argv: str, timeout: int = 600) -> str:
        done = subprocess.run(list(argv), cwd=self.repo, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{output[-6000:]}"
        return output

    def dvc(self, *args: str) -> str:
        return self(str(BIN / "dvc"), *args)

    def commit(self, message: str) -> None:
        self("git", "add", "-A")
        self("git", "commit", "-q", "-m", message)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def experiments_with(shown: list, group: str, key: str) -> list:
    """Values of params.yaml ``group.key`` of every named experiment in ``dvc exp show --json``."""
    found = []

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            data = node.get("data")
            if node.get("name") and isinstance(data, dict):
                values = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                if key in values.get(group, {}):
                    found.append(values[group][key])
            for value in node.values():
                walk(value)

    walk(shown)
    return found


@pytest.mark.slow
def test_dvc_repro_runs_a_region_then_only_what_changed(tmp_path):
    params, region = tiny_params()
    repo = tmp_path / "repo"
    make_repo(repo, params)
    sh = Shell(repo)
    sh("git", "init", "-q")
    sh("git", "config", "user.name", "DVC test")
    sh("git", "config", "user.email", "dvc-test@example.invalid")
    sh("git", "config", "commit.gpgsign", "false")
    sh.dvc("init", "-q")
    sh.dvc("config", "core.analytics", "false")
    sh.commit("pipeline")
    stages = set(sh.dvc("stage", "list", "--name-only").split())
    assert {"synth_source", "ingest_source", "train"} <= stages
    assert {f"{s}@{region}" for s in AFTER_FINETUNE} <= stages

    # 1. The whole graph: every stage runs, the chain ends with a report.
    first = sh.dvc("repro")
    assert ran(first) == stages, first[-4000:]
    store = repo / "data" / "store" / "regions"
    for step in ("ingest", "validate", "adapt", "select", "export-labels", "import-labels", "finetune",
                 "evaluate", "promote", "predict", "report"):
        record = json.loads((store / region / "steps" / f"{step}.json").read_text())
        assert record["step"] == step and record["region"] == region
    assert json.loads((store / "source" / "steps" / "train.json").read_text())["metrics"]["train_tiles"] > 0
    assert (repo / "data" / "store" / "labels" / region / "export.json").is_file()
    assert (repo / "data" / "plots" / region / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "<html" in (repo / "data" / "reports" / f"{region}.html").read_text().lower()

    # Metrics: copied out of the evaluate record, and shown by `dvc metrics show`.
    metrics_path = f"data/metrics/{region}/evaluate.json"
    metrics = json.loads((repo / metrics_path).read_text())
    evaluate = json.loads((store / region / "steps" / "evaluate.json").read_text())
    assert metrics == evaluate["metrics"]
    assert 0.0 <= metrics["candidate_audit_f1"] <= 1.0
    assert 0.0 <= metrics["champion_audit_f1"] <= 1.0
    shown = json.loads(sh.dvc("metrics", "show", "--json"))
    workspace = shown[""]["data"] if "" in shown else shown["workspace"]["data"]
    assert workspace[metrics_path]["data"]["candidate_audit_f1"] == metrics["candidate_audit_f1"]

    # The real gate (margin from params.yaml) decided; whatever it decided is recorded in
    # the record, the metrics and the registry, and did not stop the pipeline.
    promoted = json.loads((repo / "data" / "metrics" / region / "promote.json").read_text())["promoted"]
    assert promoted in (0.0, 1.0)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'data' / 'mlflow.db'}")
    version = client.get_model_version_by_alias(f"damnet-{region}", "champion" if promoted else "challenger")
    assert version.tags["damnet.decision"] == ("promoted" if promoted else "rejected")
    assert client.get_model_version_by_alias("damnet-source", "champion") is not None
    predict = json.loads((store / region / "steps" / "predict.json").read_text())
    expected = f"damnet-{region}/{version.version}" if promoted else "damnet-source/"
    assert predict["inputs"]["model"]["digest"].startswith(expected)
    sh.commit("reproduced")

    # 2. Nothing changed: nothing runs.
    again = sh.dvc("repro")
    assert not ran(again), again
    assert all(f"Stage '{s}' didn't change" in again for s in stages), again
    assert "Data and pipelines are up to date" in again

    # 3. A fine-tuning parameter: exactly the stages downstream of finetune run again.
    steps = params["finetune"]["steps"] + 1
    exp = sh.dvc("exp", "run", "-S", f"finetune.steps={steps}")
    assert ran(exp) == {f"{s}@{region}" for s in AFTER_FINETUNE}, exp[-4000:]
    changed = json.loads(sh.dvc("params", "diff", "--json"))["params.yaml"]["finetune.steps"]
    assert (changed["old"], changed["new"]) == (params["finetune"]["steps"], steps)
    assert steps in experiments_with(json.loads(sh.dvc("exp", "show", "--json")), "finetune", "steps")
    finetune = json.loads((store / region / "steps" / "finetune.json").read_text())
    assert finetune["params"]["train"]["steps"] == steps
    sh.commit("experiment applied")

    # 4. A re-run with an unchanged step key (what a code change gives: the key ignores code)
    # trains from scratch: it must not resume the finished run's checkpoint.
    forced = sh.dvc("repro", "--force", "--single-item", f"finetune@{region}")
    assert ran(forced) == {f"finetune@{region}"}
    assert json.loads((store / region / "steps" / "finetune.json").read_text())["key"] == finetune["key"]
    assert "resumed from" not in forced, forced[-4000:]


def _dvc_argv(stage: str, params: dict) -> list[str]:
    """The ``damnet`` command line of dvc.yaml's ``stage`` as DVC builds it from ``params``:
    ``${section}`` unpacked into ``--key value`` (true: ``--key``), other variables as placeholders."""
    stage_def = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    cmd = stage_def.get("do", stage_def)["cmd"]
    if isinstance(cmd, list):
        cmd = next(c for c in cmd if "damnet " in c)
    cmd = cmd.split(" || ", 1)[0]  # promote: the accepted-rejection fallback
    argv: list[str] = []
    cmd = re.sub(r'"\$\(.*\)"', "x", cmd, flags=re.S)  # predict: --model "$(... champion_ref ...)"
    for word in shlex.split(cmd.split("damnet ", 1)[1]):
        m = re.fullmatch(r"\$\{(\w+)\}", word)
        if m and isinstance(params.get(m.group(1)), dict):
            for key, value in params[m.group(1)].items():
                argv += [f"--{key}"] if value is True else [] if value is False else [f"--{key}", str(value)]
        elif m and m.group(1) in params:  # ${device}
            argv.append(str(params[m.group(1)]))
        else:
            argv.append(re.sub(r"\$\{[^}]+\}", "x", word))
    return argv


STEP_STAGES = {"ingest_source": "ingest", "ingest_target": "ingest", "validate": "validate", "train": "train",
               "adapt": "adapt", "select": "select", "finetune": "finetune", "promote": "promote",
               "predict": "predict", "report": "report"}


def test_every_stage_hands_its_whole_params_section_to_its_step():
    """Each step stage unpacks its params.yaml section into the step's options, so a value set
    with ``dvc exp run -S adapt.lambda-adv=0.01`` reaches ``damnet adapt``; the stage lists the
    section as a param dependency (DVC re-runs it when the section changes)."""
    from components.cli import build_parser

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    parser = build_parser()
    for stage, step in STEP_STAGES.items():
        section = params[step]
        # Values other than the defaults, so an option the command drops is seen.
        tried = {k: (v + 32 if isinstance(v, int) and not isinstance(v, bool) else v * 0.9 if isinstance(v, float)
                     else v) for k, v in section.items()}
        ns = parser.parse_args(_dvc_argv(stage, {**params, step: tried}))
        for key, value in tried.items():
            got = getattr(ns, key.replace("-", "_"))
            assert got == value or (value in ("yes", "no") and got == (value == "yes")) or (value == "" and not got), (
                f"dvc.yaml's {stage} stage does not pass {step}.{key}")
        assert step in stages[stage].get("do", stages[stage])["params"], stage


def test_params_yaml_audit_set_lets_the_toy_regions_gate_decide():
    """select.audit / min-audit give every target region at least as many audit tiles as the
    promote stage's gate asks for (a count of 4 made the gate always say "not enough audit
    evidence")."""
    from damnet.select import audit_count
    from damnet.tiling import window_starts

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    select, ingest = params["select"], params["ingest"]
    stride = ingest["tile-size"] - ingest["overlap"]
    for region, target in params["targets"].items():
        tiles = target["scenes"] * len(window_starts(target["size"], ingest["tile-size"], stride)) ** 2
        assert audit_count(select["audit"], tiles, select["min-audit"]) >= params["promote"]["min-audit-tiles"], region
