"""The BlobStore contract, run against both real stores: a local directory and moto's S3 server."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from exchange.errors import (
    BlobNotFoundError,
    InvalidInputError,
    UnavailableError,
    VerificationError,
)
from exchange.storage import BlobInfo, BlobStore
from exchange.storage.blobstore import CHUNK_SIZE
from exchange.storage.local import LocalBlobStore
from exchange.storage.s3 import S3BlobStore
from tests.s3server import ACCESS_KEY, SECRET_KEY, TEST_PART_SIZE

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


class Source:
    """A readable body that hands out at most `max_chunk` bytes per read and counts them."""

    def __init__(self, data: bytes, max_chunk: int = 256 * 1024) -> None:
        self._data = data
        self._max_chunk = max_chunk
        self.handed_out = 0

    def read(self, n: int, /) -> bytes:
        n = min(n, self._max_chunk)
        chunk = self._data[self.handed_out : self.handed_out + n]
        self.handed_out += len(chunk)
        return chunk


class PatternSource:
    """`size` pseudo-random bytes generated on the fly, never held whole in memory."""

    BLOCK = 64 * 1024

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self._seed = seed
        self._offset = 0
        self._block = b""

    def read(self, n: int, /) -> bytes:
        if self._offset >= self.size:
            return b""
        index, within = divmod(self._offset, self.BLOCK)
        if within == 0 or not self._block:
            self._block = random.Random(self._seed * 1_000_003 + index).randbytes(self.BLOCK)
        chunk = self._block[within : within + min(n, self.BLOCK - within, self.size - self._offset)]
        self._offset += len(chunk)
        return chunk

    def sha256(self) -> str:
        """Digest of the whole pattern (computed from a fresh copy of the source)."""
        copy, digest = PatternSource(self.size, self._seed), hashlib.sha256()
        while chunk := copy.read(CHUNK_SIZE):
            digest.update(chunk)
        return digest.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def leftovers(store: BlobStore) -> list[str]:
    """Temp files, objects outside ``sha256/`` and unfinished multipart uploads left behind by a
    store: must always be empty after a put, whether it succeeded or failed."""
    if isinstance(store, LocalBlobStore):
        return sorted(str(p.relative_to(store.root)) for p in store.staging_dir.rglob("*"))
    assert isinstance(store, S3BlobStore)
    others = [name for name in store.stored_names() if not name.startswith("sha256/")]
    return sorted(others) + [f"upload of {key}" for key in pending_multipart_uploads(store)]


def pending_multipart_uploads(store: S3BlobStore) -> list[str]:
    """Keys of multipart uploads started and neither completed nor aborted (plain S3 API)."""
    import boto3  # type: ignore[import-untyped]  # moto's dependency; the exchange never needs it

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{store._endpoint}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    found = client.list_multipart_uploads(Bucket=store.bucket)
    return sorted(upload["Key"] for upload in found.get("Uploads", []))


def stored_keys(store: BlobStore) -> list[str]:
    """Every stored blob (every version, for S3)."""
    if isinstance(store, LocalBlobStore):
        return sorted(f"sha256/{p.name}" for p in (store.root / "sha256").rglob("*") if p.is_file())
    assert isinstance(store, S3BlobStore)
    return sorted(store.stored_names("sha256/"))


def read_all(store: BlobStore, key: str) -> bytes:
    with store.open(key) as reader:
        return b"".join(reader)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each real BlobStore, empty."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    s3: S3BlobStore = request.getfixturevalue("s3_store")
    return s3


def test_round_trip(store: BlobStore):
    data = body(3 * MIB + 17)
    info = store.put(Source(data), sha256=sha(data), size=len(data))
    assert info == BlobInfo(key=f"sha256/{sha(data)}", sha256=sha(data), size=len(data))
    assert info.key == store.key_for(sha(data))
    assert store.exists(info.key)
    assert store.stat(info.key) == len(data)
    assert read_all(store, info.key) == data
    assert stored_keys(store) == [info.key]
    assert leftovers(store) == []


def test_empty_blob_round_trip(store: BlobStore):
    info = store.put(Source(b""), sha256=sha(b""), size=0)
    assert store.stat(info.key) == 0
    assert read_all(store, info.key) == b""


def test_reput_is_idempotent_and_still_consumes_the_body(store: BlobStore):
    data = body(100_000)
    first = store.put(Source(data), sha256=sha(data), size=len(data))
    again = Source(data)
    assert store.put(again, sha256=sha(data), size=len(data)) == first
    assert again.handed_out == len(data)
    assert read_all(store, first.key) == data
    assert stored_keys(store) == [first.key]  # no second S3 version either
    assert leftovers(store) == []


def test_body_longer_than_declared_is_refused_without_reading_on(store: BlobStore):
    data = body(2 * MIB)
    declared = data[: MIB + 5]
    source = Source(data)
    with pytest.raises(VerificationError) as caught:
        store.put(source, sha256=sha(declared), size=len(declared))
    assert caught.value.reason == "size_mismatch"
    assert caught.value.message == f"body is longer than the declared {len(declared)} bytes"
    assert source.handed_out == len(declared) + 1
    assert not store.exists(store.key_for(sha(declared)))
    assert stored_keys(store) == []
    assert leftovers(store) == []


@pytest.mark.parametrize("size", [1000, 6 * MIB + 3], ids=["small", "multipart"])
def test_body_shorter_than_declared_is_refused(store: BlobStore, size: int):
    data = body(size)
    short = data[:-10]
    with pytest.raises(VerificationError) as caught:
        store.put(Source(short), sha256=sha(data), size=len(data))
    assert caught.value.reason == "size_mismatch"
    assert caught.value.message == (
        f"body is shorter than the declared {len(data)} bytes (ended after {len(short)})"
    )
    assert not store.exists(store.key_for(sha(data)))
    assert stored_keys(store) == []
    assert leftovers(store) == []


def test_body_with_wrong_hash_is_refused(store: BlobStore):
    good, bad = body(50_000, seed=1), body(50_000, seed=2)
    with pytest.raises(VerificationError) as caught:
        store.put(Source(bad), sha256=sha(good), size=len(good))
    assert caught.value.reason == "hash_mismatch"
    assert caught.value.message == (
        f"body SHA-256 {sha(bad)} does not match the declared {sha(good)}"
    )
    assert caught.value.path is None
    assert not store.exists(store.key_for(sha(good)))
    assert stored_keys(store) == []
    assert leftovers(store) == []


@pytest.mark.parametrize("lie", ["hash", "short", "long"])
def test_bad_upload_never_touches_the_stored_good_object(store: BlobStore, lie: str):
    good = body(300_000, seed=3)
    info = store.put(Source(good), sha256=sha(good), size=len(good))
    bad = {
        "hash": body(len(good), seed=4),
        "short": good[:-1],
        "long": good + b"!",
    }[lie]
    with pytest.raises(VerificationError) as caught:
        store.put(Source(bad), sha256=sha(good), size=len(good))
    assert caught.value.reason == ("hash_mismatch" if lie == "hash" else "size_mismatch")
    assert read_all(store, info.key) == good
    assert stored_keys(store) == [info.key]
    assert leftovers(store) == []


def test_missing_blob(store: BlobStore):
    key = store.key_for(sha(b"never stored"))
    assert not store.exists(key)
    with pytest.raises(BlobNotFoundError, match=f"no blob stored under {key}"):
        store.open(key)
    with pytest.raises(BlobNotFoundError):
        store.stat(key)
    with pytest.raises(BlobNotFoundError):
        store.delete(key)


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "sha256/../x", "sha256/" + "A" * 64, "sha256/abc", "x/" + "a" * 64]
)
def test_malformed_keys_are_refused(store: BlobStore, key: str):
    for call in (store.open, store.exists, store.stat, store.delete):
        with pytest.raises(InvalidInputError, match="not a blob key"):
            call(key)


@pytest.mark.parametrize("digest", ["A" * 64, "a" * 63, "g" * 64, ""])
def test_malformed_digests_are_refused(store: BlobStore, digest: str):
    with pytest.raises(InvalidInputError, match="not a lowercase hex SHA-256 digest"):
        store.key_for(digest)
    with pytest.raises(InvalidInputError):
        store.put(Source(b"x"), sha256=digest, size=1)
    assert leftovers(store) == []


def test_negative_size_is_refused(store: BlobStore):
    with pytest.raises(InvalidInputError, match="size must not be negative"):
        store.put(Source(b""), sha256=sha(b""), size=-1)


def test_reader_reads_in_chunks_and_iterates(store: BlobStore):
    data = body(2 * MIB + 123, seed=5)
    info = store.put(Source(data), sha256=sha(data), size=len(data))
    with store.open(info.key) as reader:
        assert reader.read(10) == data[:10]
        rest = list(reader)
    assert all(0 < len(chunk) <= CHUNK_SIZE for chunk in rest)
    assert b"".join(rest) == data[10:]
    reader = store.open(info.key)
    assert reader.read(len(data) + 100) == data
    assert reader.read(10) == b""
    reader.close()


def test_delete_removes_the_blob(store: BlobStore):
    data = body(1000)
    info = store.put(Source(data), sha256=sha(data), size=len(data))
    store.delete(info.key)
    assert not store.exists(info.key)
    assert stored_keys(store) == []
    store.put(Source(data), sha256=sha(data), size=len(data))  # and it can come back
    assert read_all(store, info.key) == data


def test_check_passes_on_a_working_store(store: BlobStore):
    store.check()


def peak_rss_growth(action: Callable[[], Any]) -> tuple[Any, int]:
    """Run `action` while sampling this process's RSS; return its result and the peak growth."""
    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, max(peak, process.memory_info().rss) - baseline


