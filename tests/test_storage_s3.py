"""S3-only behaviour on moto's real S3 server: object lock and retention, buckets, outages."""

from __future__ import annotations

import hashlib
import logging
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchange.errors import (
    BlobNotFoundError,
    StorageError,
    StorageUnavailableError,
    UnavailableError,
    VerificationError,
)
from exchange.storage.s3 import S3BlobStore
from tests.s3server import TEST_PART_SIZE, S3Server
from tests.test_storage_blobstore import Source, leftovers

MIB = 1024 * 1024
RETENTION_DAYS = 3


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def clock_now() -> datetime:
    """Wall-clock now (retention dates must lie in the real future), to the millisecond."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@pytest.fixture
def locked_store(s3_server: S3Server, clock_now: datetime) -> S3BlobStore:
    """A store on a fresh Object Lock bucket with a fixed clock."""
    return s3_server.store(object_lock=True, retention_days=RETENTION_DAYS, clock=lambda: clock_now)


def put(store: S3BlobStore, data: bytes) -> str:
    return store.put(Source(data), sha256=sha(data), size=len(data)).key


def read_all(store: S3BlobStore, key: str) -> bytes:
    with store.open(key) as reader:
        return b"".join(reader)


def test_locked_upload_carries_a_compliance_retention(
    locked_store: S3BlobStore, clock_now: datetime, caplog: pytest.LogCaptureFixture
):
    data = body(2000)
    with caplog.at_level(logging.INFO, logger="exchange.storage.s3"):
        key = put(locked_store, data)
    assert "applying retention" not in caplog.text  # locked by the PUT itself
    retention = locked_store.retention_of(key)
    assert retention is not None
    assert retention.mode == "COMPLIANCE"
    assert retention.retain_until == clock_now + timedelta(days=RETENTION_DAYS)
    assert read_all(locked_store, key) == data
    # moto refused the first plain locked PUT and the store learned to add the checksum
    # headers; the next upload sends them at once.
    second = put(locked_store, body(10, seed=2))
    assert locked_store.retention_of(second) == retention
    assert sorted(locked_store.stored_names()) == sorted([key, second])  # one version each
    assert leftovers(locked_store) == []


def test_locked_blob_cannot_be_deleted(locked_store: S3BlobStore):
    data = body(3000)
    key = put(locked_store, data)
    with pytest.raises(StorageError, match=f"refused to delete {key} version "):
        locked_store.delete(key)
    assert read_all(locked_store, key) == data


def test_bad_upload_to_a_locked_bucket_leaves_no_version_behind(locked_store: S3BlobStore):
    good, bad = body(6 * MIB, seed=1), body(6 * MIB, seed=2)  # multipart upload
    source = Source(bad)
    with pytest.raises(VerificationError) as caught:
        locked_store.put(source, sha256=sha(good), size=len(good))
    assert caught.value.reason == "hash_mismatch"
    assert source.handed_out == len(bad)  # the whole body was read and hashed first
    # Versions and delete markers included: the upload was never completed, and was aborted.
    assert locked_store.stored_names() == []
    assert leftovers(locked_store) == []


@pytest.mark.parametrize("size", [1000, 6 * MIB + 1], ids=["single-put", "multipart"])
def test_short_body_to_a_locked_bucket_leaves_not_even_a_delete_marker(
    locked_store: S3BlobStore, size: int
):
    data = body(size)
    with pytest.raises(VerificationError) as caught:
        locked_store.put(Source(data[:-1]), sha256=sha(data), size=size)
    assert caught.value.reason == "size_mismatch"
    assert locked_store.stored_names() == []
    assert leftovers(locked_store) == []


@pytest.mark.parametrize("size", [1000, 6 * MIB + 1], ids=["single-put", "multipart"])
def test_longer_body_to_a_locked_bucket_is_refused_before_it_completes(
    locked_store: S3BlobStore, size: int
):
    data = body(size)
    with pytest.raises(VerificationError) as caught:
        locked_store.put(Source(data + b"!"), sha256=sha(data), size=size)
    assert caught.value.reason == "size_mismatch"
    assert locked_store.stored_names() == []
    assert leftovers(locked_store) == []


def test_multipart_blob_is_locked_even_where_the_server_drops_lock_headers(
    locked_store: S3BlobStore, clock_now: datetime, caplog: pytest.LogCaptureFixture
):
    """A multipart upload carries the lock headers; moto drops them on multipart uploads, so
    this exercises the PutObjectRetention step that makes sure of it."""
    data = body(2 * TEST_PART_SIZE + 1234, seed=7)
    with caplog.at_level(logging.INFO, logger="exchange.storage.s3"):
        key = put(locked_store, data)
    assert f"applying retention to {key} after the upload" in caplog.text
    retention = locked_store.retention_of(key)
    assert retention is not None
    assert retention.mode == "COMPLIANCE"
    assert read_all(locked_store, key) == data
    assert locked_store.stored_names() == [key]  # written once: no staging object, no copy
    assert leftovers(locked_store) == []


def test_part_size_grows_only_where_10000_parts_would_not_hold_the_body(s3_server: S3Server):
    store = s3_server.store()
    assert store._part_size_for(0) == TEST_PART_SIZE
    assert store._part_size_for(10_000 * TEST_PART_SIZE) == TEST_PART_SIZE
    assert store._part_size_for(64 * 1024 * MIB) == 7 * MIB  # the 64 GiB file limit
    assert store._part_size_for(10_000 * TEST_PART_SIZE + 1) == 6 * MIB


def test_reput_heals_a_blob_stored_without_retention(s3_server: S3Server, clock_now: datetime):
    """A crash between copy and PutObjectRetention leaves an unlocked blob: a re-put locks it."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    locked = s3_server.store(
        bucket, object_lock=True, retention_days=RETENTION_DAYS, clock=lambda: clock_now
    )
    unlocked = s3_server.store(bucket, object_lock=False)
    data = body(500)
    key = put(unlocked, data)
    assert locked.retention_of(key) is None
    assert put(locked, data) == key
    retention = locked.retention_of(key)
    assert retention is not None
    assert retention.retain_until == clock_now + timedelta(days=RETENTION_DAYS)
    assert locked.stored_names(key) == [key]  # healed in place, no second version


