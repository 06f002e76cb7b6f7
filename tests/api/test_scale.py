"""A partner with more live grants than PostgreSQL's driver takes parameters (65,535): login,
reads and the paginated case list, on SQLite + local and PostgreSQL + S3.

The grants are written straight into the real tables in bulk (`insert_granted_cases`); through
the API each would cost a ledger append. One set per backend, shared by the module's tests.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from exchange.api.errors import PROBLEM_MEDIA_TYPE, problem_type
from exchange.client import ExchangeClient, make_client_assertion
from tests.api.conftest import (
    AGENCY_OF,
    PH_PARTNER,
    TESTSERVER,
    TH_INVESTIGATOR,
    VN_PARTNER,
    Api,
    dev_signer,
)
from tests.builders import insert_granted_cases

pytestmark = pytest.mark.slow

# More than the 65,535 bound parameters PostgreSQL's protocol allows in one statement.
GRANTED = 66_000
OTHERS = 20  # cases per kind of grant that does not open the case to PH-NBI
MAX_TOKEN_BYTES = 2048


@dataclass(frozen=True)
class Scale:
    """Case ids: live grants to PH, and cases PH-NBI must not see for each reason."""

    granted: list[str]
    ungranted: list[str]
    other_agency: list[str]
    revoked: list[str]
    expired: list[str]


@pytest.fixture(scope="module")
def scale(api: Api) -> Scale:
    now = datetime.now(UTC)
    engine = api.context.engine
    start = now - timedelta(days=2)
    later = now + timedelta(days=30)
    return Scale(
        granted=insert_granted_cases(
            engine, count=GRANTED, created_from=start, grant_expires_at=later
        ),
        ungranted=insert_granted_cases(
            engine, count=OTHERS, created_from=start, grant_expires_at=later, grantee_country=None
        ),
        other_agency=insert_granted_cases(
            engine,
            count=OTHERS,
            created_from=start,
            grant_expires_at=later,
            grantee_agency="PH-PNP",
        ),
        revoked=insert_granted_cases(
            engine,
            count=OTHERS,
            created_from=start,
            grant_expires_at=later,
            revoked_at=now - timedelta(hours=1),
        ),
        expired=insert_granted_cases(
            engine, count=OTHERS, created_from=start, grant_expires_at=now - timedelta(seconds=1)
        ),
    )


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    parsed: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return parsed


def test_a_partner_with_66k_live_grants_logs_in_with_a_small_token(fresh: Api, scale: Scale):
    response = fresh.http.post(
        "/v1/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": _assertion(PH_PARTNER),
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    token = body["access_token"]
    assert len(token.encode()) < MAX_TOKEN_BYTES
    # Role scopes only: the live grants decide case access on every request.
    assert body["scope"] == "custody:read evidence:read"
    assert _claims(token)["scope"] == "evidence:read custody:read"


def _assertion(client_id: str) -> str:
    return make_client_assertion(
        client_id=client_id,
        signer=dev_signer(AGENCY_OF[client_id]),
        audience=f"{TESTSERVER}/v1/token",
    )


def test_the_partner_reads_a_granted_case_and_no_other(fresh: Api, scale: Scale):
    for case_id in (scale.granted[0], scale.granted[GRANTED // 2], scale.granted[-1]):
        response = fresh.call("GET", f"/v1/cases/{case_id}", PH_PARTNER)
        assert response.status_code == 200, response.text
        assert response.json()["case_id"] == case_id
    hidden = [scale.ungranted[0], scale.other_agency[0], scale.revoked[0], scale.expired[0]]
    for case_id in hidden:
        response = fresh.call("GET", f"/v1/cases/{case_id}", PH_PARTNER)
        assert response.status_code == 404, case_id
        assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
        problem = response.json()
        assert problem["type"] == problem_type("not_found")
        assert problem["detail"] == "case not found"
    # Another country's partner sees none of them.
    refused = fresh.call("GET", f"/v1/cases/{scale.granted[0]}", VN_PARTNER)
    assert refused.status_code == 404
    assert refused.json()["type"] == problem_type("not_found")


def _all_pages(api: Api, client_id: str, limit: int) -> tuple[list[str], int]:
    url: str | None = f"/v1/cases?limit={limit}"
    seen: list[str] = []
    pages = 0
    while url is not None:
        response = api.call("GET", url, client_id)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["cases"]) <= limit
        seen.extend(case["case_id"] for case in body["cases"])
        url = body["next"]
        if url is None:
            assert "link" not in response.headers
        else:
            assert response.headers["link"] == f'<{url}>; rel="next"'
        pages += 1
    return seen, pages


def test_the_partner_pages_through_exactly_its_granted_cases(fresh: Api, scale: Scale):
    seen, pages = _all_pages(fresh, PH_PARTNER, 1000)
    # Every live grant, in (created_at, id) order, none twice, none that is not granted.
    assert seen == scale.granted
    assert pages == -(-GRANTED // 1000)


def test_the_owner_pages_through_every_case_it_owns(fresh: Api, scale: Scale):
    seen, _ = _all_pages(fresh, TH_INVESTIGATOR, 1000)
    everything = {
        *scale.granted,
        *scale.ungranted,
        *scale.other_agency,
        *scale.revoked,
        *scale.expired,
    }
    assert len(seen) == len(set(seen)) >= len(everything)
    assert everything <= set(seen)


def test_the_first_page_is_the_default_size(fresh: Api, scale: Scale):
    response = fresh.call("GET", "/v1/cases", PH_PARTNER)
    assert response.status_code == 200
    body = response.json()
    assert [c["case_id"] for c in body["cases"]] == scale.granted[:100]
    assert body["next"].startswith("/v1/cases?limit=100&cursor=")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=0", "query/limit: Input should be greater than or equal to 1"),
        ("limit=1001", "query/limit: Input should be less than or equal to 1000"),
        (
            "limit=ten",
            "query/limit: Input should be a valid integer, unable to parse string as an integer",
        ),
        ("cursor=", "query/cursor: String should have at least 1 character"),
        ("cursor=" + "A" * 201, "query/cursor: String should have at most 200 characters"),
        ("cursor=!!", "cursor is malformed"),
        ("cursor=" + _b64(b'{"a": 1}'), "cursor is malformed"),
        ("cursor=" + _b64(b'["2026-12-01T00:00:00", "x"]'), "cursor is malformed"),  # naive time
        ("cursor=" + _b64(b'["yesterday", "x"]'), "cursor is malformed"),
        ("cursor=" + _b64(b'["2026-12-01T00:00:00+00:00", 7]'), "cursor is malformed"),
    ],
)
def test_a_bad_page_request_is_refused(fresh: Api, scale: Scale, query: str, detail: str):
    response = fresh.call("GET", f"/v1/cases?{query}", PH_PARTNER)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem = response.json()
    assert problem["type"] == problem_type("invalid_input")
    assert problem["detail"] == detail


def test_the_client_follows_every_page(fresh: Api, scale: Scale):
    client = ExchangeClient(
        base_url=TESTSERVER, client_id=PH_PARTNER, signer=dev_signer("PH-NBI"), http=fresh.http
    )
    assert [case["case_id"] for case in client.list_cases()] == scale.granted
