"""Several exchange worker processes on one database and one blob folder, 8 clients at once.

uvicorn runs 4 worker processes of the app; 8 client threads upload, seal and fetch packages
for a bounded time. Afterwards: every request behaved, the ledger verifies with no gap in seq,
every sealed package has exactly one `package.sealed` entry and its files hash correctly in
the store, and every fetch a client completed has its own `bundle.fetched` entry.
"""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest

from exchange.client import file_url
from tests.exchange_server import clean_env, free_port, running_exchange
from tests.reliability.harness import (
    dev_client,
    ledger_actions,
    ledger_verify,
    one_file_package,
    open_case,
    random_bytes,
)

pytestmark = pytest.mark.slow

WORKERS = 4
CLIENTS = 8
LOAD_SECONDS = 15.0
STARTUP_SECONDS = 90.0
NAME = "phone/dump.bin"


@dataclass
class Record:
    """What the clients did, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sealed: dict[str, str] = field(default_factory=dict)  # package id -> sha256 of its file
    fetches: Counter[str] = field(default_factory=Counter)  # package id -> completed fetches
    failures: list[str] = field(default_factory=list)


@contextmanager
def uvicorn_workers(data_dir: Path, **settings: str) -> Iterator[str]:
    """The app under `uvicorn --workers 4` on a free port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(EXCHANGE_DATA_DIR=str(data_dir), EXCHANGE_PUBLIC_URL=url, **settings)
    log = data_dir.parent / f"workers-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "exchange.api.app:create_app", "--factory"),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir.parent,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client_loop(url: str, case_id: str, seed: int, deadline: float, record: Record) -> None:
    """Upload and seal a package, fetch one sealed so far (maybe another client's); repeat."""
    rng = random.Random(seed)
    with dev_client(url, timeout=60) as client:
        while time.monotonic() < deadline:
            try:
                data = random_bytes(rng.choice((16, 64, 256)) * 1024)
                manifest, jws = one_file_package(NAME, data)
                package_id = str(manifest["package_id"])
                client.register_package(case_id, manifest=manifest, jws=jws)
                client.put_stream(
                    file_url(case_id, package_id, NAME), partial(io.BytesIO, data), len(data)
                )
                client.seal_package(case_id, package_id)
                with record.lock:
                    record.sealed[package_id] = hashlib.sha256(data).hexdigest()
                    target = rng.choice(sorted(record.sealed))
                    expected = record.sealed[target]
                sink = io.BytesIO()
                client.download_file(case_id, target, NAME, sink)
                assert hashlib.sha256(sink.getvalue()).hexdigest() == expected
                with record.lock:
                    record.fetches[target] += 1
            except Exception as exc:  # every failure is reported by the test
                with record.lock:
                    record.failures.append(f"client {seed}: {type(exc).__name__}: {exc}")
                return


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_workers_under_concurrent_uploads_and_fetches_keep_custody_whole(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    data_dir = tmp_path / "node"
    if database == "postgresql":
        db_url: str = request.getfixturevalue("fresh_pg_url")
    else:
        db_url = f"sqlite:///{data_dir / 'exchange.db'}"
    settings = {"EXCHANGE_DATABASE_URL": db_url}
    # One process migrates and registers the dev agencies; the workers then start on it.
    with running_exchange(data_dir, **settings):
        pass
    record = Record()
    with uvicorn_workers(data_dir, **settings) as url:
        with dev_client(url) as owner:
            case_id = open_case(owner)
        deadline = time.monotonic() + LOAD_SECONDS
        threads = [
            threading.Thread(target=client_loop, args=(url, case_id, n, deadline, record))
            for n in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=LOAD_SECONDS + 120)
        assert not any(t.is_alive() for t in threads)
    assert record.failures == []
    assert len(record.sealed) >= CLIENTS

    entries = ledger_actions(db_url)
    seqs = [seq for seq, _, _ in entries]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    sealed = Counter(pid for _, action, pid in entries if action == "package.sealed")
    assert sealed == Counter(list(record.sealed))
    fetched = Counter(pid for _, action, pid in entries if action == "bundle.fetched")
    assert fetched == record.fetches
    blobs = data_dir / "blobs" / "sha256"
    for digest in record.sealed.values():
        assert hashlib.sha256((blobs / digest[:2] / digest).read_bytes()).hexdigest() == digest
    verified = ledger_verify(db_url, data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
