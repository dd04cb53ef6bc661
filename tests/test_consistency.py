"""Stored state stays consistent: every step reads upstream records made from the current
records of their own inputs, outputs live in key folders with the record replaced last, a
live run's lock is never taken over, and bad imagery or labels are named, not half-used."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import rng_image, write_png, write_tif

from components.cli import main
from components.records import Layout, StaleRecord, check_current
from damnet.synthetic import write_region

# --------------------------------------------------------------------------- stale edges


def _put(store: Path, region: str, step: str, key: str, inputs: dict | None = None) -> dict:
    """A step record as run_step writes it (only what the consistency check reads)."""
    folder = store / "regions" / region / step / key
    rec = {"format": "damnet.step/1", "step": step, "region": region, "key": key,
           "inputs": inputs or {}, "params": {}, "outputs": {"out": str(folder / "out")}}
    path = store / "regions" / region / "steps" / f"{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return rec


def _edge(store: Path, region: str, step: str, key: str, legacy: bool = False) -> dict:
    item = {"uri": str(store / "regions" / region / step / key / "out"), "digest": key}
    return item if legacy else {**item, "step": step, "region": region}


def _chain(store: Path) -> None:
    """ingest <- adapt <- select <- export-labels <- import-labels <- finetune <- evaluate, a
    source region's ingest and train, registry models and content digests on the side."""
    s = str(store)
    _put(store, "source", "ingest", "si1", {"imagery": {"uri": f"{s}/imagery/source", "digest": "f" * 64}})
    _put(store, "source", "train", "st1", {"tiles": _edge(store, "source", "ingest", "si1")})
    _put(store, "r", "ingest", "i1", {"imagery": {"uri": f"{s}/imagery/r", "digest": "e" * 64}})
    model = {"uri": "models:/damnet-source/3", "digest": "damnet-source/3",
             "requested": "models:/damnet-source@champion"}
    _put(store, "r", "adapt", "a1", {"tiles": _edge(store, "r", "ingest", "i1"),
                                     "source_tiles": _edge(store, "source", "ingest", "si1"),
                                     "source_split": _edge(store, "source", "train", "st1"), "source_model": model})
    _put(store, "r", "select", "s1", {"tiles": _edge(store, "r", "ingest", "i1"),
                                      "model": _edge(store, "r", "adapt", "a1")})
    _put(store, "r", "export-labels", "x1", {"selection": _edge(store, "r", "select", "s1")})
    _put(store, "r", "import-labels", "l1", {"tasks": _edge(store, "r", "export-labels", "x1"),
                                             "labels": {"uri": f"{s}/labels/r/export.json", "digest": "d" * 64}})
    _put(store, "r", "finetune", "f1", {"adapted": _edge(store, "r", "adapt", "a1"),
                                        "labels": _edge(store, "r", "import-labels", "l1")})
    _put(store, "r", "evaluate", "v1", {"candidate": _edge(store, "r", "finetune", "f1"),
                                        "labels": _edge(store, "r", "import-labels", "l1"), "champion": model})


