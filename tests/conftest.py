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
