"""A stored object gone corrupt, fetched through the real server (`exchange serve`) and the CLI.

Small objects are verified whole before any header: a 502 `stored_object_corrupt` problem and
no byte of the object. Larger ones stream and are broken off before their last chunk, without a
traceback in the server's log, and the CLI says what happened. Both on SQLite + local files and
on PostgreSQL + S3 (moto's server).
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange.cli import main
from exchange.cli.client import grant_body, upload_package
from exchange.client import ClientError, ExchangeClient
from exchange.service.fetch import HELD_MAX_BYTES
from exchange.settings import DEV_KEY_DIR
from exchange.storage import ledger_store
from exchange.storage.db import make_engine, session_scope
from exchange.storage.local import LocalBlobStore
from exchange.storage.s3 import S3BlobStore
from tests.api.conftest import (
    AGENCY_OF,
    BACKENDS,
    PH_PARTNER,
    TH_INVESTIGATOR,
    dev_signer,
    make_package,
)
from tests.exchange_server import RunningExchange, running_exchange
from tests.s3server import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.slow  # one real server per backend

SMALL = 4096
LARGE = 3 * 1024 * 1024 + 17  # several chunks: the stream starts before the end is hashed
PROBLEM = "https://evidence-exchange.example/problems/stored_object_corrupt"


@dataclass
class Node:
    """A running `exchange serve`, its database URL and a handle on its object store."""

    server: RunningExchange
    database_url: str
    store: LocalBlobStore | S3BlobStore

    def corrupt(self, sha256: str, data: bytes) -> None:
        """Overwrite the stored object in place with same-size altered bytes."""
        key = self.store.key_for(sha256)
        altered = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        if isinstance(self.store, LocalBlobStore):
            target = self.store.path_for(key)
            target.chmod(0o644)
            target.write_bytes(altered)
            return
        self.store._client.put_object(self.store.bucket, key, io.BytesIO(altered), len(altered))

    def entries(self, case_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(action, details) of every ledger entry about a case, in order."""
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                rows = ledger_store.entries_for_case(session, case_id)
                return [(r.action, json.loads(bytes(r.data))["details"]) for r in rows]
        finally:
            engine.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    data_dir = tmp_path_factory.mktemp("corrupt") / "var"
    if request.param == "sqlite-local":
        with running_exchange(data_dir) as server:
            url = f"sqlite:///{(data_dir / 'exchange.db').resolve()}"
            yield Node(server, url, LocalBlobStore(data_dir / "blobs"))
        return
    s3 = request.getfixturevalue("s3_server")
    database_url: str = request.getfixturevalue("pg_database")
    bucket = f"corrupt-{os.urandom(6).hex()}"
    settings = {
        "EXCHANGE_DATABASE_URL": database_url,
        "EXCHANGE_STORAGE": "s3",
        "EXCHANGE_S3_ENDPOINT": s3.endpoint,
        "EXCHANGE_S3_ACCESS_KEY": ACCESS_KEY,
        "EXCHANGE_S3_SECRET_KEY": SECRET_KEY,
        "EXCHANGE_S3_BUCKET": bucket,
        "EXCHANGE_S3_SECURE": "false",
    }
    with running_exchange(data_dir, **settings) as server:
        store = S3BlobStore(
            endpoint=s3.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            bucket=bucket,
            secure=False,
        )
        yield Node(server, database_url, store)


def client_of(node: Node, client_id: str) -> ExchangeClient:
    return ExchangeClient(
        base_url=node.server.url, client_id=client_id, signer=dev_signer(AGENCY_OF[client_id])
    )


def corrupt_case(node: Node, tmp_path: Path, size: int) -> tuple[str, str, bytes]:
    """A case with one sealed file of `size` bytes granted to PH, then corrupted in the store."""
    data = os.urandom(size)
    package = make_package(tmp_path, files={"disk.img": data})
    with client_of(node, TH_INVESTIGATOR) as th:
        case_id = th.create_case(case_ref="TH-9", title="Swap", classification="restricted")[
            "case_id"
        ]
        upload_package(th, package.folder, case_id)
        th.add_grant(
            case_id,
            grant_body(
                country="PH",
                agency=None,
                legal_basis="mla",
                reference="MLA-1",
                days=30,
                now=datetime.now(UTC),
            ),
        )
    node.corrupt(package.manifest["files"][0]["sha256"], data)
    return case_id, package.package_id, data


def file_url(node: Node, case_id: str, package_id: str) -> str:
    return f"{node.server.url}/v1/cases/{case_id}/packages/{package_id}/files/disk.img"


def read_into(response: httpx.Response, into: bytearray) -> None:
    """Append the body's bytes to `into` as they arrive, until it ends or breaks."""
    for chunk in response.iter_raw():
        into.extend(chunk)


def assert_clean_log(node: Node) -> None:
    log = node.server.log_text()
    assert "Traceback" not in log
    assert "response already started" not in log


