"""One small storage interface for ``file://`` (or plain paths) and ``s3://`` URIs.

Every step reads and writes through it. Writes are atomic: data goes to a temporary
name first and is moved into place only when complete, so a crash or an exception never
leaves a partial object under the final name, and an object that was already there stays
intact until the new one is whole.

S3 works against any S3 API (AWS, MinIO, a local moto server): the endpoint comes from the
``endpoint_url`` argument, else ``DAMNET_S3_ENDPOINT_URL``, else boto3's own
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. Credentials come only from the environment
(or whatever boto3's default chain finds, e.g. a pod's service account).

Faults of the store itself (no S3 credentials, an endpoint that does not answer, a missing
bucket, access denied, a local path under a file or not writable) are raised as one
:class:`~damnet.errors.StorageError` naming the URI and what to check (an endpoint that does not
answer: :class:`~damnet.errors.StorageUnavailable`, exit 75, worth a retry). S3 calls give up after
``DAMNET_S3_MAX_ATTEMPTS`` attempts (default 3) with a connect timeout of
``DAMNET_S3_CONNECT_TIMEOUT`` seconds (default 5) and a read timeout of
``DAMNET_S3_READ_TIMEOUT`` seconds (default 60), so an unreachable store fails in seconds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from damnet.errors import StorageError, StorageUnavailable

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


def _local_problem(uri: str, exc: OSError) -> str:
    """What an OSError of creating ``uri`` (or its folders) means, in words a user can act on."""
    path = local_path(uri).absolute()
    above = list(reversed(path.parents))
    blocker = next((p for p in above if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return f"{uri}: cannot store it: {blocker} is a file, not a folder"
    existing = next((p for p in reversed(above) if p.exists()), Path("/"))
    if exc.errno == errno.EROFS:
        return f"{uri}: cannot store it: {existing} is on a read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{uri}: cannot store it: {existing} is not writable (permission denied); "
                "check the store path and its permissions")
    if exc.errno == errno.ENOSPC:
        return f"{uri}: cannot store it: no space left on the device of {existing}"
    return f"{uri}: cannot store it: {exc.strerror or exc}"


@contextlib.contextmanager
def _local_faults(uri: str) -> Iterator[None]:
    """OSErrors of creating folders and files for ``uri`` as one :class:`StorageError`."""
    try:
        yield
    except OSError as exc:
        raise StorageError(_local_problem(uri, exc)) from exc


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
        with _local_faults(uri):
            local_path(uri).unlink(missing_ok=True)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        with _local_faults(uri):
            return self._create_exclusive(uri, data)

    def _create_exclusive(self, uri: str, data: bytes) -> bool:
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
        with _local_faults(uri):
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{final.name}{_LOCAL_TMP_MARK}", suffix=suffix, dir=final.parent
            )
            os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            with _local_faults(uri):
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


def _env_number(name: str, default: float, kind: type = float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise StorageError(f"{name}={text!r}: must be a positive {'whole ' if kind is int else ''}number")
    return value


def s3_client_config() -> object:
    """botocore's ``Config`` for the store: short connect timeout, few retries (module docstring)."""
    from botocore.config import Config

    return Config(connect_timeout=_env_number("DAMNET_S3_CONNECT_TIMEOUT", 5.0),
                  read_timeout=_env_number("DAMNET_S3_READ_TIMEOUT", 60.0),
                  retries={"total_max_attempts": int(_env_number("DAMNET_S3_MAX_ATTEMPTS", 3, int)),
                           "mode": "standard"})


_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken", "AllAccessDisabled", "AccountProblem"}
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


_LATER = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "500", "503"}


