"""Upload through the exchange vs the raw write of the same bytes, local store and S3 (moto).

    python bench/upload.py                      # 64 MiB and 256 MiB (about a minute on 2 cores)
    python bench/upload.py --sizes 1G           # the issue's 1 GiB figure
    python bench/upload.py --sizes 1G,4G        # adds 4 GiB (opt-in: several minutes, ~9 GiB disk)
    python bench/upload.py --backends local     # one backend only

Full upload path, timed: register the signed manifest, PUT the file (streamed by the exchange
client, constant memory), seal. Raw: the same file copied with fsync (local; the exchange also
fsyncs), or `put_object` with the minio SDK straight to the same moto server (S3). Prints
MiB/s of each, the ratio exchange/raw (goal >= 0.8), and the server's peak RSS (goal < 150 MiB
and independent of file size). Each backend and size gets a fresh server process. For the
diagnosis, "bare HTTP" is the same client PUT to a FastAPI endpoint that only hashes the body
(no storage, no database): what uvicorn + httpx alone cost here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from common import (
    TRANSFER_COLUMNS,
    MiB,
    bare_http_argv,
    core_count,
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

PART_SIZE = 16 * MiB  # the minio SDK's multipart part size for the raw baseline


def exchange_upload(
    work: Path, source: Path, sha256: str, s3: S3Server | None
) -> tuple[float, float]:
    """Seconds for register + PUT + seal on a fresh server, and its peak RSS (MiB)."""
    with exchange_server(work, s3=s3) as server:
        client = server.client()
        case_id = new_case(client)
        manifest, jws = signed_single_file_package(source, name="disk/image.dd", sha256=sha256)
        size = source.stat().st_size
        start = time.perf_counter()
        client.register_package(case_id, manifest=manifest, jws=jws)
        client.put_stream(
            file_url(case_id, manifest["package_id"], "disk/image.dd"),
            lambda: source.open("rb"),
            size,
        )
        client.seal_package(case_id, manifest["package_id"])
        seconds = time.perf_counter() - start
        return seconds, server.peak_rss_mib()


def bare_http(work: Path, source: Path) -> float:
    """Seconds to PUT the file with the same client to a bare FastAPI endpoint that hashes it."""
    with exchange_server(work, argv=bare_http_argv()) as bare, httpx.Client(timeout=600) as http:
        size = source.stat().st_size

        def chunks() -> Iterator[bytes]:
            with source.open("rb") as f:
                while chunk := f.read(MiB):
                    yield chunk

        start = time.perf_counter()
        response = http.put(
            f"{bare.url}/sink", content=chunks(), headers={"Content-Length": str(size)}
        )
        response.raise_for_status()
        return time.perf_counter() - start


def raw_local(work: Path, source: Path) -> float:
    """Seconds to copy the file and fsync it (what the local store does at minimum)."""
    target = work / "raw-copy"
    start = time.perf_counter()
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, MiB)
        dst.flush()
        os.fsync(dst.fileno())
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def raw_s3(s3: S3Server, source: Path) -> float:
    """Seconds for minio `put_object` of the file to the same moto server."""
    client = Minio(s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
    bucket = "raw-baseline"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    size = source.stat().st_size
    start = time.perf_counter()
    with source.open("rb") as f:
        client.put_object(bucket, "raw-object", f, size, part_size=PART_SIZE)
    seconds = time.perf_counter() - start
    client.remove_object(bucket, "raw-object")
    return seconds


def main() -> int:
    """Run every backend and size; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64M,256M", help="comma-separated sizes (64M, 1G, ...)")
    parser.add_argument("--backends", default="local,s3", help="local, s3 or both")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    print(f"upload: exchange (register + PUT + seal) vs raw write; {core_count()}")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        work = Path(tmp)
        for size in sizes:
            source = random_file(work / f"source-{size}", size)
            sha256 = sha256_file(source)
            http_only = bare_http(work, source)
            for backend in backends:
                if backend == "s3":
                    # A fresh moto per run: it keeps every object in memory.
                    with S3Server(log_dir=work) as s3:
                        raw = raw_s3(s3, source)
                        ours, rss = exchange_upload(work, source, sha256, s3)
                else:
                    raw = raw_local(work, source)
                    ours, rss = exchange_upload(work, source, sha256, None)
                rows.append(transfer_row(backend, size, ours, raw, http_only, rss))
                print(f"  .. {backend} {human(size)} done", flush=True)
            source.unlink()
    print_table(TRANSFER_COLUMNS, rows)
    print("  goals: ratio >= 0.8; peak RSS < 150 MiB and flat across sizes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
