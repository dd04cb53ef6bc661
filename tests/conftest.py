"""Shared fixtures: a real S3 API (moto's server on loopback) and small GeoTIFF helpers."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from affine import Affine

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server bound to 127.0.0.1 on a free port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, request):
    """A fresh bucket; the environment points boto3 (and so ``damnet.storage``) at moto."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DAMNET_S3_ENDPOINT_URL", s3_endpoint)
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    return name


def write_tif(path: Path, data: np.ndarray, crs="EPSG:32631", transform=None, **extra) -> Path:
    """Write (bands, H, W) or (H, W) ``data`` as a GeoTIFF (no CRS when ``crs`` is None)."""
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
               "count": data.shape[0], "dtype": data.dtype.name,
               "transform": transform or Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000), **extra}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_png(path: Path, data: np.ndarray) -> Path:
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="PNG", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype="uint8") as dst:
        dst.write(data)
    return path


def rng_image(seed: int, shape=(3, 64, 64), dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 2047
    return rng.integers(0, top, size=shape).astype(dtype)


@pytest.fixture(scope="session")
def tiny_regions(tmp_path_factory):
    """A labelled source region and a labelled target region (tiles of 64 px), made once."""
    from damnet.synthetic import write_region
    from damnet.tiling import TilingConfig, ingest

    root = tmp_path_factory.mktemp("regions")
    out = {}
    for name, style, seed in (("source", "source", 0), ("target", "target_season", 1)):
        write_region(str(root / "raw" / name), style, n_scenes=2, size=256, seed=seed)
        ingest(str(root / "raw" / name), str(root / name), TilingConfig(size=64, require_labels=True))
        out[name] = str(root / name)
    return out


@pytest.fixture
def mlflow_sqlite(tmp_path, monkeypatch):
    """MLflow on a fresh SQLite file; artifacts under tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 90.0) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1: SQLite backend, artifacts proxied to S3 (moto).

    Yields ``(tracking_uri, artifact_bucket)``.
    """
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("mlflow-server")
    bucket = "mlflow-artifacts"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{bucket}/artifacts"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}", bucket
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """A throw-away PostgreSQL on 127.0.0.1 (initdb refuses root: run it as the postgres user)."""
    import getpass
    import shutil
    import subprocess

    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed on this machine")
    import tempfile

    # Not under pytest's tmp folder: its parents are private to root, and initdb runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="damnet-pg-"))
    port = free_port()
    as_root = getpass.getuser() == "root"
    if as_root:
        shutil.chown(root, "postgres", "postgres")

    def sh(cmd: str) -> None:
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", cmd] if as_root else ["bash", "-c", cmd]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    sh(f"initdb -D {root}/db -A trust -U app")
    sh(f"pg_ctl -D {root}/db -o '-c listen_addresses=127.0.0.1 -p {port} -k {root}' -l {root}/log -w start")
    try:
        yield f"postgresql+psycopg://app@127.0.0.1:{port}/postgres"
    finally:
        sh(f"pg_ctl -D {root}/db -m fast stop")
        shutil.rmtree(root, ignore_errors=True)


#: small training settings for the steps in tests
TINY = ["--batch-size", "4", "--crop", "64"]


def exported_region(root: Path, mp: pytest.MonkeyPatch, truth: Path, train_steps: int = 10, adapt_steps: int = 4,
                    select: tuple[str, ...] = ()) -> tuple[Path, list[str]]:
    """A store under ``root`` whose labelled 'source' region has a trained model and whose region
    'newtown' (synthetic, its labels written to ``truth``) went through ingest, adapt, select (a
    budget of 2, 4 audit tiles, plus ``select``) and export-labels, with MLflow on SQLite
    (``mp`` sets the environment for the caller's scope). Returns the store and newtown's
    ``--store .. --region newtown`` arguments."""
    import mlflow

    from components.cli import main
    from damnet.synthetic import write_region

    store = root / "store"
    mp.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    write_region(str(store / "imagery" / "source"), "source", n_scenes=1, size=256, seed=0)
    write_region(str(store / "imagery" / "newtown"), "target_season", n_scenes=1, size=256, seed=1,
                 labels_uri=str(truth))
    s = ["--store", str(store)]
    r = [*s, "--region", "newtown"]
    for argv in (["ingest", *s, "--region", "source", "--tile-size", "64", "--require-labels"],
                 ["train", *s, "--steps", str(train_steps), *TINY],
                 ["ingest", *r, "--tile-size", "64"],
                 ["adapt", *r, "--steps", str(adapt_steps), *TINY],
                 ["select", *r, "--budget", "2", "--audit", "4", "--max-label-share", "0.5", *select],
                 ["export-labels", *r]):
        assert main(argv) == 0, argv
    return store, r

