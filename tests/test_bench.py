"""The benchmark's chart: what it draws is what the ablation measured."""

from __future__ import annotations

import json
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
