"""Reading ``s3://`` imagery in place through GDAL's ``/vsis3/`` (range requests, no download).

The settings are those of :class:`damnet.storage.S3Storage`'s boto3 client: the endpoint
from ``DAMNET_S3_ENDPOINT_URL`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``),
credentials and region from boto3's chain, retries and timeouts from ``DAMNET_S3_*``.
:func:`reading_tree` gives a region folder to read in place (local or ``s3://``);
:func:`gdal_problem` turns GDAL's failure to open an object into the store's error
(:class:`~damnet.errors.StorageError` / :class:`~damnet.errors.StorageUnavailable`, naming
the ``s3://`` URI) where the store, not the file, is at fault.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from damnet.errors import StorageError
from damnet.storage import S3Storage, _env_number, is_s3, local_path, split_s3


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint the store uses: ``endpoint_url``, else ``DAMNET_S3_ENDPOINT_URL``, else
    boto3's ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; None: AWS itself."""
    for value in (endpoint_url, os.environ.get("DAMNET_S3_ENDPOINT_URL"),
                  os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL")):
        if value:
            return value
    return None


def vsi_path(uri: str) -> str:
    """GDAL's name for ``uri``: ``/vsis3/bucket/key`` for ``s3://bucket/key``, else the local path."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"/vsis3/{bucket}/{key}"
    return str(local_path(uri))


def s3_uri(path: str | os.PathLike) -> str:
    """``s3://bucket/key`` for a ``/vsis3/bucket/key`` path; other paths as they are."""
    text = str(path)
    return "s3://" + text[len("/vsis3/"):] if text.startswith("/vsis3/") else text


def gdal_s3_options(endpoint_url: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``(credentials, options)``: GDAL configuration for reading ``/vsis3/`` from the same
    store boto3 (:class:`S3Storage`) talks to.

    Credentials come from boto3's own chain (environment, profile, a pod's service account);
    the region from boto3 (``AWS_DEFAULT_REGION`` / ``AWS_REGION`` / the profile, else
    us-east-1); the endpoint from :func:`s3_endpoint`: a custom endpoint is addressed by path
    (``AWS_VIRTUAL_HOSTING=FALSE``), over plain HTTP when its URL says ``http://``. Retries
    and timeouts follow ``DAMNET_S3_MAX_ATTEMPTS``, ``DAMNET_S3_CONNECT_TIMEOUT`` and
    ``DAMNET_S3_READ_TIMEOUT``.
    """
    import boto3

    session = boto3.Session()
    found = session.get_credentials()
    credentials: dict[str, str] = {}
    options = {
        "AWS_REGION": session.region_name or "us-east-1",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # never list a prefix to open one file
        "GDAL_HTTP_MAX_RETRY": str(int(_env_number("DAMNET_S3_MAX_ATTEMPTS", 3, int)) - 1),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_CONNECTTIMEOUT": str(int(math.ceil(_env_number("DAMNET_S3_CONNECT_TIMEOUT", 5.0)))),
        "GDAL_HTTP_TIMEOUT": str(int(math.ceil(_env_number("DAMNET_S3_READ_TIMEOUT", 60.0)))),
    }
    if found is None:
        options["AWS_NO_SIGN_REQUEST"] = "YES"
    else:
        frozen = found.get_frozen_credentials()
        credentials = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
        if frozen.token:
            credentials["AWS_SESSION_TOKEN"] = frozen.token
    endpoint = s3_endpoint(endpoint_url)
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parsed.netloc:
            raise StorageError(f"S3 endpoint {endpoint!r}: not a URL (DAMNET_S3_ENDPOINT_URL)")
        options.update(AWS_S3_ENDPOINT=parsed.netloc + parsed.path.rstrip("/"),
                       AWS_HTTPS="NO" if parsed.scheme == "http" else "YES",
                       AWS_VIRTUAL_HOSTING="FALSE")
    return credentials, options


def gdal_env(endpoint_url: str | None = None):
    """A :class:`rasterio.Env` in which GDAL reads ``/vsis3/`` paths (:func:`gdal_s3_options`)."""
    import rasterio
    from rasterio.session import Session

    credentials, options = gdal_s3_options(endpoint_url)

    class _Credentials(Session):  # rasterio takes AWS keys only from a session
        def get_credential_options(self) -> dict[str, str]:
            return dict(credentials)

    return rasterio.Env(session=_Credentials(), **options)


def gdal_problem(path: str | os.PathLike, exc: BaseException, endpoint_url: str | None = None) -> StorageError | None:
    """Why GDAL could not open ``/vsis3/`` ``path`` when the store is to blame, else None.

    Asks boto3 about the object: an endpoint that does not answer is a
    :class:`StorageUnavailable`, a missing object or refused credentials a :class:`StorageError`
    (as :func:`s3_error` says them). When boto3 reaches the object but GDAL said it cannot
    find it, GDAL cannot reach the store (no ``/vsis3/`` support, a proxy, TLS): a
    :class:`StorageError` saying so. None: the object is there and GDAL read it, so the
    fault is in the file (the caller reports it as bad imagery).
    """
    uri = s3_uri(path)
    text = str(exc)
    store = S3Storage(endpoint_url)
    bucket, key = split_s3(uri)
    with store._faults(uri, "reading"):
        store.client.head_object(Bucket=bucket, Key=key)
    if "not recognized as" in text and "supported file format" in text and "does not exist" not in text:
        return None
    return StorageError(f"{uri}: GDAL cannot read it through /vsis3/ at "
                        f"{s3_endpoint(endpoint_url) or 'the AWS default endpoint'} although boto3 can "
                        f"({text.strip()}); check that GDAL was built with curl (/vsis3/) and "
                        "DAMNET_S3_ENDPOINT_URL, AWS_REGION")


@contextlib.contextmanager
def reading_tree(uri: str, endpoint_url: str | None = None) -> Iterator[tuple[Path, dict[str, str] | None]]:
    """``(root, listing)`` of a folder to read in place, without downloading it.

    A local folder: its path and None (look at the file system). An ``s3://`` prefix:
    ``Path("/vsis3/bucket/prefix")``, which GDAL reads by HTTP range requests, and
    ``listing``: the path of every object below it, relative to it (posix), to a
    fingerprint of its content (``"<ETag> <size>"``); GDAL's ``/vsis3/`` settings
    (:func:`gdal_env`) hold inside the block.
    """
    if not is_s3(uri):
        root = local_path(uri)
        if not root.is_dir():
            raise StorageError(f"{uri}: no such folder")
        yield root, None
        return
    base = uri.rstrip("/") + "/"
    objects = S3Storage(endpoint_url).listing(base)
    if not objects:
        raise StorageError(f"{uri}: no objects under this prefix")
    listing = {obj[len(base):]: fingerprint for obj, fingerprint in objects.items()}
    with gdal_env(endpoint_url):
        yield Path(vsi_path(base.rstrip("/"))), listing