def test_promote_refuses_an_evaluation_of_another_candidate(tmp_path, capsys):
    """Issue 17: a new finetune, no new evaluate: promote must not use the old candidate's metrics."""
    store = tmp_path / "store"
    _chain(store)
    _put(store, "r", "finetune", "f2", {"adapted": _edge(store, "r", "adapt", "a1"),
                                        "labels": _edge(store, "r", "import-labels", "l1")})
    assert main(["promote", "--store", str(store), "--region", "r"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: region 'r': the 'evaluate' record (key v1) was made from the 'finetune' record "
                   "key f1 (input 'candidate'), but 'finetune' is now key f2; re-run evaluate first (then "
                   "the steps after it): damnet evaluate --region r\n")
    assert not (store / "regions" / "r" / "steps" / "promote.json").exists()
    assert not (store / "regions" / "r" / "steps" / "promote.lock").exists()


@pytest.mark.parametrize(("region", "step", "key", "stale", "legacy"), [
    ("r", "ingest", "i2", "adapt", False),  # a re-ingested region under older steps
    ("r", "select", "s2", "export-labels", False),  # a new selection, labels of the old one
    ("r", "export-labels", "x2", "import-labels", False),
    ("r", "adapt", "a2", "select", False),  # up the graph; select is re-run first, finetune after it
    ("source", "train", "st2", "adapt", False),  # the source region's split changed
    ("r", "import-labels", "l2", "finetune", True),  # records written before inputs named their step
])
def test_every_edge_up_the_graph_is_checked(tmp_path, region, step, key, stale, legacy):
    store = tmp_path / "store"
    _chain(store)
    layout = Layout(str(store), "r")
    evaluate = json.loads((store / "regions/r/steps/evaluate.json").read_text())
    check_current(layout, evaluate)  # a consistent graph passes
    if legacy:  # the same graph with inputs that only have a URI and a digest
        for f in (store / "regions").rglob("steps/*.json"):
            rec = json.loads(f.read_text())
            rec["inputs"] = {k: {"uri": v["uri"], "digest": v["digest"]} for k, v in rec["inputs"].items()}
            f.write_text(json.dumps(rec))
    _put(store, region, step, key)
    with pytest.raises(StaleRecord) as exc:
        check_current(layout, json.loads((store / "regions/r/steps/evaluate.json").read_text()))
    message = str(exc.value)
    assert f"the {stale!r} record" in message and f"but {step!r}" in message and f"is now key {key}" in message
    assert message.endswith(f"damnet {stale} --region {'source' if stale == 'train' else 'r'}")


def test_inputs_that_are_no_step_records_are_not_followed(tmp_path):
    """Content digests and pinned registry versions identify their content themselves."""
    store = tmp_path / "store"
    _chain(store)
    (store / "regions/r/steps/ingest.json").write_text(json.dumps({
        **json.loads((store / "regions/r/steps/ingest.json").read_text()),
        "inputs": {"imagery": {"uri": "s3://elsewhere/imagery/r", "digest": "0" * 64}}}))
    check_current(Layout(str(store), "r"), json.loads((store / "regions/r/steps/evaluate.json").read_text()))
    # a record that an upstream was made from and that is gone now is stale too
    (store / "regions/r/steps/select.json").unlink()
    with pytest.raises(StaleRecord, match="but 'select' has no record now"):
        check_current(Layout(str(store), "r"), json.loads((store / "regions/r/steps/evaluate.json").read_text()))


# --------------------------------------------------------------------------- atomic ingest


def _record(store: Path, region: str, step: str) -> dict:
    return json.loads((store / "regions" / region / "steps" / f"{step}.json").read_text())


@pytest.fixture
def store(tmp_path, mlflow_sqlite):
    root = tmp_path / "store"
    write_region(str(root / "imagery" / "source"), "source", n_scenes=1, size=128, seed=0)
    return root


def test_an_ingest_that_fails_after_writing_changes_nothing_a_step_reads(store, monkeypatch, capsys):
    """Issue 17: ingest wrote the new manifest, then MLflow failed; the old record pointed at it."""
    import components.tracking

    args = ["ingest", "--store", str(store), "--region", "source", "--require-labels"]
    assert main([*args, "--tile-size", "64"]) == 0
    good = _record(store, "source", "ingest")
    assert Path(good["outputs"]["tiles"]) == store / "regions/source/ingest" / good["key"]
    manifest = Path(good["outputs"]["manifest"]).read_bytes()

    def unwritable(*a, **k):
        raise PermissionError("mlruns/artifacts: read-only file system")

    monkeypatch.setattr(components.tracking, "log_artifacts", unwritable)
    with pytest.raises(PermissionError):
        main([*args, "--tile-size", "32"])
    monkeypatch.undo()
    assert _record(store, "source", "ingest") == good
    assert Path(good["outputs"]["manifest"]).read_bytes() == manifest
    assert len(json.loads(manifest)["tiles"]) == 4
    capsys.readouterr()
    assert main([*args, "--tile-size", "32"]) == 0  # not "up to date": it never committed
    assert "running" in capsys.readouterr().out
    assert _record(store, "source", "ingest")["metrics"]["tiles"] == 16
    assert Path(good["outputs"]["manifest"]).read_bytes() == manifest  # the old outputs are kept


# --------------------------------------------------------------------------- locks


def _lock(store: Path, step: str = "ingest") -> Path:
    return store / "regions" / "source" / "steps" / f"{step}.lock"


def test_break_lock_never_takes_over_a_live_run_on_this_host(store, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _lock(store)
        lock.parent.mkdir(parents=True)
        held = {"format": "damnet.lock/1", "step": "ingest", "region": "source", "run_group": "manual",
                "host": socket.gethostname(), "pid": holder.pid, "since": "2026-12-01T08:00:00Z"}
        lock.write_text(json.dumps(held))
        args = ["ingest", "--store", str(store), "--region", "source", "--tile-size", "64"]
        for extra in ([], ["--break-lock"], ["--run-group", "manual"]):
            assert main([*args, *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: region 'source': step 'ingest' is running right now on this host")
            assert f"pid {holder.pid}" in err and "not even with --break-lock" in err
        assert json.loads(lock.read_text()) == held
        assert not (store / "regions" / "source" / "ingest").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main([*args, "--break-lock"]) == 0 and not lock.exists()  # gone now: taken over


def test_two_runs_never_share_an_output_folder_and_only_the_lock_holder_commits(store, monkeypatch, capsys):
    import components.ingest

    args = ["ingest", "--store", str(store), "--region", "source", "--tile-size", "64"]
    other = {"format": "damnet.lock/1", "step": "ingest", "region": "source", "run_group": "manual",
             "host": "worker-7", "pid": 4242, "since": "2026-12-01T08:00:00Z"}
    _lock(store).parent.mkdir(parents=True)
    _lock(store).write_text(json.dumps(other))
    # The holder on another host may still be running: the run that breaks its lock writes
    # to a folder of its own, never into the key folder the other run writes.
    assert main([*args, "--break-lock"]) == 0
    rec = _record(store, "source", "ingest")
    assert re.fullmatch(rf"{rec['key']}-[0-9a-f]{{8}}", Path(rec["outputs"]["tiles"]).name)
    assert not (store / "regions/source/ingest" / rec["key"]).exists()

    # A run whose lock is broken by another while it runs does not commit.
    real = components.ingest.ingest

    def broken_meanwhile(*a, **k):
        _lock(store).write_text(json.dumps(other))
        return real(*a, **k)

    monkeypatch.setattr(components.ingest, "ingest", broken_meanwhile)
    capsys.readouterr()
    assert main([*args, "--overlap", "16"]) == 2
    err = capsys.readouterr().err
    assert "this run lost its lock while it ran (now held by run group 'manual', host worker-7, pid 4242)" in err
    assert _record(store, "source", "ingest") == rec
    assert json.loads(_lock(store).read_text()) == other  # the other run's lock is left alone


# --------------------------------------------------------------------------- imagery named at ingest


def _levir(root: Path, names: dict[str, int]) -> None:
    for name, size in names.items():
        for d, seed in (("A", 1), ("B", 2)):
            write_png(root / d / f"{name}.png", rng_image(seed, (3, size, size)))
        write_png(root / "label" / f"{name}.png", (rng_image(3, (size, size)) > 128).astype(np.uint8) * 255)


def _ingest(store: Path, imagery: Path, *extra: str) -> int:
    return main(["ingest", "--store", str(store), "--region", "x", "--imagery", str(imagery),
                 "--tile-size", "64", *extra])


def _scenes(root: Path) -> None:
    for name in ("good", "bad"):
        for d, seed in (("pre", 1), ("post", 2)):
            write_tif(root / d / f"{name}.tif", rng_image(seed, (3, 256, 256)), tiled=True,
                      blockxsize=64, blockysize=64)


def test_skip_bad_skips_a_geotiff_whose_damage_shows_only_while_tiling(tmp_path, mlflow_sqlite, capsys):
    _scenes(tmp_path / "in")
    path = tmp_path / "in" / "post" / "bad.tif"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header still reads
    store = tmp_path / "store"
    assert _ingest(store, tmp_path / "in") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 problem(s) in the imagery") and "post/bad.tif: cannot be read" in err
    assert not (store / "regions" / "x" / "steps" / "ingest.json").exists()
    assert _ingest(store, tmp_path / "in", "--skip-bad") == 0
    rec = _record(store, "x", "ingest")
    assert rec["metrics"]["skipped"] == 1 and rec["metrics"]["pairs"] == 1 and rec["metrics"]["tiles"] == 16
    manifest = json.loads(Path(rec["outputs"]["manifest"]).read_text())
    assert {t["pair"] for t in manifest["tiles"]} == {"good"}
    assert "post/bad.tif: cannot be read" in manifest["skipped"][0]
    files = {p.name for p in Path(rec["outputs"]["tiles"]).rglob("*.tif")}
    assert files and not any(f.startswith("bad_") for f in files)  # its partial tiles are gone


def test_a_scene_that_gives_no_tile_is_named(tmp_path, mlflow_sqlite, capsys):
    root = tmp_path / "in"
    _scenes(root)
    write_tif(root / "pre" / "bad.tif", np.zeros((3, 256, 256), np.uint8), nodata=0)
    store = tmp_path / "store"
    assert _ingest(store, root) == 2
    assert "pre/bad.tif: scene 'bad' has no valid pixel where both dates overlap" in capsys.readouterr().err
    assert _ingest(store, root, "--skip-bad") == 0
    assert "skipped: " in capsys.readouterr().out
    assert _record(store, "x", "ingest")["metrics"]["skipped"] == 1


def test_a_scene_name_that_tile_ids_cannot_hold_is_refused_at_ingest(tmp_path, mlflow_sqlite, capsys):
    _levir(tmp_path / "in", {"ok": 64, "zürich 2": 64})
    assert _ingest(tmp_path / "store", tmp_path / "in") == 2
    err = capsys.readouterr().err
    assert "A/zürich 2.png: scene name 'zürich 2' has characters other than A-Z a-z 0-9 _ . -" in err
    assert "rename the file" in err and "Traceback" not in err


def test_the_resampling_note_gives_degrees_for_a_geographic_grid(tmp_path):
    from affine import Affine
    from rasterio.warp import transform_bounds

    from damnet.imagery import discover_pairs, open_pair

    img = rng_image(0, (3, 64, 64))
    write_tif(tmp_path / "pre" / "s.tif", img)  # EPSG:32631, 0.5 m pixels
    west, south, east, north = transform_bounds("EPSG:32631", "EPSG:4326", 500_000, 3_999_968, 500_032, 4_000_000)
    write_tif(tmp_path / "post" / "s.tif", img, crs="EPSG:4326",
              transform=Affine((east - west) / 64, 0, west, 0, -(north - south) / 64, north))
    pairs, _ = discover_pairs(tmp_path)
    pair = open_pair(pairs[0])
    try:
        note = next(n for n in pair.notes if "resampled" in n)
    finally:
        pair.close()
    assert re.search(r"EPSG:4326 64x64 px of [0-9.e-]+ deg -> EPSG:32631 64x64 px of 0.5 m", note), note


# --------------------------------------------------------------------------- no champion unevaluated


def test_a_model_evaluated_on_no_holdout_tile_never_becomes_champion(tmp_path, mlflow_sqlite, capsys):
    import mlflow

    _levir(tmp_path / "in", {"tiny": 10})  # 10 x 10 px: one padded tile, nothing to hold out
    store = tmp_path / "store"
    assert main(["ingest", "--store", str(store), "--region", "source", "--imagery", str(tmp_path / "in"),
                 "--tile-size", "32", "--require-labels"]) == 0
    assert main(["train", "--store", str(store), "--steps", "1", "--batch-size", "1", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "registered damnet-source version 1: challenger (not evaluated: no holdout tile" in out
    client = mlflow.MlflowClient()
    assert client.get_model_version("damnet-source", "1").tags["damnet.decision"] == "rejected"
    assert {k: str(v) for k, v in client.get_registered_model("damnet-source").aliases.items()} == {"challenger": "1"}
