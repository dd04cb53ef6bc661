"""The ``damnet`` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import rng_image, write_png

from components.cli import STEPS, main


def damnet(*args, cwd=None, tmp=None):
    env = dict(os.environ)
    if tmp is not None:  # keep MLflow's database out of the working tree
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return subprocess.run([sys.executable, "-m", "components.cli", *args], capture_output=True,
                          text=True, cwd=cwd or tmp, timeout=300, env=env)


def test_bad_imagery_is_one_clear_error_not_a_traceback(tmp_path):
    write_png(tmp_path / "in" / "A" / "x.png", rng_image(0, (4, 64, 64)))
    write_png(tmp_path / "in" / "B" / "x.png", rng_image(1, (4, 64, 64)))
    result = damnet("ingest", "--imagery", str(tmp_path / "in"), "--store", str(tmp_path / "store"),
                    "--region", "bad", tmp=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "A/x.png: has 4 bands (RGBA)" in result.stderr
    assert not (tmp_path / "store" / "regions").exists()


def test_ingest_command_writes_manifest_and_says_what_it_made(tmp_path):
    for d in ("A", "B"):
        write_png(tmp_path / "in" / d / "x.png", rng_image(0, (3, 100, 100)))
    write_png(tmp_path / "in" / "label" / "x.png", (np.arange(10000).reshape(100, 100) % 2) * 255)
    result = damnet("ingest", "--imagery", str(tmp_path / "in"), "--store", str(tmp_path / "store"),
                    "--region", "x", "--tile-size", "64", "--require-labels", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 tile(s) from 1 pair(s)" in result.stdout
    record = json.loads((tmp_path / "store" / "regions" / "x" / "steps" / "ingest.json").read_text())
    manifest = json.loads(Path(record["outputs"]["manifest"]).read_text())
    assert len(manifest["tiles"]) == 4


@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_step_has_help(step, capsys):
    with pytest.raises(SystemExit) as exc:
        main([step, "--help"])
    assert exc.value.code == 0
    assert f"usage: damnet {step}" in capsys.readouterr().out


@pytest.mark.parametrize("step", ["adapt", "finetune"])
def test_alignment_options_reach_the_training_config(step):
    from components.cli import build_parser
    from components.training import train_config
    from damnet.train import MODES

    base = build_parser().parse_args([step, "--region", "r", "--store", "s"])
    cfg = train_config(base, step)
    engine = MODES[step]
    assert (cfg.restyle, cfg.match_gsd, cfg.photometric) == (engine.restyle, engine.match_gsd, engine.photometric)
    args = build_parser().parse_args([step, "--region", "r", "--store", "s",
                                      "--restyle", "0.2", "--match-gsd", "no", "--photometric", "0.3"])
    cfg = train_config(args, step)
    assert (cfg.restyle, cfg.match_gsd, cfg.photometric) == (0.2, False, 0.3)


def test_finetune_keeps_the_alignment_the_region_was_adapted_with_unless_told_otherwise():
    from components.cli import build_parser
    from components.training import train_config

    adapted_with = {"restyle": 0.5, "match_gsd": True, "lambda_adv": 0.003}
    args = build_parser().parse_args(["finetune", "--region", "r"])
    cfg = train_config(args, "finetune", inherit=adapted_with)
    assert (cfg.restyle, cfg.match_gsd) == (0.5, True)
    assert cfg.lambda_adv == 1e-3  # only the alignment settings carry over, not the adaptation's
    args = build_parser().parse_args(["finetune", "--region", "r", "--restyle", "0", "--match-gsd", "no"])
    cfg = train_config(args, "finetune", inherit=adapted_with)
    assert (cfg.restyle, cfg.match_gsd) == (0.0, False)
