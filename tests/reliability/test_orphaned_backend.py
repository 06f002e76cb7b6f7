"""A node SIGKILLed mid-statement: its PostgreSQL backend lets go of the ledger lock at once.

Without `client_connection_check_interval` a backend whose client died keeps running its
statement (here a ledger insert stalled by a trigger for `faults.HOLD_SECONDS`) and holds the
ledger's advisory lock until the statement ends, stalling every other replica's appends. The
product's connections set it (storage.db.PostgresLiveness, default 5 s): the backend notices
the closed socket, aborts, and the lock is free well before the stalled statement would end.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from exchange.storage.ledger_store import APPEND_LOCK_KEY
from tests.exchange_server import running_exchange
from tests.reliability import faults
from tests.reliability.harness import dev_client

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def advisory_holders(db_url: str) -> list[int]:
    """Backend pids holding an advisory lock in this database."""
    with psycopg.connect(faults.libpq_url(db_url), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s",
            (make_url(db_url).database,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def lock_is_free(db_url: str) -> bool:
    """Whether a new session can take the ledger's append lock right now."""
    with psycopg.connect(faults.libpq_url(db_url), connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,)).fetchone()
        conn.rollback()
    return bool(row and row[0])


def test_a_killed_nodes_backend_releases_the_ledger_lock_within_the_check_interval(
    fresh_pg_url: str, tmp_path: Path
):
    settings = {
        "EXCHANGE_DATABASE_URL": fresh_pg_url,
        "EXCHANGE_DB_CLIENT_CHECK_INTERVAL_MS": "500",
    }
    with running_exchange(tmp_path / "node", **settings) as server:
        client = dev_client(server.url)
        headers = {"Authorization": f"Bearer {client.login()['access_token']}"}
        faults.install_hold_trigger(fresh_pg_url)
        body = {"case_ref": "TH-1", "title": "t", "classification": "restricted"}

        def open_case() -> None:  # its case.opened entry stalls inside the ledger append
            try:
                httpx.post(f"{server.url}/v1/cases", json=body, headers=headers, timeout=120)
            except httpx.TransportError:
                pass  # the server is killed under it

        sender = threading.Thread(target=open_case, daemon=True)
        sender.start()
        faults.wait_for(
            "the append to stall", lambda: bool(faults.held_ledger_inserts(fresh_pg_url))
        )
        [held] = faults.held_ledger_inserts(fresh_pg_url)
        assert advisory_holders(fresh_pg_url) == [held]
        assert not lock_is_free(fresh_pg_url)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
        client.close()
        sender.join(timeout=60)
    # Well inside the stalled statement's remaining sleep: only the client check can end it.
    faults.wait_for(
        f"backend {held} to release the ledger lock",
        lambda: advisory_holders(fresh_pg_url) == [],
        seconds=faults.HOLD_SECONDS / 3,
    )
    assert faults.backend_gone(fresh_pg_url, held)
    assert lock_is_free(fresh_pg_url)
    faults.drop_fault(fresh_pg_url)
