"""One declaration per parameter (components/spec.py, components/step_options.py): the command
line checks every bound at parse time, and the files derived from the declarations
(dags/damnet_ops/workflows.json, params.yaml) are current."""

from __future__ import annotations

import json

import pytest

from components import spec, workflows
from components.cli import build_parser, main


def test_generated_files_are_current():
    stale = workflows.stale()
    assert not stale, f"stale: {[str(p) for p in stale]}; run `make params`"


def test_check_command_names_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(workflows, "PARAMS_YAML", tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("old: 1\n")
    assert workflows.main(["--check"]) == 1
    assert "params.yaml" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["select", "--region", "x", "--budget", "nan"], "--budget: must be a finite number"),
    (["select", "--region", "x", "--budget", "inf"], "--budget: must be a finite number"),
    (["select", "--region", "x", "--max-label-share", "1.5"], "--max-label-share: must be > 0 and <= 1"),
    (["adapt", "--region", "x", "--lr", "nan"], "--lr: must be a finite number"),
    (["adapt", "--region", "x", "--device", "gpu0"], "--device: 'gpu0' is not a torch device: auto, cpu"),
    (["train", "--holdout", "1.0"], "--holdout: must be >= 0 and < 1"),
    (["ingest", "--region", "x", "--tile-size", "100000"], "--tile-size: must be >= 32 and <= 2048"),
    (["ingest", "--region", "x", "--tile-size", "100"], "a multiple of 32"),
    (["ingest", "--region", "Bad Name"], "--region: 'Bad Name' is not a valid region name"),
    (["promote", "--region", "x", "--confidence", "1"], "--confidence: must be >= 0.5 and < 1"),
    (["finetune", "--region", "x", "--match-gsd", "maybe"], "--match-gsd: expected yes or no"),
    (["select", "--region", "x", "--mc-samples", "1.5"], "--mc-samples: expected a whole number"),
])
def test_a_value_out_of_bounds_is_one_error_line_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_default_is_within_its_own_bounds():
    for step in spec.steps():
        for opt in spec.options(step):
            if opt.type in ("int", "float") and opt.default is not None:
                assert opt.in_bounds(opt.default), f"damnet {step} {opt.flag} default {opt.default}"
            if opt.choices and opt.default is not None:
                assert opt.default in opt.choices, f"damnet {step} {opt.flag}"


def test_the_parser_defaults_are_the_declared_ones():
    parser = build_parser()
    ns = parser.parse_args(["finetune", "--region", "x"])
    from damnet.train import MODES

    ft, ad = MODES["finetune"], MODES["adapt"]
    assert (ns.lr, ns.anchor_weight, ns.restyle, ns.match_gsd) == (ft.lr, ft.anchor_weight, None, None)
    ns = parser.parse_args(["adapt", "--region", "x"])
    assert (ns.lambda_adv, ns.match_gsd, ns.use_pretrain) == (ad.lambda_adv, ad.match_gsd, False)


def test_every_training_option_named_like_a_trainconfig_field_reaches_the_config():
    """A new TrainConfig field with an Opt in training_options is passed on without another edit."""
    from components.step_options import training_options
    from components.training import train_config

    parser = build_parser()
    ns = parser.parse_args(["adapt", "--region", "x", "--pseudo-weight", "0.25", "--anchor-on", "change",
                            "--restyle", "0.5", "--match-gsd", "yes", "--crop", "48"])
    cfg = train_config(ns, "adapt")
    assert (cfg.pseudo_weight, cfg.anchor_on, cfg.restyle, cfg.match_gsd, cfg.crop) == (0.25, "change", 0.5, True, 48)
    fields = set(cfg.to_dict())
    assert {o.dest for o in training_options("adapt")} - fields <= set(), "an adapt option is not a TrainConfig field"


def test_workflow_parameters_use_the_steps_defaults_and_bounds():
    data = json.loads(workflows.WORKFLOWS_JSON.read_text())
    parser = build_parser()
    for name, wf in data["workflows"].items():
        for step, pairs in wf["arguments"].items():
            for flag, param in pairs:
                p = wf["params"][param]
                if "profiles" in p or param == "region":
                    continue
                default = parser.parse_args([step, "--region", "x"]).__dict__[flag.lstrip("-").replace("-", "_")]
                assert p["default"] == ("" if default is None else default), (name, param)


def test_params_yaml_sections_are_accepted_by_the_steps():
    """dvc.yaml unpacks each section into the step's options (${adapt} -> --steps 10 ...)."""
    import yaml

    params = yaml.safe_load(workflows.PARAMS_YAML.read_text())
    parser = build_parser()
    for step in workflows.DVC_STEPS:
        argv = [step, "--region", "source" if step == "train" else "x"]
        for key, value in params[step].items():
            argv += [f"--{key}", "" if value is None else str(value)]
        parser.parse_args(argv)

