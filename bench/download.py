"""Fetch through the exchange (hash-verified) vs a raw read/GET, local store and S3 (moto).

    python bench/download.py                    # 64 MiB and 256 MiB (about a minute on 2 cores)
    python bench/download.py --sizes 1G         # the issue's 1 GiB figure
    python bench/download.py --sizes 1G,4G      # adds 4 GiB (opt-in)

Exchange, timed: GET the file of a sealed package (the server re-hashes while streaming and
writes `bundle.fetched` first) into a file, the client hashing it against the manifest as
`exchange fetch` does. Raw: the stored blob read straight into a file (local; the blob's pages
are dropped from the page cache before each of the two reads, so both start cold), or a minio
`get_object` of the same bytes from the same moto server into a file (S3), neither hashed.
Prints MiB/s of each, the ratio exchange/raw (goal >= 0.8), and the server's peak RSS. For the
diagnosis, "bare HTTP" is the same client GET, hashing, from a FastAPI `StreamingResponse` of a
sync generator (no storage, no database): what uvicorn + httpx alone cost here.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import httpx
from common import (
    TRANSFER_COLUMNS,
    BenchServer,
    MiB,
    bare_http_argv,
    core_count,
    drop_cached,
    exchange_server,
    human,
    new_case,
    parse_size,
    print_table,
    random_file,
    sha256_file,
    signed_single_file_package,
    transfer_row,
)
from minio import Minio  # noqa: TID251 (the raw S3 baseline talks to the SDK on purpose)

from exchange.client import file_url
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

NAME = "disk/image.dd"


class HashingFile:
    """A write-only sink that hashes what it writes (the client's verification)."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        """Hash and write."""
        self.digest.update(data)
        return self.target.write(data)


def upload(server: BenchServer, source: Path, sha256: str) -> tuple[str, str]:
    """Upload and seal the file; returns (case id, package id)."""
    client = server.client()
    case_id = new_case(client)
    manifest, jws = signed_single_file_package(source, name=NAME, sha256=sha256)
    package_id = str(manifest["package_id"])
    client.register_package(case_id, manifest=manifest, jws=jws)
    client.put_stream(
        file_url(case_id, package_id, NAME), lambda: source.open("rb"), source.stat().st_size
    )
    client.seal_package(case_id, package_id)
    return case_id, package_id


def exchange_fetch(
    server: BenchServer, case_id: str, package_id: str, sha256: str, out: Path
) -> float:
    """Seconds to GET the file into `out` while hashing it; fails if the hash differs."""
    client = server.client()
    start = time.perf_counter()
    with out.open("wb") as f:
        sink = HashingFile(f)
        client.download_file(case_id, package_id, NAME, sink)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    if sink.digest.hexdigest() != sha256:
        raise SystemExit("the exchange served bytes that do not match the manifest")
    out.unlink()
    return seconds


def bare_http(work: Path, size: int, out: Path) -> float:
    """Seconds to GET `size` bytes from a bare FastAPI `StreamingResponse` into `out`, hashing."""
    with exchange_server(work, argv=bare_http_argv()) as bare, httpx.Client(timeout=600) as http:
        start = time.perf_counter()
        with out.open("wb") as f, http.stream("GET", f"{bare.url}/source/{size}") as response:
            sink = HashingFile(f)
            for chunk in response.iter_bytes(MiB):
                sink.write(chunk)
        seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def stored_blob(server: BenchServer, sha256: str) -> Path:
    """The local store's file of the blob."""
    return next(p for p in (server.data_dir / "blobs").rglob("*") if sha256 in p.name)


def raw_local(server: BenchServer, sha256: str, out: Path) -> float:
    """Seconds to copy the stored blob into `out` (plain read + write), from a cold cache."""
    blob = stored_blob(server, sha256)
    drop_cached(blob)
    start = time.perf_counter()
    with blob.open("rb") as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst, MiB)
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def raw_s3(s3: S3Server, source: Path, out: Path) -> float:
    """Seconds for a minio `get_object` of the same bytes from the same moto server into `out`."""
    client = Minio(s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
    bucket = "raw-baseline"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    with source.open("rb") as f:
        client.put_object(bucket, "raw-object", f, source.stat().st_size, part_size=16 * MiB)
    start = time.perf_counter()
    response = client.get_object(bucket, "raw-object")
    try:
        with out.open("wb") as dst:
            for chunk in response.stream(MiB):
                dst.write(chunk)
    finally:
        response.close()
        response.release_conn()
    seconds = time.perf_counter() - start
    client.remove_object(bucket, "raw-object")
    out.unlink()
    return seconds


def run(work: Path, source: Path, sha256: str, s3: S3Server | None) -> tuple[float, float, float]:
    """(exchange seconds, raw seconds, server peak RSS MiB) for one backend."""
    out = work / "fetched"
    with exchange_server(work, s3=s3) as server:
        case_id, package_id = upload(server, source, sha256)
        if s3 is None:
            drop_cached(stored_blob(server, sha256))  # both reads start cold: see drop_cached
        ours = exchange_fetch(server, case_id, package_id, sha256, out)
        rss = server.peak_rss_mib()
        raw = raw_s3(s3, source, out) if s3 is not None else raw_local(server, sha256, out)
    return ours, raw, rss


def main() -> int:
    """Run every backend and size; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64M,256M", help="comma-separated sizes (64M, 1G, ...)")
    parser.add_argument("--backends", default="local,s3", help="local, s3 or both")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    print(f"download: exchange fetch (hash-verified) vs raw read/GET; {core_count()}")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        for size in sizes:
            source = random_file(work / f"source-{size}", size)
            sha256 = sha256_file(source)
            http_only = bare_http(work, size, work / "fetched")
            for backend in backends:
                if backend == "s3":
                    with S3Server(log_dir=work) as s3:
                        ours, raw, rss = run(work, source, sha256, s3)
                else:
                    ours, raw, rss = run(work, source, sha256, None)
                rows.append(transfer_row(backend, size, ours, raw, http_only, rss))
                print(f"  .. {backend} {human(size)} done", flush=True)
            source.unlink()
    print_table(TRANSFER_COLUMNS, rows)
    print("  goal: ratio >= 0.8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
