"""PostgreSQL goes away under a running exchange and comes back; the exchange is not restarted.

The machine's PostgreSQL is shared with other tests, so the outage is made on the exchange's
database alone: its backends are terminated (every pooled connection dies), and for the
"down" window the database refuses new connections (ALLOW_CONNECTIONS false). Requests must
fail cleanly (503 problem with Retry-After, never a 500 or a hang), record nothing, and
succeed again as soon as connections are allowed.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from exchange.client import file_url
from tests.conftest import PG_ADMIN_URL
from tests.exchange_server import running_exchange
from tests.reliability.harness import (
    dev_client,
    ledger_actions,
    ledger_verify,
    one_file_package,
    open_case,
    random_bytes,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "bank/statement.bin"


def _admin(sql: str, *params: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.encode(), params or None)


def _kill_backends(database: str) -> None:
    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        database,
    )


def _assert_clean_failure_or_success(response: httpx.Response, ok: int) -> None:
    if response.status_code == ok:
        return
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["content-type"].startswith("application/problem+json")


def test_database_outage_fails_cleanly_and_recovers_without_restart(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    database = make_url(fresh_pg_url).database
    assert database is not None
    data_dir = tmp_path / "node"
    with running_exchange(data_dir, EXCHANGE_DATABASE_URL=fresh_pg_url) as server:
        client = dev_client(server.url)
        case_id = open_case(client)
        data = random_bytes(256 * 1024)
        manifest, jws = one_file_package(NAME, data)
        package_id = str(manifest["package_id"])
        client.register_package(case_id, manifest=manifest, jws=jws)
        client.put_stream(file_url(case_id, package_id, NAME), lambda: io.BytesIO(data), len(data))
        client.seal_package(case_id, package_id)
        token = client.login()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        http = httpx.Client(base_url=server.url, headers=auth, timeout=60)

        # 1. Every pooled connection dies at once (as in a PostgreSQL restart).
        _kill_backends(database)
        response = http.get(f"/v1/cases/{case_id}")
        _assert_clean_failure_or_success(response, 200)
        assert http.get(f"/v1/cases/{case_id}").status_code == 200

        # 2. The database is down: no connection at all for a while.
        before = ledger_actions(fresh_pg_url)
        _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            _kill_backends(database)
            attempts = [
                http.get(f"/v1/cases/{case_id}"),
                http.post(
                    "/v1/cases",
                    json={"case_ref": "TH-DOWN-1", "title": "t", "classification": "restricted"},
                ),
                http.get(file_url(case_id, package_id, NAME)),
                http.get("/v1/ledger/checkpoint"),
            ]
            for attempt in attempts:
                assert attempt.status_code == 503, attempt.text
                assert int(attempt.headers["Retry-After"]) > 0
                assert attempt.headers["content-type"].startswith("application/problem+json")
            assert server.process.poll() is None
        finally:
            _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

        # 3. Back: the same process serves again, and the down window recorded nothing.
        assert ledger_actions(fresh_pg_url) == before
        assert http.get(f"/v1/cases/{case_id}").status_code == 200
        created = http.post(
            "/v1/cases", json={"case_ref": "TH-UP-1", "title": "t", "classification": "restricted"}
        )
        assert created.status_code == 201, created.text
        fetched = http.get(file_url(case_id, package_id, NAME))
        assert fetched.status_code == 200
        assert fetched.content == data
        assert [a for _, a, _ in ledger_actions(fresh_pg_url)[len(before) :]] == [
            "case.opened",
            "bundle.fetched",
        ]
        http.close()
        client.close()
    seqs = [seq for seq, _, _ in ledger_actions(fresh_pg_url)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    verified = ledger_verify(fresh_pg_url, data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
