"""The one error mapping: every domain error has a status and an RFC 9457 problem document."""

from __future__ import annotations

import inspect
import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from exchange import errors as domain
from exchange.api import errors
from exchange.api.app import create_app
from exchange.settings import Settings


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
