"""Crash mid-upload: SIGKILL the server while a file streams in, restart it on the same data dir.

The package must not be sealed, no partial object may be published, the ledger must hold no
entry for the lost upload, and a plain retry of the PUT followed by a seal must complete it.
"""

from __future__ import annotations

import hashlib
import io
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from exchange.client import ClientError, file_url
from tests.exchange_server import running_exchange
from tests.reliability.harness import (
    dev_client,
    ledger_actions,
    ledger_verify,
    one_file_package,
    open_case,
    random_bytes,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
SIZE = 24 * MiB
NAME = "disk/image.dd"
WAIT_SECONDS = 60.0


def _staged_bytes(blob_root: Path) -> int:
    """Bytes the local store has taken into `staging/` so far (its unpublished temp files)."""
    return sum(p.stat().st_size for p in (blob_root / "staging").glob("*.part"))


def _wait_for(condition: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {condition}")
        time.sleep(0.05)


def test_sigkill_mid_upload_leaves_nothing_sealed_and_retry_completes(tmp_path: Path) -> None:
    data = random_bytes(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    manifest, jws = one_file_package(NAME, data)
    package_id = str(manifest["package_id"])
    data_dir = tmp_path / "node"
    db_url = f"sqlite:///{data_dir / 'exchange.db'}"
    blob_root = data_dir / "blobs"

    with running_exchange(data_dir) as server:
        client = dev_client(server.url)
        case_id = open_case(client)
        client.register_package(case_id, manifest=manifest, jws=jws)
        before = ledger_actions(db_url)
        release = threading.Event()

        def body() -> Iterator[bytes]:
            # Half the file, then hold the connection open until the server is dead.
            for offset in range(0, SIZE, MiB):
                if offset == SIZE // 2:
                    release.wait(WAIT_SECONDS)
                yield data[offset : offset + MiB]

        outcome: list[BaseException] = []

        def put() -> None:
            try:
                client.request(
                    "PUT",
                    file_url(case_id, package_id, NAME),
                    content=body(),
                    headers={"Content-Length": str(SIZE)},
                )
            except (httpx.TransportError, ClientError) as exc:
                outcome.append(exc)

        sender = threading.Thread(target=put, daemon=True)
        sender.start()
        # Kill only once the server is demonstrably writing the body into storage.
        _wait_for("the server to stage part of the body", lambda: _staged_bytes(blob_root) > 0)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
        release.set()
        sender.join(timeout=WAIT_SECONDS)
        client.close()
        assert not sender.is_alive()
        assert len(outcome) == 1, "the interrupted PUT must fail on the client side"
        assert server.process.returncode == -signal.SIGKILL

    # Nothing of the lost upload was published or recorded.
    assert ledger_actions(db_url) == before
    assert not (blob_root / "sha256" / digest[:2] / digest).exists()

    with running_exchange(data_dir) as server:
        client = dev_client(server.url)
        package = client.get_package(case_id, package_id)
        assert package.get("state", package.get("package", {}).get("state")) != "sealed"
        with pytest.raises(ClientError) as refused:
            client.seal_package(case_id, package_id)
        assert refused.value.status == 409
        assert ledger_actions(db_url) == before

        # The retry needs nothing but the same PUT, then the seal.
        client.put_stream(file_url(case_id, package_id, NAME), lambda: io.BytesIO(data), SIZE)
        sealed = client.seal_package(case_id, package_id)
        assert sealed["state"] == "sealed"

        after = ledger_actions(db_url)
        assert after[: len(before)] == before
        assert [(action, pid) for _, action, pid in after[len(before) :]] == [
            ("package.sealed", package_id)
        ]
        fetched = io.BytesIO()
        client.download_file(case_id, package_id, NAME, fetched)
        assert hashlib.sha256(fetched.getvalue()).hexdigest() == digest
        client.close()

    seqs = [seq for seq, _, _ in ledger_actions(db_url)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    verified = ledger_verify(db_url, data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
