"""One small storage interface for ``file://`` (or plain paths) and ``s3://`` URIs.

Every step reads and writes through it. Writes are atomic: data goes to a temporary
name first and is moved into place only when complete, so a crash or an exception never
leaves a partial object under the final name, and an object that was already there stays
intact until the new one is whole.

S3 works against any S3 API (AWS, MinIO, a local moto server): the endpoint comes from the
``endpoint_url`` argument, else ``DAMNET_S3_ENDPOINT_URL``, else boto3's own
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. Credentials come only from the environment
(or whatever boto3's default chain finds, e.g. a pod's service account).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from damnet.errors import StorageError

#: Temporary objects of unfinished S3 writes live under this prefix of the same bucket,
#: never next to the final key, so a crash cannot leave something a reader would pick up.
S3_TMP_PREFIX = ".damnet-tmp/"
_LOCAL_TMP_MARK = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp creates files readable by the owner only; finished files get the usual mode.
_FILE_MODE = 0o666 & ~_umask()


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join URI (or path) parts with ``/``, whatever the scheme."""
    out = str(base).rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def local_path(uri: str | os.PathLike) -> Path:
    """The local path of a ``file://`` URI or plain path."""
    uri = str(uri)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        return Path(unquote(parsed.netloc + parsed.path))
    if "://" in uri:
        raise StorageError(f"{uri}: not a local path or file:// URI")
    return Path(uri)


def absolute(uri: str) -> str:
    """``uri`` in the one form records keep: s3:// URIs as given, ``file://`` URIs and relative
    paths as absolute paths (so a record means the same from any working directory)."""
    uri = str(uri)
    return uri if is_s3(uri) else str(local_path(uri).resolve())


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


