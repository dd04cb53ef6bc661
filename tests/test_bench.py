"""The benchmark's chart: what it draws is what the ablation measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NS = "{http://www.w3.org/2000/svg}"


def _row(name, *f1):
    return {"name": name, "labels": "0", "metrics": [{"f1": v} for v in f1], "seconds": [1.0] * len(f1)}


def test_ablation_chart_draws_one_bar_per_row_and_style_at_its_f1(tmp_path):
    results = {"target_a": [_row("source only", 0.3), _row("adapt + MLFT ours 1 %", 0.7, 0.8, 0.9),
                            _row("oracle (all target labels)", 0.9)],
               "target_b": [_row("source only", 0.5), _row("oracle (all target labels)", 1.0)]}
    src = tmp_path / "ablation.json"
    src.write_text(json.dumps({"plan": {}, "results": results}))
    out = tmp_path / "chart.svg"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "plot_ablation.py"), str(src), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(out).getroot()  # noqa: S314 - our own file, just written
    bars = {r.find(f"{NS}title").text: float(r.get("height")) for r in root.iter(f"{NS}rect")
            if r.find(f"{NS}title") is not None}
    assert len(bars) == 5
    full = bars["target_b: oracle (all target labels) 100.0 ± 0.0"]
    assert bars["target_a: source only 30.0 ± 0.0"] / full == pytest.approx(0.3, abs=1e-3)
    assert bars["target_a: adapt + MLFT ours 1 % 80.0 ± 10.0"] / full == pytest.approx(0.8, abs=1e-3)  # seed mean
    assert "90 % of oracle" in out.read_text()


def test_ablation_chart_refuses_a_file_that_is_not_a_result(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "plot_ablation.py"), str(bad),
                           str(tmp_path / "c.svg")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "x.json: not an ablation result file" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "c.svg").exists()


def _real():
    sys.path.insert(0, str(ROOT / "bench"))
    import real

    return real


def _rows(f1: dict[str, list[float]], recall: dict[str, list[float]] | None = None):
    from ablation import Row

    recall = recall or {}
    return [Row(name, "0", [{"f1": v, "recall": r} for v, r in zip(vals, recall.get(name, vals), strict=True)],
                [1.0] * len(vals)) for name, vals in f1.items()]


def test_real_goals_need_every_target_not_only_the_mean():
    real = _real()
    good = {"source only": [0.2], "adaptation": [0.25, 0.26, 0.24], "MLFT ours 1": [0.3, 0.3, 0.3],
            "MLFT ours 2": [0.3, 0.3, 0.3], "MLFT ours 4": [0.3, 0.31, 0.29], "MLFT random 1": [0.25] * 3,
            "MLFT random 2": [0.25] * 3, "MLFT random 4": [0.25] * 3, "MLFT 1 tile without change": [0.2] * 3}
    # a second target where adaptation loses far more than its seed spread
    bad = {**good, "adaptation": [0.1, 0.11, 0.1]}
    text = real.goals({"a": _rows(good), "b": _rows(bad)}, (1, 2, 4))
    adapt_line = next(line for line in text.splitlines() if line.startswith("| adaptation"))
    assert adapt_line.endswith("| NO |")
    text = real.goals({"a": _rows(good), "b": _rows(good)}, (1, 2, 4))
    assert "NO" not in text
    # the collapse goal reads recall: a drop of 10 points fails it
    collapsed = _rows(good, {"MLFT 1 tile without change": [0.15] * 3})
    text = real.goals({"a": collapsed}, (1, 2, 4))
    assert next(line for line in text.splitlines() if line.startswith("| recall")).endswith("| NO |")


def test_real_collapse_case_takes_the_quiet_tile_the_model_is_most_wrong_about():
    import numpy as np

    real = _real()

    class Pool:
        tiles = [{"tile_id": "a", "change_fraction": 0.2}, {"tile_id": "b", "change_fraction": 0.0},
                 {"tile_id": "c", "change_fraction": 0.0}, {"tile_id": "d", "change_fraction": 0.3}]
        ids = ["a", "b", "c", "d"]

    class Scores:
        change_fraction = np.array([0.9, 0.1, 0.4, 0.8])

    assert real.zero_change_tile(Scores, Pool) == "c"


def test_real_test_scenes_exist_and_never_join_the_pool():
    real = _real()
    if not real.SHARED.is_dir():
        pytest.skip(f"{real.SHARED} is absent: the real targets are not checked")
    for key, target in real.TARGETS.items():
        names = real._scene_names(real.SHARED / target.folder)
        assert set(target.test) <= set(names), key
        assert 0 < len(target.test) < len(names), key


def test_gpu_perf_smoke_run_reports_every_part_in_one_markdown_block(tmp_path):
    """bench/gpu_perf.py is the prepared script for a lent GPU: its CPU smoke mode must run every
    part (inference with prefetch, the engine's adapt step, DDP over 2 Gloo processes) and write
    the whole block, so the device run does not die on a bug a CPU could have found."""
    import re

    out = tmp_path / "gpu_perf.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_perf.py"), "--device", "cpu", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.strip() in proc.stdout
    for heading in ("#### Inference", "#### Adapt step", "#### DDP adaptation scaling"):
        assert heading in text, heading
    assert "torch " in text and "no GPU" in text and "goal (issue 18)" in text
    best = re.search(r"\*\*([0-9.]+) MPx/s\*\*.*goal \(234 MPx/s\): \*\*(NOT met|met)\*\*", text)
    assert best and float(best.group(1)) > 0
    step = re.search(r"Best: eager, batch (\d+) per stream, ([0-9.]+) s/step", text)
    assert step and float(step.group(2)) > 0
    assert re.search(r"^\| 1 \| [0-9.]+ \|", text, re.M) and re.search(r"^\| 2 \| [0-9.]+ \|", text, re.M)
    layout = re.search(r"channels-last vs NCHW, same weights: max \|change probability difference\| (\S+)", text)
    assert layout and float(layout.group(1)) < 1e-4  # the memory layout does not change the answer