def s3_error(exc: BaseException, uri: str, endpoint: str | None, tried: str = "") -> StorageError | None:
    """What an S3 fault means for ``uri``, as one line; None for errors that are not the store's.

    An endpoint that does not answer (or asks to try later) is a :class:`StorageUnavailable`
    (exit 75: worth a retry); credentials, buckets and permissions are the user's to fix (exit 2).
    ``tried``: how hard the client tried (attempts, timeouts), said when the endpoint is unreachable.
    """
    from botocore import exceptions as bx

    where = endpoint or "the AWS default endpoint"
    for cause in _chain(exc):
        code = _error_code(cause)
        if isinstance(cause, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
            return StorageError(f"{uri}: no usable S3 credentials ({cause}): set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the pod's service account)")
        if isinstance(cause, (bx.ConnectionError, bx.HTTPClientError)):
            return StorageUnavailable(
                f"{uri}: cannot reach the S3 endpoint {where} ({type(cause).__name__}): check "
                f"DAMNET_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and that the server is up{tried}")
        if code == "NoSuchBucket":
            return StorageError(f"{uri}: the bucket {split_s3(uri)[0]!r} does not exist at {where}: check the "
                                "store URI (--store, DAMNET_STORE) or create the bucket")
        if code in _DENIED:
            return StorageError(f"{uri}: access denied ({code}) at {where}: check the S3 credentials "
                                "(AWS_ACCESS_KEY_ID, AWS_PROFILE or service account) and the bucket's policy")
        if code in _MISSING:
            return StorageError(f"{uri}: no such object")
        if code:
            message = cause.response.get("Error", {}).get("Message", "")  # type: ignore[attr-defined]
            kind = StorageUnavailable if code in _LATER else StorageError
            return kind(f"{uri}: S3 refused the request ({code}{': ' + message if message else ''})")
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (boto3 wraps botocore's in its own)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


class S3Storage(Storage):
    """Objects in an S3 API (AWS S3, MinIO, a local moto server)."""

    def __init__(self, endpoint_url: str | None = None, client=None) -> None:
        if client is None:
            import boto3

            endpoint_url = endpoint_url or os.environ.get("DAMNET_S3_ENDPOINT_URL") or None
            try:
                client = boto3.client("s3", endpoint_url=endpoint_url, config=s3_client_config())
            except ValueError as exc:  # botocore: "Invalid endpoint: ..."
                raise StorageError(f"DAMNET_S3_ENDPOINT_URL={endpoint_url!r}: {exc}") from exc
        self.client = client

    @contextlib.contextmanager
    def _faults(self, uri: str, what: str = "") -> Iterator[None]:
        """S3 faults of the calls inside as one :class:`StorageError` naming ``uri`` (s3_error)."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            from boto3.exceptions import Boto3Error
            from botocore.exceptions import BotoCoreError, ClientError

            cfg = self.client.meta.config
            attempts = (cfg.retries or {}).get("total_max_attempts")
            tried = (f" (gave up after {attempts} attempt(s), {cfg.connect_timeout} s connect timeout: "
                     "DAMNET_S3_MAX_ATTEMPTS, DAMNET_S3_CONNECT_TIMEOUT)") if attempts else ""
            error = s3_error(exc, uri, self.client.meta.endpoint_url, tried)
            if error is None and isinstance(exc, (BotoCoreError, ClientError, Boto3Error, OSError)):
                error = StorageError(f"{uri}: {what or 'S3 request'} failed ({exc})")
            if error is None:
                raise
            raise error from exc

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        try:
            with self._faults(uri):
                self.client.head_object(Bucket=bucket, Key=key)
        except StorageError as exc:
            if _error_code(exc.__cause__ or exc) in _MISSING:
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        return sorted(self.listing(prefix))

    def listing(self, prefix: str) -> dict[str, str]:
        """URI -> ``"<ETag> <size>"`` of every object under ``prefix``, from the listing alone:
        a fingerprint of the content that needs no download."""
        bucket, key = split_s3(prefix)
        out = {}
        with self._faults(prefix, "listing"):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    if not obj["Key"].startswith(S3_TMP_PREFIX):
                        out[f"s3://{bucket}/{obj['Key']}"] = f"{obj['ETag'].strip(chr(34))} {obj['Size']}"
        return out

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        with self._faults(uri, "delete"):
            self.client.delete_object(Bucket=bucket, Key=key)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        bucket, key = split_s3(uri)
        try:  # a conditional write (AWS S3 since 2024, MinIO, moto): refused if the key exists
            with self._faults(uri, "create"):
                self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except StorageError as exc:
            if _error_code(exc.__cause__ or exc) in ("PreconditionFailed", "ConditionalRequestConflict",
                                                      "412", "409"):
                return False
            raise
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
                with self._faults(uri, "upload"):
                    self.client.upload_file(str(tmp), bucket, tmp_key)
                    self.client.copy({"Bucket": bucket, "Key": tmp_key}, bucket, key)
            finally:
                with contextlib.suppress(Exception):
                    self.client.delete_object(Bucket=bucket, Key=tmp_key)

    @contextlib.contextmanager
    def reading(self, uri: str) -> Iterator[Path]:
        bucket, key = split_s3(uri)
        with tempfile.TemporaryDirectory(prefix="damnet-get-") as d:
            tmp = Path(d) / (Path(key).name or "object")
            with self._faults(uri, "download"):
                self.client.download_file(bucket, key, str(tmp))
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
