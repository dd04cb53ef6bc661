"""Logs without the libraries' noise: known third-party warnings hidden unless `damnet -v`."""

from __future__ import annotations

import sys
import warnings

import pytest

from components.cli import quiet_warnings

NOISE = [
    ("\x1b[33mAdd type hints to the `predict` method to enable data validation\x1b[0m", UserWarning),
    ("GitWildMatchPattern ('gitwildmatch') is deprecated. Use 'gitignore'", DeprecationWarning),
    ("Using `httpx` with `starlette.testclient` is deprecated; install `httpx2` instead.", UserWarning),
    ("The HMAC key is 16 bytes long, which is below the minimum recommended length of 32 bytes", UserWarning),
]


@pytest.fixture
def fresh_filters(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [])
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        yield seen


def test_known_noise_is_hidden_and_other_warnings_still_show(fresh_filters, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    quiet_warnings()
    for message, category in NOISE:
        warnings.warn(message, category, stacklevel=1)
    warnings.warn("tile scene_003 has no CRS", UserWarning, stacklevel=1)
    assert [str(w.message) for w in fresh_filters] == ["tile scene_003 has no CRS"]
    assert sys.warnoptions  # so Airflow does not put its DeprecationWarning filter in front



def test_mlflow_turning_user_warnings_back_on_does_not_bring_the_noise_back(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [])
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        quiet_warnings()
        warnings.simplefilter("once", category=UserWarning)  # mlflow's filter_user_warnings_once
        warnings.warn(NOISE[0][0], UserWarning, stacklevel=1)
        warnings.warn("a warning that matters", UserWarning, stacklevel=1)
    assert shown == ["a warning that matters"]