def test_retention_can_be_extended(locked_store: S3BlobStore, clock_now: datetime):
    key = put(locked_store, body(100))
    later = clock_now + timedelta(days=RETENTION_DAYS + 30)
    locked_store.set_retention(key, later)
    retention = locked_store.retention_of(key)
    assert retention is not None
    assert retention.retain_until == later


@pytest.mark.xfail(
    reason="moto allows shortening COMPLIANCE retention; real MinIO refuses", strict=True
)
def test_compliance_retention_cannot_be_shortened(locked_store: S3BlobStore, clock_now):
    key = put(locked_store, body(100))
    with pytest.raises(StorageError):
        locked_store.set_retention(key, clock_now + timedelta(days=1))


def test_lock_store_refuses_a_bucket_without_object_lock(s3_server: S3Server):
    plain = s3_server.store()
    with pytest.raises(StorageError, match="exists without Object Lock"):
        s3_server.store(plain.bucket, object_lock=True)


def test_ensure_bucket_is_idempotent(s3_server: S3Server):
    store = s3_server.store(object_lock=True)
    store.ensure_bucket()
    store.check()


def test_check_creates_a_missing_bucket_with_object_lock(s3_server: S3Server, caplog):
    # Since issue 10 a missing bucket is made again by the next call (check() raised
    # StorageError, and every call failed until a restart ran ensure_bucket).
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    store = S3BlobStore(
        endpoint=s3_server.endpoint,
        access_key="testing",
        secret_key="testing",
        bucket=bucket,
        secure=False,
        object_lock=True,
    )
    with caplog.at_level(logging.ERROR, logger="exchange.storage.s3"):
        store.check()
    assert f"bucket {bucket!r} on {s3_server.endpoint} was missing" in caplog.text
    store.check()
    assert store.stored_names() == []
    s3_server.store(bucket, object_lock=True)  # its lock configuration is checked there