def test_large_body_streams_in_bounded_memory(store: BlobStore):
    size = 48 * MIB + 7
    source = PatternSource(size, seed=9)
    digest = source.sha256()
    info, growth = peak_rss_growth(lambda: store.put(source, sha256=digest, size=size))
    # Loose bounds, far below the 48 MiB body: the local store holds about one source chunk,
    # the S3 store one part (5 MiB here) plus the SDK's copies of it for signing and sending.
    # Measured: local 2.7 MiB, S3 14.7 MiB.
    bound = 8 * MIB if isinstance(store, LocalBlobStore) else 4 * TEST_PART_SIZE + 4 * MIB
    assert growth < bound, f"RSS grew by {growth / MIB:.1f} MiB while storing 48 MiB"
    assert store.stat(info.key) == size
    check = hashlib.sha256()
    with store.open(info.key) as reader:
        for chunk in reader:
            check.update(chunk)
    assert check.hexdigest() == digest
    assert leftovers(store) == []


# -- the local store's own guarantees -----------------------------------------------------------


def test_local_blob_is_read_only_and_sharded(tmp_path: Path):
    store = LocalBlobStore(tmp_path / "blobs")
    data = body(10)
    info = store.put(Source(data), sha256=sha(data), size=len(data))
    path = tmp_path / "blobs" / "sha256" / sha(data)[:2] / sha(data)
    assert store.path_for(info.key) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert path.read_bytes() == data


