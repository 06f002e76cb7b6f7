"""The DPoP proof replay cache: one row per used proof, in the database every replica shares."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Final

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete

from exchange.storage.db import is_sqlite, session_scope
from exchange.storage.tables import DPoPProofRow

# Expired rows are deleted at most this often per process, not on every request: each proof
# is one insert already, and replicas deleting the same rows at once would only wait on each
# other. A row kept a little past its expiry costs nothing; its proof is refused for its age.
PURGE_INTERVAL_SECONDS: Final = 30.0


def purge_expired_proofs(session: Session, *, now: datetime) -> int:
    """Delete the remembered proofs that expired before `now`; returns how many."""
    result = session.exec(delete(DPoPProofRow).where(col(DPoPProofRow.expires_at) < now))
    return int(result.rowcount or 0)


class ProofReplayCache:
    """Remembers used DPoP proofs (by key thumbprint and jti) so none is accepted twice."""

    def __init__(self, engine: Engine, *, purge_interval: float = PURGE_INTERVAL_SECONDS) -> None:
        """`engine`: the node's database; each call is a short transaction of its own."""
        self._engine = engine
        self._purge_interval = purge_interval
        self._next_purge = 0.0
        self._lock = threading.Lock()

    def remember(self, key: str, until: datetime, *, now: datetime) -> bool:
        """Record a proof's replay key; False if any replica recorded it before (a replay).

        Its own transaction, committed before the request goes on: a proof is spent once it
        was shown, whatever becomes of the request.
        """
        with self._lock:
            purge = time.monotonic() >= self._next_purge
            if purge:
                self._next_purge = time.monotonic() + self._purge_interval
        try:
            with _unsynced_session(self._engine) as session:
                if purge:
                    purge_expired_proofs(session, now=now)
                session.add(DPoPProofRow(key=key, expires_at=until))
        except IntegrityError:
            return False  # the primary key: this proof was used, here or on another replica
        return True


@contextmanager
def _unsynced_session(engine: Engine) -> Iterator[Session]:
    """A transaction whose commit does not wait for the disk (SQLite WAL `synchronous=NORMAL`,
    PostgreSQL `synchronous_commit=off`): it survives a crash of the process, not of the host.

    A used proof is worth far less than the fsync it would cost on every request (bench/dpop.py:
    about 20 ms of a request's time on SQLite's FULL): losing the last rows to a power cut only
    lets a proof captured in its 60 seconds be shown once more, with its token, to a node that
    came back within that minute. The ledger and everything else keep their full durability.
    """
    if not is_sqlite(engine):
        with session_scope(engine) as session:
            session.execute(text("SET LOCAL synchronous_commit = off"))
            yield session
        return
    with engine.connect() as connection:
        # Straight to the driver, outside SQLAlchemy's transaction (whose begin takes SQLite's
        # write lock): the setting is the connection's, and goes back before it is pooled again.
        driver = connection.connection.driver_connection
        assert driver is not None  # noqa: S101  # a live pooled connection
        previous = int(driver.execute("PRAGMA synchronous").fetchone()[0])
        driver.execute("PRAGMA synchronous=NORMAL")
        try:
            with Session(bind=connection, expire_on_commit=False) as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
        finally:
            driver.execute(f"PRAGMA synchronous={previous}")
