"""The contract every pipeline step keeps: validated arguments, records, skipping, MLflow runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from components.cli import main
from damnet.synthetic import write_region

TRAIN = ["--steps", "2", "--batch-size", "2", "--crop", "64"]


@pytest.fixture
def store(tmp_path, mlflow_sqlite):
    root = tmp_path / "store"
    write_region(str(root / "imagery" / "source"), "source", n_scenes=1, size=128, seed=0)
    return root


def record(store: Path, region: str, step: str) -> dict:
    return json.loads((store / "regions" / region / "steps" / f"{step}.json").read_text())


@pytest.mark.parametrize("bad", ["../x", "A", "x/y", "-x", "x" * 41, ""])
def test_unsafe_region_names_are_refused(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--store", str(tmp_path), f"--region={bad}"])
    assert exc.value.code == 2
    assert "is not a valid region name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_step_writes_a_record_and_a_second_run_does_nothing(store, capsys):
    args = ["ingest", "--store", str(store), "--region", "source", "--tile-size", "64", "--require-labels"]
    assert main(args) == 0
    first = record(store, "source", "ingest")
    assert first["inputs"]["imagery"]["digest"] and first["params"]["tiling"]["size"] == 64
    assert first["metrics"]["tiles"] == 4
    assert Path(first["outputs"]["manifest"]).exists()
    assert first["code_version"].startswith("0.1.0")
    capsys.readouterr()
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert record(store, "source", "ingest") == first
    # Other settings are other inputs: the step runs again under a new key.
    assert main([*args[:-1], "--overlap", "32"]) == 0
    assert record(store, "source", "ingest")["key"] != first["key"]


def test_each_step_is_an_mlflow_run_nested_under_the_region_run(store):
    import mlflow

    for group in ("dag-run-1", "dag-run-1", "dag-run-2"):
        main(["ingest", "--store", str(store), "--region", "source", "--tile-size", "64",
              "--run-group", group, "--force"])
    exp = mlflow.get_experiment_by_name("damnet/source")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parents = {r.data.tags["damnet.run_group"]: r for r in runs if r.data.tags["damnet.kind"] == "region"}
    steps = [r for r in runs if r.data.tags["damnet.kind"] == "step"]
    assert set(parents) == {"dag-run-1", "dag-run-2"}
    assert len(steps) == 3
    by_parent = {}
    for r in steps:
        by_parent.setdefault(r.data.tags["mlflow.parentRunId"], []).append(r)
    assert len(by_parent[parents["dag-run-1"].info.run_id]) == 2
    assert steps[0].data.params["param.tiling.size"] == "64"
    assert steps[0].data.metrics["tiles"] == 4


def test_a_failed_step_leaves_the_previous_outputs_untouched(store, monkeypatch, capsys):
    main(["ingest", "--store", str(store), "--region", "source", "--tile-size", "64", "--require-labels"])
    assert main(["train", "--store", str(store), *TRAIN]) == 0
    good = record(store, "source", "train")
    model = Path(good["outputs"]["model"])
    digest = hashlib.sha256(model.read_bytes()).hexdigest()

    import damnet.registry

    def broken(*a, **k):
        raise OSError("disk full")

    def folder_state():
        return {p.relative_to(model.parent): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in model.parent.rglob("*") if p.is_file()}

    before = folder_state()
    monkeypatch.setattr(damnet.registry, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        main(["train", "--store", str(store), "--steps", "3", "--batch-size", "2", "--crop", "64"])
    assert record(store, "source", "train") == good
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    # A forced re-run of the very same inputs (same key) that fails half-way does not write
    # into the folder the record points to either.
    with pytest.raises(OSError, match="disk full"):
        main(["train", "--store", str(store), *TRAIN, "--force"])
    assert record(store, "source", "train") == good
    assert folder_state() == before


def test_a_step_before_its_inputs_exist_is_one_clear_error(store, capsys):
    assert main(["adapt", "--store", str(store), "--region", "newtown"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: region 'newtown': step 'ingest' has not run yet")
    assert err.count("\n") == 1


def test_training_the_same_inputs_twice_gives_the_same_model(store):
    import torch

    main(["ingest", "--store", str(store), "--region", "source", "--tile-size", "64", "--require-labels"])
    weights = []
    for _ in range(2):
        assert main(["train", "--store", str(store), *TRAIN, "--force"]) == 0
        path = record(store, "source", "train")["outputs"]["model"]
        weights.append(torch.load(path, weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _lock(store: Path, region: str, step: str) -> Path:
    return store / "regions" / region / "steps" / f"{step}.lock"


def test_a_second_run_of_a_running_step_stops_with_the_run_that_holds_it(store, capsys):
    """Two pipeline runs of one region must not write one step's outputs at the same time."""
    import socket

    lock = _lock(store, "source", "ingest")
    lock.parent.mkdir(parents=True)
    other = {"format": "damnet.lock/1", "step": "ingest", "region": "source", "run_group": "manual__2026-11-27",
             "host": "worker-7", "pid": 4242, "since": "2026-11-27T08:00:00Z"}
    lock.write_text(json.dumps(other))
    args = ["ingest", "--store", str(store), "--region", "source", "--tile-size", "64"]
    assert main([*args, "--run-group", "scheduled__2026-11-27"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: region 'source': step 'ingest' is already running (run group "
                          "'manual__2026-11-27', host worker-7, pid 4242") and "--break-lock" in err
    assert not (store / "regions" / "source" / "ingest").exists() and json.loads(lock.read_text()) == other

    # A retry of the run that held it (its attempt died: same run group) takes it over ...
    assert main([*args, "--run-group", "manual__2026-11-27"]) == 0
    assert not lock.exists()  # ... and lets go when done
    # a lock of a process of this host that is gone is taken over too
    lock.write_text(json.dumps({**other, "host": socket.gethostname(), "pid": 2 ** 22 + 12345}))
    assert main([*args, "--force"]) == 0 and not lock.exists()
    # an unknown run elsewhere needs --break-lock
    lock.write_text(json.dumps(other))
    assert main([*args, "--force"]) == 2
    assert main([*args, "--force", "--break-lock"]) == 0 and not lock.exists()


def test_a_failed_step_releases_its_lock(store, monkeypatch):
    main(["ingest", "--store", str(store), "--region", "source", "--tile-size", "64", "--require-labels"])
    import damnet.registry

    monkeypatch.setattr(damnet.registry, "save_model", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        main(["train", "--store", str(store), *TRAIN])
    assert not _lock(store, "source", "train").exists()
    monkeypatch.undo()
    assert main(["train", "--store", str(store), *TRAIN]) == 0


def test_file_uris_and_relative_paths_are_recorded_as_absolute_paths(store, monkeypatch, capsys):
    """A record means the same whichever way a path was given and wherever the next step runs."""
    monkeypatch.chdir(store.parent)
    args = ["ingest", "--region", "source", "--tile-size", "64", "--imagery", "store/imagery/source"]
    assert main([*args, "--store", f"file://{store}"]) == 0
    rec = record(store, "source", "ingest")
    assert rec["inputs"]["imagery"]["uri"] == str(store / "imagery" / "source")
    assert rec["outputs"]["manifest"].startswith(str(store) + "/")
    assert not (store.parent / "file:").exists()
    capsys.readouterr()
    monkeypatch.chdir(store)
    assert main([*args[:-1], str(store / "imagery" / "source"), "--store", "."]) == 0
    assert "up to date" in capsys.readouterr().out