def test_a_small_corrupt_object_is_a_502_problem_with_no_byte_of_it(node: Node, tmp_path: Path):
    assert SMALL <= HELD_MAX_BYTES
    case_id, package_id, data = corrupt_case(node, tmp_path, SMALL)
    with client_of(node, PH_PARTNER) as ph:
        url = file_url(node, case_id, package_id)
        response = httpx.get(url, headers=ph._auth("GET", url))  # DPoP: a proof for this URL
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert "repr-digest" not in response.headers
    body = response.json()
    assert body["type"] == PROBLEM
    assert body["status"] == 502
    assert (body["reason"], body["path"]) == ("hash_mismatch", "disk.img")
    assert body["detail"] == (
        "the exchange's stored copy of disk.img is corrupt: it no longer matches the sealed "
        "manifest (hash_mismatch); the fetch was refused and recorded in the ledger as "
        "integrity.failure"
    )
    assert data[64:128] not in response.content  # no byte of the object went out
    entries = node.entries(case_id)
    action, details = entries[-1]
    assert action == "integrity.failure"
    assert (details["path"], details["reason"]) == ("disk.img", "hash_mismatch")
    assert "bundle.fetched" not in [a for a, _ in entries]  # refused, so never recorded as fetched
    assert_clean_log(node)


def test_a_large_corrupt_object_is_broken_off_cleanly_and_recorded(node: Node, tmp_path: Path):
    case_id, package_id, _ = corrupt_case(node, tmp_path, LARGE)
    received = bytearray()
    with client_of(node, PH_PARTNER) as ph:
        url = file_url(node, case_id, package_id)
        with httpx.stream("GET", url, headers=ph._auth("GET", url)) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(LARGE)
            with pytest.raises(httpx.RemoteProtocolError):
                read_into(response, received)
    assert 0 < len(received) < LARGE  # streaming had begun; the last chunk was held back
    actions = [a for a, _ in node.entries(case_id)]
    assert actions[-2:] == ["bundle.fetched", "integrity.failure"]
    log = node.server.log_text()
    assert f"download of disk.img aborted after {len(received)} bytes" in log
    assert_clean_log(node)
    # The client API names it for what it is, not as a dropped connection.
    with client_of(node, PH_PARTNER) as ph, pytest.raises(ClientError) as caught:
        ph.download_file(case_id, package_id, "disk.img", io.BytesIO())
    assert caught.value.code == "stored_object_corrupt"
    assert "peer closed" not in caught.value.detail


@pytest.mark.parametrize(
    ("size", "how"),
    [
        (SMALL, "and refused the fetch"),
        (LARGE, "and broke off the download after {got} of {size} bytes"),
    ],
)
def test_the_cli_says_the_exchange_found_a_corrupt_object_and_recorded_it(
    node: Node,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    size: int,
    how: str,
):
    case_id, package_id, _ = corrupt_case(node, tmp_path, size)
    monkeypatch.setenv("EXCHANGE_CONFIG_DIR", str(tmp_path / "config"))
    key = DEV_KEY_DIR / f"{AGENCY_OF[PH_PARTNER]}.key.pem"
    login = ["login", "--server", node.server.url, "--client", PH_PARTNER, "--key", str(key)]
    assert main([*login, "--profile", "ph"]) == 0
    capsys.readouterr()
    out = tmp_path / "fetched"
    assert main(["fetch", case_id, "--out", str(out), "--profile", "ph"]) == 1
    err = capsys.readouterr().err.replace("\n", "")
    # Streamed: every chunk but the held-back last one (17 bytes) went out before the abort.
    got = size - (size % (1024 * 1024))
    assert err == (
        f"error: fetch refused: package {package_id}: the exchange detected a corrupt stored "
        "object: its copy of data/disk.img no longer matches the sealed manifest; it recorded "
        f"this in the ledger (integrity.failure) {how.format(got=got, size=size)}; nothing of "
        "the package was kept"
    )
    assert "peer closed" not in err
    assert list(out.iterdir()) == []
    assert [a for a, _ in node.entries(case_id)][-1] == "integrity.failure"
    assert_clean_log(node)


@contextmanager
def one_shot_server(answer: bytes) -> Iterator[str]:
    """A socket on 127.0.0.1 that reads one request, writes `answer` and closes; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        thread.join(timeout=10)
        listener.close()


@pytest.mark.parametrize(
    ("answer", "code", "detail"),
    [
        (b"", "stream_aborted", "the connection broke off before an answer: "),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,
            "stored_object_corrupt",
            # The client hands on whole chunks (1 MiB): the 10 bytes never reached the sink.
            "the exchange broke off the download after 0 of 100 bytes: it detected a corrupt "
            "stored object (no longer matching its sealed hash) and recorded it in the ledger",
        ),
    ],
)
def test_only_a_body_cut_short_after_200_is_reported_as_a_corrupt_object(
    answer: bytes, code: str, detail: str
):
    with one_shot_server(answer) as url:
        client = ExchangeClient(
            base_url=url,
            client_id=PH_PARTNER,
            signer=dev_signer(AGENCY_OF[PH_PARTNER]),
            _token="not-checked-here",
            _token_expires=time.monotonic() + 600,
        )
        with client, pytest.raises(ClientError) as caught:
            client.download("/v1/cases/c/packages/p/files/disk.img", io.BytesIO())
    assert caught.value.code == code
    assert caught.value.detail.startswith(detail)
