"""PostgreSQL goes away under a running exchange and comes back; the exchange is not restarted.

The machine's PostgreSQL is shared with other tests, so the outage is made on the exchange's
database alone: its backends are terminated (every pooled connection dies), and for the
"down" window the database refuses new connections (ALLOW_CONNECTIONS false). Requests must
fail cleanly (503 problem with Retry-After, never a 500 or a hang), record nothing, and
succeed again as soon as connections are allowed.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from exchange.client import file_url
from tests.conftest import PG_ADMIN_URL
from tests.exchange_server import running_exchange
from tests.reliability import faults
from tests.reliability.harness import (
    assert_hidden_and_logged,
    dev_client,
    ledger_actions,
    ledger_verify,
    one_file_package,
    open_case,
    random_bytes,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "bank/statement.bin"
DATABASE_DETAIL = "the database is unavailable or busy; retry later"


def _driver_words(database: str) -> tuple[str, ...]:
    """What a 5xx body must never carry about the database: address, name, driver text."""
    return (
        database, "127.0.0.1", "5432", "psycopg", "OperationalError", "terminating connection",
        "administrator command", "not currently accepting connections", "ledger_entry", "SQL",
    )  # fmt: skip


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
                assert attempt.json()["code"] == "database_unavailable"
                assert attempt.json()["detail"] == DATABASE_DETAIL
                assert_hidden_and_logged(
                    attempt,
                    server.log_text(),
                    hidden=_driver_words(database),
                    cause="not currently accepting connections",
                )
            readyz = http.get("/readyz")
            assert readyz.status_code == 503, readyz.text
            assert readyz.json()["code"] == "database_unavailable"
            assert readyz.json()["checks"] == {"database": "failed", "storage": "ok"}
            assert_hidden_and_logged(
                readyz,
                server.log_text(),
                hidden=_driver_words(database),
                cause="not currently accepting connections",
            )
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


def test_database_lost_inside_a_ledger_append_answers_as_outside_it(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    """The seal's backend is terminated while its ledger insert runs (the issue's example): the
    answer is the same 503 `database_unavailable` as an outage outside the ledger, with none of
    PostgreSQL's text; that text is in the server log next to the incident id."""
    database = make_url(fresh_pg_url).database
    assert database is not None
    data_dir = tmp_path / "node"
    with running_exchange(data_dir, EXCHANGE_DATABASE_URL=fresh_pg_url) as server:
        client = dev_client(server.url)
        case_id = open_case(client)
        data = random_bytes(64 * 1024)
        manifest, jws = one_file_package(NAME, data)
        package_id = str(manifest["package_id"])
        client.register_package(case_id, manifest=manifest, jws=jws)
        client.put_stream(file_url(case_id, package_id, NAME), lambda: io.BytesIO(data), len(data))
        auth = {"Authorization": f"Bearer {client.login()['access_token']}"}
        before = ledger_actions(fresh_pg_url)

        faults.install_hold_trigger(fresh_pg_url)
        try:
            outcome: list[httpx.Response] = []
            seal_url = f"{server.url}/v1/cases/{case_id}/packages/{package_id}/seal"
            sender = threading.Thread(
                target=lambda: outcome.append(httpx.post(seal_url, headers=auth, timeout=60))
            )
            sender.start()
            faults.wait_for(
                "the seal to reach the ledger insert",
                lambda: bool(faults.held_ledger_inserts(fresh_pg_url)),
            )
            [pid] = faults.held_ledger_inserts(fresh_pg_url)
            _admin("SELECT pg_terminate_backend(%s::int)", str(pid))
            sender.join(timeout=60)
        finally:
            faults.drop_fault(fresh_pg_url)
        [inside] = outcome
        assert inside.status_code == 503, inside.text
        assert int(inside.headers["Retry-After"]) > 0
        assert inside.json()["code"] == "database_unavailable"
        assert inside.json()["detail"] == DATABASE_DETAIL
        assert_hidden_and_logged(
            inside,
            server.log_text(),
            hidden=_driver_words(database),
            cause="terminating connection",
        )
        assert ledger_actions(fresh_pg_url) == before

        # Outside the ledger: the same type, status and detail.
        _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            _kill_backends(database)
            outside = httpx.get(f"{server.url}/v1/cases/{case_id}", headers=auth, timeout=60)
        finally:
            _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert outside.status_code == inside.status_code
        assert {k: outside.json()[k] for k in ("type", "title", "detail", "code")} == {
            k: inside.json()[k] for k in ("type", "title", "detail", "code")
        }
        assert_hidden_and_logged(
            outside,
            server.log_text(),
            hidden=_driver_words(database),
            cause="not currently accepting connections",
        )

        # And the seal goes through once the database answers.
        sealed = httpx.post(seal_url, headers=auth, timeout=60)
        assert sealed.status_code == 200, sealed.text
        client.close()
    verified = ledger_verify(fresh_pg_url, data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
