"""Fault injection: each training step and ingest SIGKILLed at seeded points, then re-run,
leave the same store as a run that was never interrupted: step records (less timings, hosts
and run ids), the content of every output, registered versions and aliases."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from components.cli import main
from damnet import storage
from damnet.synthetic import write_region

JOB = Path(__file__).with_name("_fault_job.py")
TRAIN = ["--steps", "20", "--batch-size", "2", "--crop", "64"]
KILLED = ("ingest", "train", "adapt", "finetune")  #: the steps killed, each at POINTS points
POINTS = 3
#: Record fields that differ between two runs of the same inputs by nature.
VOLATILE = {"started", "seconds", "host", "mlflow", "train_seconds", "created", "code_version", "history"}


def _steps(store: Path, truth: Path) -> list[list[str]]:
    s, t = ["--store", str(store)], ["--store", str(store), "--region", "newtown"]
    return [["ingest", *s, "--region", "source", "--tile-size", "64", "--require-labels"],
            ["train", *s, *TRAIN, "--preset", "tiny"],
            ["ingest", *t, "--tile-size", "64"],
            ["adapt", *t, *TRAIN],
            ["select", *t, "--budget", "1", "--audit", "1", "--max-label-share", "0.5", "--mc-samples", "2"],
            ["export-labels", *t],
            ["simulate-labeler", *t, "--truth", str(truth)],
            ["import-labels", *t],
            ["finetune", *t, *TRAIN]]


def _world(root: Path, monkeypatch) -> tuple[Path, Path]:
    """A fresh store with imagery, MLflow on its own SQLite file, working directory ``root``."""
    root.mkdir()
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    store, truth = root / "store", root / "truth"
    write_region(str(store / "imagery" / "source"), "source", n_scenes=1, size=128, seed=0)
    write_region(str(store / "imagery" / "newtown"), "target_season", n_scenes=1, size=128, seed=1,
                 labels_uri=str(truth))
    return store, truth


def _counting(monkeypatch) -> list[int]:
    """Count the writes of in-process runs, the calls tests/_fault_job.py kills at."""
    from damnet import registry

    count = [0]

    def hook(owner, name):
        real = getattr(owner, name)

        def counted(*a, **k):
            count[0] += 1
            return real(*a, **k)

        monkeypatch.setattr(owner, name, counted)

    for method in ("put_text", "put_bytes", "writing", "delete"):
        hook(storage.LocalStorage, method)
    hook(mlflow, "register_model")
    hook(registry, "record_decision")
    hook(registry, "set_aliases")
    return count


def _normal(value, store: str):
    """``value`` with the store's path as STORE and the fields in VOLATILE left out."""
    if isinstance(value, dict):
        return {k: _normal(v, store) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normal(v, store) for v in value]
    if isinstance(value, str):
        return value.replace(store, "STORE")
    return value


def _content(path: Path, store: str):
    if path.suffix == ".json":
        return _normal(json.loads(path.read_text()), store)
    if path.suffix == ".pt":
        state = torch.load(path, weights_only=True, map_location="cpu")
        weights = state.get("model", state.get("disc", state))
        return {k: v.numpy().tobytes() if torch.is_tensor(v) else v for k, v in weights.items()}, \
            _normal({k: v for k, v in state.items() if k not in ("model", "disc")}, store)
    return path.read_bytes()


def _state(store: Path) -> dict:
    """What the store and the registry hold, comparable between two stores."""
    out: dict = {"records": {}, "outputs": {}, "registry": {}}
    for rec_path in sorted(store.glob("regions/*/steps/*.json")):
        rec = json.loads(rec_path.read_text())
        out["records"][str(rec_path.relative_to(store))] = _normal(rec, str(store))
        for uri in rec["outputs"].values():
            for f in storage.LocalStorage().list(uri):
                out["outputs"][f.replace(str(store), "STORE")] = _content(Path(f), str(store))
    client = mlflow.MlflowClient()
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name='{model.name}'")
        out["registry"][model.name] = {
            "aliases": {k: str(v) for k, v in model.aliases.items()},
            "versions": sorted((str(v.version), v.tags.get("damnet.decision")) for v in versions)}
    return out


@pytest.mark.slow
def test_killed_steps_rerun_to_the_store_of_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DAMNET_THREADS", "1")  # the same arithmetic in this process and the jobs
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    count = _counting(monkeypatch)
    store, truth = _world(tmp_path / "clean", monkeypatch)
    writes = {}
    for argv in _steps(store, truth):
        count[0] = 0
        assert main(argv) == 0, argv
        writes[(argv[0], argv.count("source") > 0)] = count[0]
    clean = _state(store)
    monkeypatch.undo()

    monkeypatch.setenv("DAMNET_THREADS", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    store, truth = _world(tmp_path / "faulty", monkeypatch)
    rng = random.Random(17)
    kills = 0
    for argv in _steps(store, truth):
        if argv[0] in KILLED:
            total = writes[(argv[0], argv.count("source") > 0)]
            for point in sorted(rng.sample(range(1, total + 1), POINTS)):
                job = subprocess.run([sys.executable, str(JOB), str(point), *argv], capture_output=True,
                                     text=True, timeout=300)
                assert job.returncode in (0, -9), job.stderr[-2000:]
                kills += job.returncode == -9
        assert main(argv) == 0, argv
    assert kills >= len(KILLED) * 2  # most points are reached (a resumed run writes less)
    faulty = _state(store)
    assert faulty["records"] == clean["records"]
    assert faulty["outputs"].keys() == clean["outputs"].keys()
    for name, content in clean["outputs"].items():
        assert faulty["outputs"][name] == content, name
    assert faulty["registry"] == clean["registry"]
    mlflow.set_tracking_uri(None)
