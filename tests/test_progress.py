"""Progress off a terminal (task and pod logs): a line at a steady interval, with rate and ETA."""

from __future__ import annotations

import io
import re

import pytest

from damnet.progress import ENV_VAR, Progress, duration, interval_from_env


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_loop(n: int, seconds_per_item: float, **kwargs) -> list[str]:
    clock, out = Clock(), io.StringIO()
    bar = Progress(range(n), desc="train", unit="step", interval=30, stream=out, clock=clock, **kwargs)
    for step in bar:
        clock.now += seconds_per_item
        bar.set_postfix({"loss": f"{1 / (step + 1):.3g}"})
    return out.getvalue().splitlines()


def test_off_a_terminal_a_line_every_interval_with_rate_eta_and_losses_then_a_last_line():
    lines = run_loop(100, 1.0)  # 100 s in all: lines at 30, 60, 90 s and one when done
    assert len(lines) == 4
    assert lines[0] == "train: 30/100 step (30%), 1 step/s, elapsed 0:30, ETA 1:10, loss 0.0333"
    assert re.fullmatch(r"train: 100/100 step \(100%\), 1 step/s, done in 1:40, loss 0\.01", lines[-1])


def test_a_loop_shorter_than_the_interval_stays_silent_and_disabled_prints_nothing():
    assert run_loop(20, 1.0) == []
    assert run_loop(100, 1.0, enabled=False) == []


def test_a_resumed_loop_counts_its_rate_from_where_it_resumed():
    lines = run_loop(60, 1.0, total=100, initial=40)
    assert lines[0].startswith("train: 70/100 step (70%), 1 step/s, elapsed 0:30, ETA 0:30")


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "5")
    assert interval_from_env() == 5.0
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(ENV_VAR, bad)
        assert interval_from_env() == 30.0


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (75, "1:15"), (3725, "1:02:05")])
def test_durations_read_as_clock_times(seconds, text):
    assert duration(seconds) == text


def test_training_off_a_terminal_shows_step_losses_and_eta_in_the_log(tiny_regions, monkeypatch, capsys):
    import torch

    from damnet.data import Stream, TileSet
    from damnet.models import ChangeNet, preset
    from damnet.train import fit, mode_config

    monkeypatch.setenv(ENV_VAR, "0.000001")  # every step counts as "a while": a line per step
    torch.manual_seed(0)
    model = ChangeNet(preset("tiny", dims=(16, 32, 64, 128), decoder_dim=16))
    cfg = mode_config("supervised", steps=4, batch_size=2, crop=32, log_every=2)
    fit(model, cfg, source=Stream(TileSet(tiny_regions["source"]), 2, 32, 0, "source"))
    lines = capsys.readouterr().err.splitlines()  # pytest's stderr is not a terminal
    assert re.match(r"train: 2/4 step \(50%\), [\d.]+ step/s, elapsed 0:\d\d, ETA 0:\d\d, .*seg_source [\d.]+",
                    lines[1])
    assert lines[-1].startswith("train: 4/4 step (100%)") and "done in" in lines[-1]
