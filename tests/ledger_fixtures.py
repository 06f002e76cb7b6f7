"""Ledger test helpers: a log signer, a migrated engine per database kind, entry builders."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from exchange.ledger.entry import Action, Actor, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.signing import Signer
from exchange.storage.db import create_schema, make_engine

ORIGIN = "test.exchange.example/ledger"
ACTOR = Actor(agency="TH-RTP", country="TH", subject="client:investigator-1")
CASE = "TH-2026-0042"


def new_entry(i: int = 0, **overrides: Any) -> NewEntry:
    """A package.sealed entry numbered `i` in its details."""
    fields: dict[str, Any] = {
        "actor": ACTOR,
        "action": Action.PACKAGE_SEALED,
        "case_id": CASE,
        "details": {"n": i, "manifest_sha256": f"{i:064x}"},
    }
    fields.update(overrides)
    return NewEntry(**fields)


@pytest.fixture(scope="session")
def log_key() -> Signer:
    """The log's Ed25519 key, fresh per run."""
    return Signer.generate()


@pytest.fixture(scope="session")
def log(log_key: Signer) -> LogSigner:
    """The log signer."""
    return LogSigner.from_signer(log_key, origin=ORIGIN)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated engine on an empty database of each kind."""
    eng = make_engine(db_url)
    create_schema(eng)
    yield eng
    eng.dispose()
