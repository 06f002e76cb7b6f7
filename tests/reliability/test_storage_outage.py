"""Object store outage: S3 (moto) goes away during an upload and during a fetch.

The exchange must answer a clear 503 with Retry-After, record nothing, and recover by itself
once the store is back, with no restart. The outage is a cut of the connection between the
exchange and moto (see proxy.py), so moto keeps the objects stored before it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from exchange.client import file_url
from tests.exchange_server import running_exchange
from tests.reliability.harness import (
    dev_client,
    ledger_actions,
    ledger_verify,
    one_file_package,
    open_case,
    random_bytes,
)
from tests.reliability.proxy import CuttableProxy
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
SIZE = 12 * MiB  # more than two 5 MiB parts: the upload is multipart when the cut comes
NAME = "phone/extraction.bin"


def _problem(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    return body


def test_store_outage_during_upload_and_fetch_is_503_and_recovers(tmp_path: Path) -> None:
    with S3Server(log_dir=tmp_path) as s3, CuttableProxy(("127.0.0.1", s3.port)) as proxy:
        data_dir = tmp_path / "node"
        db_url = f"sqlite:///{data_dir / 'exchange.db'}"
        settings = {
            "EXCHANGE_STORAGE": "s3",
            "EXCHANGE_S3_ENDPOINT": proxy.endpoint,
            "EXCHANGE_S3_ACCESS_KEY": ACCESS_KEY,
            "EXCHANGE_S3_SECRET_KEY": SECRET_KEY,
            "EXCHANGE_S3_BUCKET": "evidence",
            "EXCHANGE_S3_SECURE": "false",
        }
        with running_exchange(data_dir, **settings) as server:
            client = dev_client(server.url, timeout=120)
            case_id = open_case(client)

            # A sealed package stored before the outage.
            kept = random_bytes(SIZE)
            manifest, jws = one_file_package(NAME, kept)
            kept_id = str(manifest["package_id"])
            client.register_package(case_id, manifest=manifest, jws=jws)
            client.put_stream(file_url(case_id, kept_id, NAME), lambda: io.BytesIO(kept), SIZE)
            client.seal_package(case_id, kept_id)

            # A second package registered, its file about to stream.
            fresh = random_bytes(SIZE)
            manifest, jws = one_file_package(NAME, fresh)
            fresh_id = str(manifest["package_id"])
            client.register_package(case_id, manifest=manifest, jws=jws)
            before = ledger_actions(db_url)
            token = client.login()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}

            # Upload: the store goes away after the first part is on its way.
            def body() -> Iterator[bytes]:
                for offset in range(0, SIZE, MiB):
                    if offset == 6 * MiB:
                        proxy.cut()
                    yield fresh[offset : offset + MiB]

            put = httpx.put(
                server.url + file_url(case_id, fresh_id, NAME),
                content=body(),
                headers={**auth, "Content-Length": str(SIZE)},
                timeout=120,
            )
            assert put.status_code == 503, put.text
            assert int(put.headers["Retry-After"]) > 0
            _problem(put)
            assert ledger_actions(db_url) == before

            # Fetch while the store is away: refused before any byte, no fetch recorded.
            got = httpx.get(
                server.url + file_url(case_id, kept_id, NAME), headers=auth, timeout=120
            )
            assert got.status_code == 503, got.text
            assert int(got.headers["Retry-After"]) > 0
            _problem(got)
            seal = httpx.post(
                f"{server.url}/v1/cases/{case_id}/packages/{fresh_id}/seal",
                headers=auth,
                timeout=120,
            )
            assert seal.status_code in (409, 503), seal.text
            assert ledger_actions(db_url) == before

            # The store is back: the same exchange process serves again, no restart.
            proxy.restore()
            fetched = io.BytesIO()
            client.download_file(case_id, kept_id, NAME, fetched)
            assert fetched.getvalue() == kept
            client.put_stream(file_url(case_id, fresh_id, NAME), lambda: io.BytesIO(fresh), SIZE)
            assert client.seal_package(case_id, fresh_id)["state"] == "sealed"
            fetched = io.BytesIO()
            client.download_file(case_id, fresh_id, NAME, fetched)
            assert hashlib.sha256(fetched.getvalue()).digest() == hashlib.sha256(fresh).digest()
            after = ledger_actions(db_url)
            assert after[: len(before)] == before
            assert [(a, p) for _, a, p in after[len(before) :]] == [
                ("bundle.fetched", kept_id),
                ("package.sealed", fresh_id),
                ("bundle.fetched", fresh_id),
            ]
            assert server.process.poll() is None
            client.close()
        verified = ledger_verify(db_url, data_dir)
        assert verified.returncode == 0, verified.stdout + verified.stderr
