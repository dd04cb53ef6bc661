"""The storage interface, locally and against a real S3 API (moto server on loopback)."""

from __future__ import annotations

import boto3
import pytest

from damnet import storage
from damnet.errors import StorageError


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/prefix"


def test_round_trip_list_exists_delete(base, tmp_path):
    store = storage.storage_for(base)
    a, b = storage.join(base, "x", "a.bin"), storage.join(base, "x", "sub", "b.txt")
    assert not store.exists(a)
    store.put_bytes(a, b"\x00\x01payload")
    store.put_text(b, "héllo")
    assert store.exists(a)
    assert store.get_bytes(a) == b"\x00\x01payload"
    assert store.get_text(b) == "héllo"
    assert store.list(storage.join(base, "x")) == sorted([a, b])

    src = tmp_path / "local.dat"
    src.write_bytes(b"z" * 100_000)
    c = storage.join(base, "c.dat")
    store.put_file(src, c)
    store.get_file(c, tmp_path / "back" / "c.dat")
    assert (tmp_path / "back" / "c.dat").read_bytes() == src.read_bytes()

    store.delete(a)
    assert not store.exists(a)
    assert store.list(storage.join(base, "x")) == [b]


def test_failed_write_keeps_old_object_and_leaves_nothing(base):
    store = storage.storage_for(base)
    uri = storage.join(base, "model.pt")
    store.put_bytes(uri, b"good old model")
    with pytest.raises(RuntimeError, match="crash"), store.writing(uri) as tmp:
        tmp.write_bytes(b"half a new mod")
        raise RuntimeError("crash while writing")
    assert store.get_bytes(uri) == b"good old model"
    # No temporary object anywhere: not under the prefix, not in the bucket's temp area.
    assert store.list(base) == [uri]
    if storage.is_s3(base):
        bucket, _ = storage.split_s3(base)
        client = store.client
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert keys == ["prefix/model.pt"]
    else:
        assert [p.name for p in storage.local_path(base).iterdir()] == ["model.pt"]


def test_s3_upload_failure_leaves_no_partial_object(s3_bucket, monkeypatch):
    store = storage.S3Storage()
    uri = f"s3://{s3_bucket}/tiles/a.tif"
    store.put_bytes(uri, b"v1")

    def broken_copy(*args, **kwargs):
        raise ConnectionError("network dropped during the move")

    monkeypatch.setattr(store.client, "copy", broken_copy)
    with pytest.raises(StorageError, match="upload failed"):
        store.put_bytes(uri, b"v2 that never lands")
    client = boto3.client("s3", endpoint_url=store.client.meta.endpoint_url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == ["tiles/a.tif"]
    assert client.get_object(Bucket=s3_bucket, Key="tiles/a.tif")["Body"].read() == b"v1"


def test_endpoint_url_is_used(s3_bucket, s3_endpoint):
    store = storage.storage_for(f"s3://{s3_bucket}/k")
    assert store.client.meta.endpoint_url == s3_endpoint


def test_local_tree_downloads_a_prefix(s3_bucket):
    store = storage.S3Storage()
    for key in ("region/A/1.png", "region/B/1.png", "other/x"):
        store.put_bytes(f"s3://{s3_bucket}/{key}", key.encode())
    with storage.local_tree(f"s3://{s3_bucket}/region") as root:
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        assert files == ["A/1.png", "B/1.png"]
        assert (root / "A" / "1.png").read_bytes() == b"region/A/1.png"


def test_errors_name_the_uri(tmp_path, s3_bucket):
    with pytest.raises(StorageError, match="no such file"):
        storage.LocalStorage().get_bytes(str(tmp_path / "missing"))
    with pytest.raises(StorageError, match=f"s3://{s3_bucket}/missing"):
        storage.S3Storage().get_bytes(f"s3://{s3_bucket}/missing")
    with pytest.raises(StorageError, match="no objects"), \
            storage.local_tree(f"s3://{s3_bucket}/nothing-here"):
        pass
    with pytest.raises(StorageError, match="not an s3://bucket/key"):
        storage.split_s3("s3:///key")


def test_file_uri_and_plain_path_are_the_same(tmp_path):
    store = storage.LocalStorage()
    store.put_text(f"file://{tmp_path}/a/b.txt", "x")
    assert store.get_text(str(tmp_path / "a" / "b.txt")) == "x"


def test_tree_digest_of_an_s3_prefix_comes_from_the_listing_and_follows_the_content(s3_bucket, monkeypatch):
    from components.records import tree_digest

    prefix = f"s3://{s3_bucket}/imagery/newtown"
    s3 = storage.storage_for(prefix)
    s3.put_bytes(f"{prefix}/pre/a.tif", b"first")
    s3.put_bytes(f"{prefix}/post/a.tif", b"second")

    def no_download(*args, **kwargs):
        raise AssertionError("tree_digest downloaded an object")

    monkeypatch.setattr(s3.client, "download_file", no_download)
    monkeypatch.setattr(s3.client, "get_object", no_download)
    monkeypatch.setattr(storage.S3Storage, "reading", no_download)
    first = tree_digest(prefix)
    assert tree_digest(prefix + "/") == first
    s3.put_bytes(f"{prefix}/post/a.tif", b"SECOND")  # same size, other content
    changed = tree_digest(prefix)
    assert changed != first
    s3.put_bytes(f"{prefix}/post/b.tif", b"x")  # one more file
    assert tree_digest(prefix) not in (first, changed)


def test_create_exclusive_creates_once_and_keeps_the_first_content(base):
    """The primitive of the step locks: of two creators of one name, exactly one wins."""
    s = storage.storage_for(base)
    uri = storage.join(base, "steps", "adapt.lock")
    assert s.create_exclusive(uri, b"first") is True
    assert s.create_exclusive(uri, b"second") is False
    assert s.get_bytes(uri) == b"first"
    assert s.list(storage.join(base, "steps")) == [uri]  # no temporary object left beside it
    s.delete(uri)
    assert s.create_exclusive(uri, b"third") is True and s.get_text(uri) == "third"


def test_create_exclusive_has_one_winner_among_concurrent_callers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    s = storage.storage_for(str(tmp_path))
    uri = str(tmp_path / "x.lock")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: s.create_exclusive(uri, str(i).encode()), range(32)))
    assert won.count(True) == 1
    assert s.get_text(uri) == str(won.index(True))