def test_constructor_refuses_a_part_size_s3_would_reject():
    with pytest.raises(ValueError, match="part_size"):
        S3BlobStore("127.0.0.1:9", "a", "b", "bucket", secure=False, part_size=MIB)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[S3Server]:
    """A moto server this test may stop and restart without disturbing the others."""
    with S3Server(log_dir=tmp_path) as server:
        yield server


def test_outage_raises_unavailable_then_the_same_store_recovers(own_server: S3Server):
    store = own_server.store(connect_timeout=1.0, read_timeout=5.0, retries=1)
    stored = body(1000, seed=1)
    key = put(store, stored)

    own_server.stop()
    fresh = body(1000, seed=2)
    source = Source(fresh)
    with pytest.raises(UnavailableError, match="unreachable"):
        store.put(source, sha256=sha(fresh), size=len(fresh))
    with pytest.raises(UnavailableError):
        store.open(key)
    with pytest.raises(UnavailableError):
        store.exists(key)
    with pytest.raises(UnavailableError):
        store.stat(key)
    with pytest.raises(UnavailableError):
        store.check()

    own_server.restart()  # moto keeps nothing across a restart: the bucket comes back empty
    store.ensure_bucket()
    store.check()
    with pytest.raises(BlobNotFoundError):
        store.open(key)
    again = put(store, fresh)
    assert read_all(store, again) == fresh
    assert leftovers(store) == []


def test_a_vanished_bucket_is_made_again_by_the_next_read_or_write(own_server: S3Server):
    store = own_server.store(object_lock=True, retention_days=RETENTION_DAYS)
    key = put(store, body(1000, seed=5))
    own_server.restart()  # the store comes back empty

    # A read finds the bucket again and no object: lost evidence is "not found", not an error.
    with pytest.raises(BlobNotFoundError):
        store.open(key)
    own_server.restart()
    small = body(1000, seed=6)
    assert read_all(store, put(store, small)) == small  # the PUT is repeated once
    retention = store.retention_of(store.key_for(sha(small)))
    assert retention is not None
    assert retention.mode == "COMPLIANCE"

    # A multipart body has been read in part when NoSuchBucket comes: 503 once, then it works.
    own_server.restart()
    large = body(2 * TEST_PART_SIZE + 1, seed=7)
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        store.put(Source(large), sha256=sha(large), size=len(large))
    assert read_all(store, put(store, large)) == large
    assert store.retention_of(store.key_for(sha(large))) is not None
    assert leftovers(store) == []


class StopsServerMidway(Source):
    """A body whose source kills the S3 server once `after` bytes were handed out."""

    def __init__(self, data: bytes, server: S3Server, after: int) -> None:
        super().__init__(data)
        self._server = server
        self._after = after

    def read(self, n: int, /) -> bytes:
        if self.handed_out >= self._after and self._server.running:
            self._server.stop()
        return super().read(n)


def test_outage_in_the_middle_of_an_upload_is_unavailable(own_server: S3Server):
    store = own_server.store(connect_timeout=1.0, read_timeout=5.0, retries=1)
    data = body(3 * TEST_PART_SIZE, seed=3)
    source = StopsServerMidway(data, own_server, after=TEST_PART_SIZE + MIB)
    with pytest.raises(UnavailableError, match="unreachable"):
        store.put(source, sha256=sha(data), size=len(data))
    assert not own_server.running
    assert source.handed_out < len(data)  # the upload stopped at the failing part


def test_outage_while_streaming_a_blob_out_is_unavailable(own_server: S3Server):
    store = own_server.store(connect_timeout=1.0, read_timeout=5.0, retries=1)
    data = body(32 * MIB, seed=4)
    key = put(store, data)
    with store.open(key) as reader:
        assert reader.read(MIB) == data[:MIB]
        own_server.stop()
        with pytest.raises(UnavailableError, match="connection lost"):
            b"".join(reader)
