"""Shared fixtures: fixed time, real keys, a trust store, a fresh PostgreSQL database per run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from exchange.signing import Signer
from exchange.trust import TrustedKey, TrustStore

pytest_plugins = ["tests.ledger_fixtures", "tests.s3server"]

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "tests" / "vectors"
PG_ADMIN_URL = os.environ.get("EXCHANGE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    """A fixed 'now' for core functions that take time as a parameter."""
    return NOW


def trusted(signer: Signer, agency: str, **overrides: object) -> TrustedKey:
    """A trust record for `signer`, valid a year around NOW unless overridden."""
    fields: dict[str, object] = {
        "agency": agency,
        "country": agency[:2],
        "key_id": signer.key_id,
        "public_key": signer.public_key,
        "not_before": NOW - timedelta(days=365),
        "not_after": NOW + timedelta(days=365),
    }
    fields.update(overrides)
    return TrustedKey(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def th_signer() -> Signer:
    """The Thai investigating agency's key (fresh per run, never a committed dev key)."""
    return Signer.generate()


@pytest.fixture(scope="session")
def ph_signer() -> Signer:
    """A Philippine agency's key."""
    return Signer.generate()


@pytest.fixture
def trust(th_signer: Signer, ph_signer: Signer) -> TrustStore:
    """Trust store holding TH-RTP and PH-NBI."""
    return TrustStore([trusted(th_signer, "TH-RTP"), trusted(ph_signer, "PH-NBI")])


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL to a PostgreSQL database created for this test run and dropped after."""
    name = f"exchange_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own for one test (for tests that need an empty schema)."""
    name = f"exchange_t_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'exchange.db'}"
    url: str = request.getfixturevalue("fresh_pg_url")
    return url


@pytest.fixture(autouse=True)
def _client_config_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test's saved profiles and pinned ledger checkpoints out of the home folder."""
    monkeypatch.setenv("EXCHANGE_CONFIG_DIR", str(tmp_path_factory.mktemp("client-config")))