class Storage:
    """Interface shared by :class:`LocalStorage` and :class:`S3Storage`."""

    def exists(self, uri: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """All objects under ``prefix`` (recursive), as full URIs, sorted."""
        raise NotImplementedError

    def digest(self, uri: str) -> str:
        """sha256 of the content of ``uri``."""
        h = hashlib.sha256()
        with self.reading(uri) as path, open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def listing(self, prefix: str) -> dict[str, str]:
        """URI -> a fingerprint of the content of every object under ``prefix`` (here: its
        sha256; stores that know one without reading the content override this)."""
        return {uri: self.digest(uri) for uri in self.list(prefix)}

    def delete(self, uri: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def writing(self, uri: str, suffix: str = "") -> Iterator[Path]:
        """Yield a local path to write; on success it becomes ``uri`` atomically.

        On an exception nothing is stored and an existing object under ``uri`` is kept.
        ``suffix`` lets writers that infer the format from the name (GDAL) see it.
        """
        raise NotImplementedError
        yield Path()  # pragma: no cover

    @contextlib.contextmanager
    def reading(self, uri: str) -> Iterator[Path]:
        """Yield a local path with the content of ``uri`` (a download for remote stores)."""
        raise NotImplementedError
        yield Path()  # pragma: no cover

    def put_file(self, src: str | os.PathLike, uri: str) -> None:
        with self.writing(uri) as tmp:
            shutil.copyfile(src, tmp)

    def get_file(self, uri: str, dst: str | os.PathLike) -> None:
        with self.reading(uri) as src:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)

    def put_bytes(self, uri: str, data: bytes) -> None:
        with self.writing(uri) as tmp:
            tmp.write_bytes(data)

    def get_bytes(self, uri: str) -> bytes:
        with self.reading(uri) as src:
            return src.read_bytes()

    def put_text(self, uri: str, text: str) -> None:
        self.put_bytes(uri, text.encode("utf-8"))

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Store ``data`` under ``uri`` only if nothing is there yet, in one atomic step (a lock).

        True if this call created it, False if the object already existed.
        """
        raise NotImplementedError

    def get_text(self, uri: str) -> str:
        return self.get_bytes(uri).decode("utf-8")


class LocalStorage(Storage):
    """Files on a local (or mounted) file system."""

    def exists(self, uri: str) -> bool:
        return local_path(uri).is_file()

    def list(self, prefix: str) -> list[str]:
        root = local_path(prefix)
        if root.is_file():
            return [str(root)]
        if not root.is_dir():
            return []
        return sorted(
            str(p) for p in root.rglob("*") if p.is_file() and _LOCAL_TMP_MARK not in p.name
        )

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        final = local_path(uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        # written whole under a temporary name, then hard-linked: link() fails if the name
        # exists, so a reader never sees a half-written object
        fd, name = tempfile.mkstemp(prefix=f".{final.name}{_LOCAL_TMP_MARK}", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(name, _FILE_MODE)
            try:
                os.link(name, final)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: exclusive create, then write
                try:
                    out = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
                except FileExistsError:
                    return False
                with os.fdopen(out, "wb") as f:
                    f.write(data)
            return True
        finally:
            os.unlink(name)

    @contextlib.contextmanager
    def writing(self, uri: str, suffix: str = "") -> Iterator[Path]:
        final = local_path(uri)
        if final.is_dir():
            raise StorageError(f"{uri}: is a folder, cannot write a file there")
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{final.name}{_LOCAL_TMP_MARK}", suffix=suffix, dir=final.parent
        )
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def reading(self, uri: str) -> Iterator[Path]:
        path = local_path(uri)
        if not path.is_file():
            raise StorageError(f"{uri}: no such file")
        yield path


class S3Storage(Storage):
    """Objects in an S3 API (AWS S3, MinIO, a local moto server)."""

    def __init__(self, endpoint_url: str | None = None, client=None) -> None:
        if client is None:
            import boto3

            endpoint_url = endpoint_url or os.environ.get("DAMNET_S3_ENDPOINT_URL") or None
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"{uri}: {exc}") from exc
        return True

    def list(self, prefix: str) -> list[str]:
        return sorted(self.listing(prefix))

    def listing(self, prefix: str) -> dict[str, str]:
        """URI -> ``"<ETag> <size>"`` of every object under ``prefix``, from the listing alone:
        a fingerprint of the content that needs no download."""
        bucket, key = split_s3(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        out = {}
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                if not obj["Key"].startswith(S3_TMP_PREFIX):
                    out[f"s3://{bucket}/{obj['Key']}"] = f"{obj['ETag'].strip(chr(34))} {obj['Size']}"
        return out

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self.client.delete_object(Bucket=bucket, Key=key)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:  # a conditional write (AWS S3 since 2024, MinIO, moto): refused if the key exists
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                              "412", "409"):
                return False
            raise StorageError(f"{uri}: cannot create: {exc}") from exc
        return True

    @contextlib.contextmanager
    def writing(self, uri: str, suffix: str = "") -> Iterator[Path]:
        bucket, key = split_s3(uri)
        if not key or key.endswith("/"):
            raise StorageError(f"{uri}: an object URI needs a key that is not a folder")
        with tempfile.TemporaryDirectory(prefix="damnet-put-") as d:
            tmp = Path(d) / f"object{suffix}"
            tmp.touch()
            yield tmp
            # Upload under a temporary key (multipart for big files), then a server-side
            # copy puts it in place in one step. A failed upload is aborted by boto3 and
            # its temporary key removed here, so no partial object ever sits at ``key``.
            tmp_key = f"{S3_TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                self.client.upload_file(str(tmp), bucket, tmp_key)
                self.client.copy({"Bucket": bucket, "Key": tmp_key}, bucket, key)
            except Exception as exc:
                raise StorageError(f"{uri}: upload failed: {exc}") from exc
            finally:
                with contextlib.suppress(Exception):
                    self.client.delete_object(Bucket=bucket, Key=tmp_key)

    @contextlib.contextmanager
    def reading(self, uri: str) -> Iterator[Path]:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        with tempfile.TemporaryDirectory(prefix="damnet-get-") as d:
            tmp = Path(d) / (Path(key).name or "object")
            try:
                self.client.download_file(bucket, key, str(tmp))
            except ClientError as exc:
                raise StorageError(f"{uri}: cannot read: {exc}") from exc
            yield tmp


def storage_for(uri: str, endpoint_url: str | None = None) -> Storage:
    """The storage that serves ``uri`` (``s3://`` or a local path / ``file://``)."""
    return S3Storage(endpoint_url) if is_s3(uri) else LocalStorage()


@contextlib.contextmanager
def local_copy(uri: str, endpoint_url: str | None = None) -> Iterator[Path]:
    """A local path for ``uri``: the file itself, or a temporary download of an object."""
    with storage_for(uri, endpoint_url).reading(uri) as path:
        yield path


@contextlib.contextmanager
def local_tree(uri: str, endpoint_url: str | None = None) -> Iterator[Path]:
    """A local folder holding everything under ``uri`` (downloaded when remote)."""
    if not is_s3(uri):
        root = local_path(uri)
        if not root.is_dir():
            raise StorageError(f"{uri}: no such folder")
        yield root
        return
    store = S3Storage(endpoint_url)
    base = uri.rstrip("/") + "/"
    objects = store.list(base)
    if not objects:
        raise StorageError(f"{uri}: no objects under this prefix")
    with tempfile.TemporaryDirectory(prefix="damnet-tree-") as d:
        root = Path(d).resolve()
        for obj in objects:
            dst = (root / obj[len(base):]).resolve()
            if not dst.is_relative_to(root):
                raise StorageError(f"{obj}: key escapes the prefix {uri}; refusing to download")
            store.get_file(obj, dst)
        yield root
