"""The one error mapping: every domain error has a status and an RFC 9457 problem document."""

from __future__ import annotations

import inspect
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, literal_column, select
from sqlalchemy.exc import OperationalError

from exchange import errors as domain
from exchange.api import errors
from exchange.api.app import create_app
from exchange.settings import Settings
from exchange.storage.db import make_engine
from tests.exchange_server import free_port


def all_subclasses(cls: type) -> set[type]:
    found: set[type] = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


def test_every_exchange_error_subclass_is_mapped():
    declared = {
        obj
        for _, obj in inspect.getmembers(domain, inspect.isclass)
        if issubclass(obj, domain.ExchangeError)
    }
    classes = declared | all_subclasses(domain.ExchangeError) | {domain.ExchangeError}
    missing = sorted(c.__name__ for c in classes if c not in errors.STATUS)
    assert missing == []


def _instance(cls: type[domain.ExchangeError]) -> domain.ExchangeError:
    if issubclass(cls, domain.VerificationError):
        return cls("it does not hold", reason="bad_signature", path="a/b.bin")
    if issubclass(cls, domain.DPoPNonceRequiredError):
        return cls("a nonce is needed", nonce="123.abc")
    return cls("something happened")


@pytest.mark.parametrize(
    ("exc", "challenge"),
    [
        (domain.UnauthenticatedError("x"), 'Bearer error="invalid_token"'),
        (
            domain.InvalidDPoPProofError("x"),
            'DPoP error="invalid_dpop_proof", algs="Ed25519 EdDSA ES256"',
        ),
        (
            domain.DPoPNonceRequiredError("x", nonce="1.n"),
            'DPoP error="use_dpop_nonce", algs="Ed25519 EdDSA ES256"',
        ),
        (domain.DPoPRequiredError("x"), 'DPoP error="invalid_token", algs="Ed25519 EdDSA ES256"'),
    ],
)
def test_401_challenges_name_the_scheme_at_fault(exc: domain.UnauthenticatedError, challenge: str):
    response = errors.exchange_error_response(exc)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge
    nonce = response.headers.get("dpop-nonce")
    assert nonce == ("1.n" if isinstance(exc, domain.DPoPNonceRequiredError) else None)


@pytest.mark.parametrize("cls", sorted(errors.STATUS, key=str))
def test_each_error_becomes_a_problem_document(cls):
    response = errors.exchange_error_response(_instance(cls))
    assert response.status_code == errors.STATUS[cls]
    assert response.media_type == "application/problem+json"
    body = bytes(response.body).decode()
    assert f'"type":"https://evidence-exchange.example/problems/{cls.code}"' in body
    assert f'"code":"{cls.code}"' in body
    if cls is domain.UnavailableError:
        assert response.headers["retry-after"] == "5"


def test_statuses_of_the_important_errors():
    assert errors.STATUS[domain.PayloadTooLargeError] == 413
    assert errors.STATUS[domain.UnavailableError] == 503
    assert errors.STATUS[domain.NotFoundError] == 404
    assert errors.STATUS[domain.UnauthenticatedError] == 401


def _assert_incident_logged(body: dict[str, object], log: str, cause: str) -> None:
    """The body's incident id is on a server log line that also carries the hidden cause."""
    incident = body["incident"]
    assert isinstance(incident, str)
    assert str(uuid.UUID(incident)) == incident
    [line] = [line for line in log.splitlines() if incident in line]
    assert cause in line


@pytest.mark.parametrize(
    "cls", sorted((c for c, status in errors.STATUS.items() if status >= 500), key=str)
)
def test_server_errors_show_a_plain_detail_and_log_the_message_with_an_incident(cls, caplog):
    error = _instance(cls)
    if not issubclass(cls, domain.VerificationError):
        error = cls("object store at 10.0.0.7:9000 failed: NoSuchBucket evidence-prod")
    error.__cause__ = OSError("HTTPConnectionPool(host='10.0.0.7', port=9000): Max retries")
    response = errors.exchange_error_response(error)
    body = json.loads(bytes(response.body))
    assert body["status"] == response.status_code
    assert response.status_code >= 500
    assert body["detail"] == errors.plain_detail(error)
    for secret in ("10.0.0.7", "9000", "evidence-prod", "NoSuchBucket", "HTTPConnectionPool"):
        assert secret not in bytes(response.body).decode()
    _assert_incident_logged(body, caplog.text, "HTTPConnectionPool(host='10.0.0.7'")
    assert error.message in caplog.text


