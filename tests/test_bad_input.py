"""Bad input and infrastructure faults, as a careless user and a flaky cluster bring them (issue 17).

Every case runs the ``damnet`` command (in-process where it can, a subprocess for a real
signal) and must end with: the exit status (2 bad input or a fault retrying cannot mend, 75 a
service that did not answer, 3 a refused candidate, 130 Ctrl-C), exactly one ``error:`` line,
no traceback, within a time bound, and the store's content (every file under it, or every
object of the bucket) as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import mlflow
import numpy as np
import pytest
from conftest import TINY, exported_region, free_port, rng_image, write_tif

from components.cli import main

SMALL_GATE = ["--min-audit-tiles", "4", "--min-change-tiles", "1"]  # the fixture's audit set is 4 tiles


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A store with a source model and region 'newtown' taken up to evaluation (MLflow on SQLite)."""
    root = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        store, r = exported_region(root, mp, root / "truth")
        s = ["--store", str(store)]
        uri = f"sqlite:///{root / 'mlflow.db'}"
        for argv in (["simulate-labeler", *r, "--truth", str(root / "truth")],
                     ["import-labels", *r],
                     ["finetune", *r, "--steps", "4", *TINY],
                     ["evaluate", *r]):
            assert main(argv) == 0, argv
        yield {"root": root, "store": store, "s": s, "r": r, "mlflow": uri}
        mlflow.set_tracking_uri(None)


def digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def bucket_digest(endpoint: str, bucket: str) -> dict[str, str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    return {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def one_error(err: str) -> str:
    """The one ``error:`` line of ``err`` (argparse's is ``damnet STEP: error: ...``), and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def run(argv: list[str], capsys) -> tuple[int, str, float]:
    """``damnet *argv`` in this process: (exit status, stderr, seconds)."""
    capsys.readouterr()
    started = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses the command line
        code = int(exc.code or 0)
    return code, capsys.readouterr().err, time.monotonic() - started


def check(argv: list[str], capsys, root: Path, *needles: str, status: int = 2, within: float = 30.0,
          snapshot: Callable[[], dict] | None = None) -> str:
    """Run ``argv``; assert the outcome every case must have; return the error line."""
    take = snapshot or (lambda: digest(root))
    before = take()
    code, err, seconds = run(argv, capsys)
    line = one_error(err)
    assert code == status, err
    assert seconds < within, f"{seconds:.1f} s"
    for needle in needles:  # ImageryErrors lists each bad file on a line of its own below
        assert needle in err, err
    assert take() == before, "the store changed"
    return line


# --------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("step,args,words", [
    ("select", ["--budget", "nan"], "--budget: must be a finite number"),
    ("select", ["--budget", "inf"], "--budget: must be a finite number"),
    ("select", ["--audit", "0"], "--audit: must be > 0"),
    ("select", ["--device", "gpu0"], "'gpu0' is not a torch device"),
    ("ingest", ["--tile-size", "100000"], "--tile-size: must be >= 32 and <= 2048"),
    ("train", ["--holdout", "1.0"], "--holdout: must be >= 0 and < 1"),
    ("finetune", ["--lr", "nan"], "--lr: must be a finite number"),
    ("finetune", ["--lr", "-1"], "--lr: must be > 0"),
    ("ingest", ["--region", "../x"], "is not a valid region name"),
    ("ingest", ["--region", "Newtown"], "is not a valid region name"),
])
def test_the_parser_refuses_values_no_step_can_use(pipeline, capsys, step, args, words):
    check([step, *pipeline["s"], *([] if "--region" in args else ["--region", "newtown"]), *args],
          capsys, pipeline["store"], words)


@pytest.mark.parametrize("args,words", [
    (["--audit", "1000"], "--audit 1000: region 'newtown' has only 16 tile(s)"),
    (["--budget", "1000", "--max-label-share", "1"], "--budget 1000: region 'newtown' has only 16 tile(s)"),
    (["--budget", "10", "--audit", "10", "--max-label-share", "1"], "10 + 10 tiles, more than the 16 tile(s)"),
])
def test_select_refuses_counts_the_region_cannot_give(pipeline, capsys, args, words):
    check(["select", *pipeline["r"], *args], capsys, pipeline["store"], words)


def test_cuda_on_a_machine_without_it_is_one_error_before_anything_runs(pipeline, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for step in ("select", "finetune", "evaluate"):
        line = check([step, *pipeline["r"], "--device", "cuda", "--force"], capsys, pipeline["store"],
                     "--device cuda: ")
        assert ("no CUDA support" in line) or ("no CUDA GPU is visible" in line)
    check(["select", *pipeline["r"], "--device", "cuda:7"], capsys, pipeline["store"], "--device cuda:7")


def test_missing_upstream_step_is_named(pipeline, capsys):
    check(["select", *pipeline["s"], "--region", "nowhere"], capsys, pipeline["store"], "nowhere")
    check(["promote", *pipeline["s"], "--region", "nowhere"], capsys, pipeline["store"], "nowhere")


# --------------------------------------------------------------------------- files the user brings

def _pair(root: Path, pre: np.ndarray, post: np.ndarray, **post_kw) -> Path:
    write_tif(root / "pre" / "s.tif", pre)
    write_tif(root / "post" / "s.tif", post, **post_kw)
    return root


@pytest.mark.parametrize("case,words", [
    ("truncated", "post/s.tif: cannot be read"),
    ("garbage", "post/s.tif: cannot be read as an image"),
    ("other-crs", "does not overlap"),
    ("no-crs", "no CRS"),
    ("two-bands", "post/s.tif: has 2 bands"),
])
def test_bad_imagery_is_refused_before_anything_is_stored(pipeline, capsys, tmp_path, case, words):
    img = rng_image(0, (3, 128, 128))
    root = _pair(tmp_path / "in", img, img)
    post = root / "post" / "s.tif"
    if case == "truncated":
        post.write_bytes(post.read_bytes()[: post.stat().st_size // 2])
    elif case == "garbage":
        post.write_bytes(os.urandom(4000))
    elif case == "other-crs":
        _pair(root, img, img, crs="EPSG:32635")
    elif case == "no-crs":
        _pair(root, img, img, crs=None)
    else:
        _pair(root, img, img[:2])
    check(["ingest", *pipeline["s"], "--region", "badland", "--imagery", str(root), "--tile-size", "64"],
          capsys, pipeline["store"], words)


def test_a_malformed_label_export_is_refused(pipeline, capsys, tmp_path):
    export = tmp_path / "export.json"
    export.write_text("{not json")
    check(["import-labels", *pipeline["r"], "--labels", str(export), "--force"], capsys, pipeline["store"],
          str(export))


@pytest.mark.parametrize("step,flag", [("predict", "--model"), ("adapt", "--source-model")])
def test_random_bytes_as_a_model_file_is_one_line_that_never_suggests_unsafe_loading(
        pipeline, capsys, tmp_path, step, flag):
    bad = tmp_path / "model.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    line = check([step, *pipeline["r"], flag, str(bad), "--force"], capsys, pipeline["store"],
                 f"{bad}: not a readable model file (damaged, truncated, or not a torch file)")
    assert "weights_only" not in line and "trust" not in line


def test_a_model_file_with_pickled_objects_is_refused_without_running_them(tmp_path):
    import torch

    from damnet.checkpoint import CheckpointError, load_checkpoint
    from damnet.registry import ModelError, load_model_file

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_config": {}, "payload": Path("x")}, path)
    for load, kind in ((load_model_file, ModelError), (load_checkpoint, CheckpointError)):
        with pytest.raises(kind) as info:
            load(str(path))
        assert str(info.value).startswith(f"{path}: not a readable ")
        assert "holds Python objects besides tensors" in str(info.value)
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_a_worse_candidate_is_refused_with_status_3_and_changes_nothing_else(pipeline, capsys):
    store = pipeline["store"]
    before = digest(store)
    code, err, _ = run(["promote", *pipeline["r"], "--margin", "1", *SMALL_GATE], capsys)
    assert code == 3, err
    assert one_error(err).startswith("error: ") and "was not promoted" in err
    after = digest(store)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing stored changed
    new = set(after) - set(before)  # only the refusal's own record and outputs were added
    assert new and all(k.startswith(("regions/newtown/promote/", "regions/newtown/steps/promote")) for k in new)


# --------------------------------------------------------------------------- the store

def test_a_store_that_is_a_file_or_lies_under_one(pipeline, capsys, tmp_path):
    blocker = tmp_path / "store.txt"
    blocker.write_text("not a folder")
    check(["select", "--store", str(blocker), "--region", "newtown"], capsys, tmp_path,
          f"--store {blocker}: is a file, not a folder")
    check(["ingest", "--store", str(blocker / "sub" / "store"), "--region", "x",
           "--imagery", str(pipeline["store"] / "imagery" / "source")], capsys, tmp_path,
          f"{blocker} is a file, not a folder")


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing can be created in: chmod 555, and for root (whom modes do not stop) the
    same refusal the kernel gives everyone else, imitated in os.mkdir / os.open."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        real_mkdir, real_open = os.mkdir, os.open

        def inside(path) -> bool:
            return Path(os.path.abspath(path)).is_relative_to(folder)

        def mkdir(path, *args, **kwargs):
            if inside(path) and not os.path.exists(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        def open_(path, flags, *args, **kwargs):
            if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("where", ["store", "missing-parent"])
def test_a_read_only_store_or_one_whose_parent_cannot_be_made(pipeline, capsys, read_only, where):
    store = read_only if where == "store" else read_only / "missing" / "store"
    check(["ingest", "--store", str(store), "--region", "x", "--imagery",
           str(pipeline["store"] / "imagery" / "source"), "--tile-size", "64"], capsys, read_only,
          f"cannot store it: {read_only} is not writable")


@pytest.fixture
def s3_store(s3_bucket, s3_endpoint):
    """An S3 store with something in it; the environment points at moto with credentials."""
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="store/imagery/x/region.json", Body=b"{}")
    return {"uri": f"s3://{s3_bucket}/store", "snapshot": lambda: bucket_digest(s3_endpoint, s3_bucket)}


def test_s3_without_credentials(s3_store, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a session caches the credentials it found
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    check(["ingest", "--store", s3_store["uri"], "--region", "x"], capsys, tmp_path,
          "no usable S3 credentials", "AWS_ACCESS_KEY_ID", snapshot=s3_store["snapshot"])


def test_s3_endpoint_that_does_not_answer(s3_store, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DAMNET_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    check(["ingest", "--store", s3_store["uri"], "--region", "x"], capsys, tmp_path,
          "cannot reach the S3 endpoint http://127.0.0.1:9", "DAMNET_S3_ENDPOINT_URL", "gave up after 3 attempt(s)",
          status=75, within=20, snapshot=s3_store["snapshot"])


def test_s3_bucket_that_does_not_exist(s3_store, capsys, tmp_path):
    check(["ingest", "--store", "s3://no-such-bucket-here/store", "--region", "x"], capsys, tmp_path,
          "the bucket 'no-such-bucket-here' does not exist", snapshot=s3_store["snapshot"])


@pytest.mark.parametrize("code,status,kind,words", [
    ("AccessDenied", 403, "StorageError", r"access denied \(AccessDenied\) at http://127.0.0.1:9: check the S3 "
                                          r"credentials .* and the bucket's policy$"),
    ("SlowDown", 503, "StorageUnavailable", r"S3 refused the request \(SlowDown: try later\)$"),
])
def test_s3_refusals_name_what_to_check_and_whether_to_retry(code, status, kind, words):
    from botocore.stub import Stubber

    from damnet import storage
    from damnet.errors import EXIT_UNAVAILABLE, StorageError

    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          aws_access_key_id="a", aws_secret_access_key="b")
    with Stubber(client) as stub:
        stub.add_client_error("list_objects_v2", code, "try later" if status == 503 else "Access Denied", status)
        with pytest.raises(StorageError, match=f"^s3://b/p: {words}") as info:
            storage.S3Storage(client=client).list("s3://b/p")
    assert type(info.value).__name__ == kind
    assert getattr(info.value, "exit_code", 2) == (EXIT_UNAVAILABLE if status == 503 else 2)


def test_bad_s3_settings_are_named(monkeypatch):
    from damnet import storage
    from damnet.errors import StorageError

    monkeypatch.setenv("DAMNET_S3_MAX_ATTEMPTS", "zero")
    with pytest.raises(StorageError, match="DAMNET_S3_MAX_ATTEMPTS='zero': must be a positive whole number"):
        storage.S3Storage()


# --------------------------------------------------------------------------- MLflow

@pytest.fixture
def tracking(monkeypatch, pipeline):
    """Point MLflow at ``uri`` for one test; MLflow's HTTP knobs as they were afterwards."""
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)  # restored (removed) after the test, whatever the step set

    def use(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    yield use
    mlflow.set_tracking_uri(pipeline["mlflow"])


@pytest.mark.parametrize("step", ["select", "predict"])  # predict: only a models:/ URI to resolve
def test_tracking_server_down_fails_in_bounded_time_and_releases_the_lock(pipeline, capsys, monkeypatch,
                                                                          tracking, step):
    port = free_port()  # nothing listens there
    tracking(f"http://admin:s3cret@127.0.0.1:{port}")
    monkeypatch.setenv("DAMNET_MLFLOW_TIMEOUT", "2")
    line = check([step, *pipeline["r"], "--force"], capsys, pipeline["store"],
                 f"MLflow tracking at http://admin:***@127.0.0.1:{port} is not available", status=75, within=15)
    assert "s3cret" not in line
    assert not (pipeline["store"] / f"regions/newtown/steps/{step}.lock").exists()


def test_tracking_server_that_accepts_but_never_answers(pipeline, capsys, monkeypatch, tracking):
    with socket.socket() as hung:  # the kernel completes the handshake; nobody ever reads
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        port = hung.getsockname()[1]
        tracking(f"http://127.0.0.1:{port}")
        monkeypatch.setenv("DAMNET_MLFLOW_TIMEOUT", "1")
        check(["select", *pipeline["r"], "--force"], capsys, pipeline["store"],
              f"MLflow tracking at http://127.0.0.1:{port} is not available", status=75, within=20)
    assert not (pipeline["store"] / "regions/newtown/steps/select.lock").exists()


def test_tracking_server_lost_during_a_step_is_one_line_naming_it(pipeline, capsys, monkeypatch):
    """An MLflow call inside a step's body (here: promote's registry decision) whose retries ran out."""
    import requests
    from mlflow.exceptions import MlflowException

    import damnet.registry

    def lost(*args, **kwargs):
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded (Connection refused)")
        except requests.exceptions.ConnectionError:
            raise MlflowException("API request to http://u:pw@tracking/api/2.0/... failed") from None

    monkeypatch.setattr(damnet.registry, "record_decision", lost)
    line = check(["promote", *pipeline["r"], "--margin", "0.9", "--force", *SMALL_GATE], capsys, pipeline["store"],
                 f"MLflow tracking at {pipeline['mlflow']} is not available (no answer)", status=75)
    assert "pw" not in line
    assert not (pipeline["store"] / "regions/newtown/steps/promote.lock").exists()


def test_a_tracking_timeout_that_is_not_a_number_is_named(pipeline, capsys, monkeypatch):
    monkeypatch.setenv("DAMNET_MLFLOW_TIMEOUT", "soon")
    check(["select", *pipeline["r"], "--force"], capsys, pipeline["store"],
          "DAMNET_MLFLOW_TIMEOUT='soon': must be a positive number of seconds")


# --------------------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_is_one_line_and_the_lock_is_released(pipeline, sig, status, word):
    """Ctrl-C, and SIGTERM (Kubernetes stopping a pod, Airflow stopping a task)."""
    store = pipeline["store"]
    before = digest(store)
    env = {**os.environ, "MLFLOW_TRACKING_URI": pipeline["mlflow"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "components.cli", "finetune", *pipeline["r"], "--steps", "100000", *TINY, "--force"],
        cwd=pipeline["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the step runs (lock held, MLflow run open)
            if "running (key" in line:
                break
        assert (store / "regions/newtown/steps/finetune.lock").exists()
        time.sleep(3)  # into the training loop
        proc.send_signal(sig)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - sent < 30
    assert proc.returncode == status, err
    assert one_error(err) == f"error: {word} (damnet finetune)"
    assert not (store / "regions/newtown/steps/finetune.lock").exists()
    after = digest(store)  # interrupted before its first checkpoint: nothing of it is stored
    assert after == before, set(after) ^ set(before)


def test_an_error_line_never_shows_a_uris_password(capsys, monkeypatch):
    """Whatever a step's error quotes (MLflow, SQLAlchemy and requests quote the URI they were
    given), the printed line has the password as ***; ports, paths and e-mail addresses stay."""
    from components import cli
    from damnet.errors import DamnetError, redact_secrets

    assert redact_secrets("API request to http://u:pw@h:5000/api failed; postgresql+psycopg2://a:b%40c@db/x") \
        == "API request to http://u:***@h:5000/api failed; postgresql+psycopg2://a:***@db/x"
    assert redact_secrets("http://127.0.0.1:5000/a@b, ops@example.org") == "http://127.0.0.1:5000/a@b, ops@example.org"
    assert redact_secrets("mysql://u:p@ss@db/x and http://v:w@h") == "mysql://u:***@db/x and http://v:***@h"

    def fails(args):
        raise DamnetError("models:/m@champion: cannot be resolved (API request to http://alice:s3cret@h/api)")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(fails))
    assert cli.main([]) == 2
    line = one_error(capsys.readouterr().err)
    assert "s3cret" not in line and "http://alice:***@h/api" in line


def _parser_running(body):
    import argparse

    parser = argparse.ArgumentParser()
    parser.set_defaults(_run=body, step="x", threads=None, verbose=False)
    return parser
