"""s3:// imagery is read in place through GDAL's /vsis3/, by window, with the store's settings."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import free_port, write_tif
from rasterio.windows import Window

from damnet import storage, vsis3
from damnet.errors import StorageError, StorageUnavailable
from damnet.imagery.raster import open_raster
from damnet.tiling import TilingConfig, ingest


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server that counts the body bytes served."""

    def __init__(self, upstream: str) -> None:
        target = urlparse(upstream)
        proxy = self
        self.served = 0
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                proxy.served += len(data)
                proxy.requests.append(f"{self.command} {self.path} {self.headers.get('Range')}")
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(s3_endpoint):
    p = CountingProxy(s3_endpoint)
    yield p
    p.close()


def _upload_scene(tmp_path, bucket: str, key: str, size: int = 2048) -> tuple[np.ndarray, int]:
    data = np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8)  # incompressible
    path = write_tif(tmp_path / "scene.tif", data, tiled=True, blockxsize=256, blockysize=256)
    storage.S3Storage().client.upload_file(str(path), bucket, key)
    return data, path.stat().st_size


def test_a_window_fetches_a_small_part_of_the_scene(tmp_path, s3_bucket, proxy, monkeypatch):
    """A 256 x 256 window of a 2048 x 2048 x 3 scene (12.6 MB) costs the header and the tiles
    it touches, not the file: the proxy in front of moto counts the bytes it served."""
    data, size = _upload_scene(tmp_path, s3_bucket, "region/pre/city.tif")
    monkeypatch.setenv("DAMNET_S3_ENDPOINT_URL", proxy.url)  # boto3 and GDAL both go through it
    with vsis3.reading_tree(f"s3://{s3_bucket}/region") as (root, listing):
        assert list(listing) == ["pre/city.tif"]
        assert str(root) == f"/vsis3/{s3_bucket}/region"
        listed = proxy.served
        with open_raster(root / "pre" / "city.tif") as src:
            window = src.read(window=Window(1024, 512, 256, 256))
    np.testing.assert_array_equal(window, data[:, 512:768, 1024:1280])
    fetched = proxy.served - listed
    assert all(r.startswith("GET") and "None" not in r for r in proxy.requests[1:]), proxy.requests
    assert fetched < size / 20, f"fetched {fetched} of {size} bytes: {proxy.requests}"
    assert fetched >= 256 * 256 * 3  # at least the pixels of the window


def test_ingest_reads_s3_in_place_and_tiles_the_same(tmp_path, s3_bucket, monkeypatch):
    """Ingest of an s3:// region gives the tiles of the same region ingested from disk."""
    from damnet.synthetic import write_region

    write_region(str(tmp_path / "local"), "source", n_scenes=1, size=128, seed=0)
    write_region(f"s3://{s3_bucket}/raw", "source", n_scenes=1, size=128, seed=0)
    local = ingest(str(tmp_path / "local"), str(tmp_path / "tiles"), TilingConfig(size=64))
    remote = ingest(f"s3://{s3_bucket}/raw", str(tmp_path / "tiles-s3"), TilingConfig(size=64))
    assert [t["stats"] for t in remote["tiles"]] == [t["stats"] for t in local["tiles"]]
    assert [t["files"] for t in remote["tiles"]][0]["pre"].endswith(local["tiles"][0]["tile_id"] + ".tif")
    assert remote["pairs"][0]["files"] == local["pairs"][0]["files"]
    again = ingest(f"s3://{s3_bucket}/raw", str(tmp_path / "tiles-s3"), TilingConfig(size=64))
    assert again["version"] == remote["version"] and again["created"] == remote["created"]


def test_gdal_options_follow_the_store_settings(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("DAMNET_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("DAMNET_S3_MAX_ATTEMPTS", "4")
    credentials, options = vsis3.gdal_s3_options()
    assert credentials == {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}
    assert options["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and options["AWS_HTTPS"] == "NO"
    assert options["AWS_VIRTUAL_HOSTING"] == "FALSE" and options["AWS_REGION"] == "eu-west-3"
    assert options["GDAL_HTTP_MAX_RETRY"] == "3"
    monkeypatch.setenv("DAMNET_S3_ENDPOINT_URL", "https://minio.example.org")
    assert vsis3.gdal_s3_options()[1]["AWS_HTTPS"] == "YES"


def test_an_unreachable_store_is_one_storage_error_naming_the_uri(s3_bucket, monkeypatch):
    monkeypatch.setenv("DAMNET_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("DAMNET_S3_MAX_ATTEMPTS", "1")
    uri = f"s3://{s3_bucket}/region"
    with pytest.raises(StorageUnavailable, match=f"{uri}.*cannot reach the S3 endpoint"), vsis3.reading_tree(uri):
        pass


def test_gdal_failing_where_boto3_reaches_the_object_is_a_storage_error(tmp_path, s3_bucket, s3_endpoint):
    """boto3 reaches the store, GDAL does not (here: GDAL pointed at a dead port): one
    StorageError naming the s3:// URI and what to check, not "damaged image"."""
    _upload_scene(tmp_path, s3_bucket, "r/pre/x.tif", size=64)
    dead = f"http://127.0.0.1:{free_port()}"
    with (vsis3.gdal_env(endpoint_url=dead),
          pytest.raises(StorageError, match=rf"s3://{s3_bucket}/r/pre/x.tif: GDAL cannot read it")):
        open_raster(vsis3.Path(f"/vsis3/{s3_bucket}/r/pre/x.tif"))
    with vsis3.gdal_env(), pytest.raises(StorageError, match=r"/r/pre/missing.tif: no such object"):
        open_raster(vsis3.Path(f"/vsis3/{s3_bucket}/r/pre/missing.tif"))


def test_a_file_that_is_no_image_stays_an_imagery_error(s3_bucket):
    from damnet.errors import ImageryError

    storage.S3Storage().client.put_object(Bucket=s3_bucket, Key="r/pre/bad.tif", Body=b"not a tiff" * 50)
    with vsis3.gdal_env(), pytest.raises(ImageryError, match=rf"s3://{s3_bucket}/r/pre/bad.tif: cannot be read"):
        open_raster(vsis3.Path(f"/vsis3/{s3_bucket}/r/pre/bad.tif"))