def test_local_check_reports_a_missing_volume(tmp_path: Path):
    store = LocalBlobStore(tmp_path / "blobs")
    shutil.rmtree(tmp_path / "blobs")
    with pytest.raises(UnavailableError, match="is missing"):
        store.check()


DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path
    from exchange.storage.local import LocalBlobStore
    root = Path(sys.argv[1]) / "blobs"
    store = LocalBlobStore(root)
    data = os.urandom(3 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()

    class Source:
        def __init__(self): self.at = 0
        def read(self, n):
            chunk = data[self.at:self.at + n]; self.at += len(chunk); return chunk

    try:
        store.put(Source(), sha256=digest, size=len(data))
        outcome = {"error": None}
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc),
                   "retry_after": getattr(exc, "retry_after", None)}
    outcome["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    outcome["exists"] = store.exists(store.key_for(digest))
    print(json.dumps(outcome))
    """
)


def test_local_disk_full_is_unavailable_and_leaves_nothing(tmp_path: Path):
    """A real full file system: a 1 MiB tmpfs mounted in a private mount namespace (needs root)."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("needs root and unshare(1) to mount a tiny tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(DISK_FULL_SCRIPT)
    shell = 'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" "$3" "$1"'
    result = subprocess.run(
        [unshare, "-m", "sh", "-c", shell, "sh", str(mount), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    if result.returncode != 0 and "mount" in result.stderr:
        pytest.skip(f"cannot mount tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["error"] == "StorageUnavailableError"
    assert outcome["message"].startswith("no space left to store sha256/")
    assert outcome["retry_after"] == 60
    assert outcome["files"] == []
    assert outcome["exists"] is False


def test_a_source_returning_short_reads_is_fine(store: BlobStore):
    """Sockets hand out whatever arrived: tiny reads must still assemble the whole body."""
    data = body(300_001, seed=11)
    info = store.put(Source(data, max_chunk=977), sha256=sha(data), size=len(data))
    assert read_all(store, info.key) == data