def test_client_errors_keep_their_message_and_have_no_incident():
    response = errors.exchange_error_response(domain.ConflictError("package p is already sealed"))
    body = json.loads(bytes(response.body))
    assert body["detail"] == "package p is already sealed"
    assert "incident" not in body


def test_unknown_errors_stay_500_and_database_outages_are_503(tmp_path, caplog):
    app = create_app(Settings(data_dir=tmp_path))

    def boom() -> None:
        raise RuntimeError("secret internals")

    def db_down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    app.add_api_route("/boom", boom)
    app.add_api_route("/db", db_down)
    http = TestClient(app, raise_server_exceptions=False)  # no lifespan needed
    response = http.get("/boom")
    assert response.status_code == 500
    assert "secret internals" not in response.text
    assert response.json()["code"] == "internal_error"
    assert "RuntimeError" in caplog.text
    _assert_incident_logged(response.json(), caplog.text, "secret internals")
    down = http.get("/db")
    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"
    # Since issue 10: the database's own problem type (was the generic "unavailable").
    assert down.json()["code"] == "database_unavailable"
    assert down.json()["type"] == errors.problem_type("database_unavailable")
    assert down.json()["detail"] == "the database is unavailable or busy; retry later"
    assert "connection refused" not in down.text
    assert "SELECT" not in down.text
    _assert_incident_logged(down.json(), caplog.text, "connection refused")
    missing = http.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/not_found")


# ----------------------------------------------- database errors: outage (503) or bug (500)


def _too_many_parameters(engine: Engine) -> None:
    # PostgreSQL's protocol takes at most 65,535 parameters; psycopg refuses more before
    # sending, as an OperationalError, though nothing is down.
    with engine.connect() as connection:
        connection.execute(
            select(literal_column("1")).where(literal_column("1").in_(list(range(70_000))))
        )


def _missing_table(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT * FROM no_such_table")  # sqlite3.OperationalError


def _select_one(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")


@pytest.fixture
def db_app(tmp_path: Path, pg_url: str) -> Iterator[tuple[TestClient, Engine]]:
    """An app with routes that run statements on real databases, outside the app's own."""
    # A plain engine: the product's waits 30 s for a lock, this one gives up after 0.1 s.
    sqlite = create_engine(f"sqlite:///{tmp_path / 'other.db'}", connect_args={"timeout": 0.1})
    engines = {
        "pg": make_engine(pg_url),
        "sqlite": sqlite,
        "pg-down": make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"),
    }
    app = create_app(Settings(data_dir=tmp_path / "var"))
    app.add_api_route("/params", lambda: _too_many_parameters(engines["pg"]))
    app.add_api_route("/sqlite-bug", lambda: _missing_table(engines["sqlite"]))
    app.add_api_route("/sqlite-locked", lambda: _select_one_write(engines["sqlite"]))
    app.add_api_route("/pg-down", lambda: _select_one(engines["pg-down"]))
    try:
        yield TestClient(app, raise_server_exceptions=False), sqlite
    finally:
        for engine in engines.values():
            engine.dispose()


def _select_one_write(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (n INTEGER)")  # needs the lock


def _assert_internal_error(response: httpx.Response, log: str) -> None:
    assert response.status_code == 500
    assert "retry-after" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == errors.problem_type("internal_error")
    assert body["detail"] == errors.INTERNAL_ERROR_DETAIL
    assert f"incident {body['incident']}" in log


def test_a_statement_with_too_many_parameters_is_a_bug_not_an_outage(db_app, caplog):
    http, _ = db_app
    _assert_internal_error(http.get("/params"), caplog.text)
    assert "number of parameters must be between 0 and 65535" in caplog.text


def test_a_sqlite_programming_error_is_a_500(db_app, caplog):
    http, _ = db_app
    _assert_internal_error(http.get("/sqlite-bug"), caplog.text)
    assert "no such table" in caplog.text


def test_real_database_outages_stay_503(db_app):
    http, sqlite = db_app
    down = http.get("/pg-down")
    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"
    assert down.json()["type"] == errors.problem_type("database_unavailable")
    # Another connection holds SQLite's write lock: "database is locked" is worth a retry.
    holder = sqlite3.connect(str(sqlite.url.database), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        locked = http.get("/sqlite-locked")
    finally:
        holder.close()
    assert locked.status_code == 503
    assert locked.json()["type"] == errors.problem_type("database_unavailable")
