"""POST /v1/token and bearer tokens under attack; grants: issue, revoke, expire, refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from exchange.client import make_client_assertion
from exchange.model import Role
from exchange.service import agencies
from exchange.signing import Signer, public_key_pem
from exchange.storage.db import session_scope
from exchange.storage.tables import GrantRow
from tests.api.conftest import (
    PH_PARTNER,
    TESTSERVER,
    TH_INVESTIGATOR,
    TH_PROSECUTOR,
    VN_PARTNER,
    Api,
    dev_signer,
    make_package,
    upload,
)
from tests.api.test_packages import assert_problem

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_URL = f"{TESTSERVER}/v1/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_request(api: Api, assertion: str, **overrides: str) -> Any:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **overrides,
    }
    return api.http.post("/v1/token", data=form)


def claims(api: Api, client_id: str = PH_PARTNER, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": TESTSERVER,
        "aud": TESTSERVER,
        "sub": client_id,
        "client_id": client_id,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "agency": "PH-NBI",
        "country": "PH",
        "role": "partner",
        "scope": "evidence:read custody:read",
    }
    body.update(overrides)
    return body


def test_login_answers_an_rfc_9068_token_with_role_scopes_only(api: Api, tmp_path: Path):
    case_id = api.open_case()
    upload(api, case_id, make_package(tmp_path))
    assert api.grant(case_id).status_code == 201
    assertion = make_client_assertion(
        client_id=PH_PARTNER, signer=dev_signer("PH-NBI"), audience=TOKEN_URL
    )
    response = token_request(api, assertion)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 900
    # Role scopes only, though a live grant opens the case: grants are checked per request.
    assert body["scope"] == "custody:read evidence:read"
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "Ed25519"
    jwks = api.http.get("/.well-known/jwks.json").json()
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    # The same assertion twice is a replay.
    replay = token_request(api, assertion)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA", None])
def test_login_accepts_ed25519_assertions_under_either_alg_name(api: Api, alg: str | None):
    assertion = make_client_assertion(
        client_id=TH_INVESTIGATOR, signer=dev_signer("TH-RTP"), audience=TOKEN_URL, algorithm=alg
    )
    # The CLI's default stays EdDSA, which every exchange accepts (see ASSERTION_ED25519_ALG).
    assert jwt.get_unverified_header(assertion)["alg"] == (alg or "EdDSA")
    response = token_request(api, assertion)
    assert response.status_code == 200, response.text
    assert jwt.get_unverified_header(response.json()["access_token"])["alg"] == "Ed25519"


@pytest.mark.parametrize(
    ("client_id", "agency", "audience", "lifetime", "why"),
    [
        ("nobody", "TH-RTP", TOKEN_URL, 120, "unknown client"),
        (PH_PARTNER, "TH-RTP", TOKEN_URL, 120, "signed with another agency's key"),
        (PH_PARTNER, "PH-NBI", "https://elsewhere.example/v1/token", 120, "wrong audience"),
        (PH_PARTNER, "PH-NBI", TOKEN_URL, 600, "lives longer than 5 minutes"),
    ],
)
def test_bad_client_assertions_are_refused(api, client_id, agency, audience, lifetime, why):
    assertion = make_client_assertion(
        client_id=client_id,
        signer=dev_signer(agency),
        audience=audience,
        lifetime_seconds=lifetime,
    )
    response = token_request(api, assertion)
    assert response.status_code == 401, why
    assert response.json()["error"] == "invalid_client"


def test_malformed_token_requests_get_rfc_6749_errors(api: Api):
    assert token_request(api, "x", grant_type="password").json()["error"] == (
        "unsupported_grant_type"
    )
    wrong_type = token_request(api, "x", client_assertion_type="basic")
    assert wrong_type.status_code == 400
    assert wrong_type.json()["error"] == "invalid_request"
    assert token_request(api, "not.a.jwt").json()["error"] == "invalid_client"


def forged_tokens(api: Api) -> dict[str, str]:
    issuer = api.context.issuer
    kid = issuer.key_id
    good = claims(api)
    stranger = Signer.generate()
    header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
    payload = b64(json.dumps(good).encode())
    secret = api.http.get("/.well-known/jwks.json").json()["keys"][0]["x"].encode()
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    none_header = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid}).encode())
    real_key = issuer._signer.private_key  # the exchange's own key, to isolate one defect each
    return {
        "alg none": f"{none_header}.{payload}.",
        "HS256 with the public key": f"{header}.{payload}.{b64(mac)}",
        "unknown kid": jwt.encode(
            good,
            stranger.private_key,
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": stranger.key_id},
        ),
        "wrong typ": jwt.encode(
            good, real_key, algorithm="EdDSA", headers={"typ": "JWT", "kid": kid}
        ),
        "expired": jwt.encode(
            claims(
                api,
                iat=int(time.time()) - 1000,
                nbf=int(time.time()) - 1000,
                exp=int(time.time()) - 100,
            ),
            real_key,
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": kid},
        ),
        "wrong audience": jwt.encode(
            claims(api, aud="https://other.example"),
            real_key,
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": kid},
        ),
        "no jti": jwt.encode(
            {k: v for k, v in good.items() if k != "jti"},
            real_key,
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": kid},
        ),
    }


def test_forged_and_bad_access_tokens_get_401(api: Api):
    for why, token in forged_tokens(api).items():
        response = api.http.get("/v1/cases", headers={"Authorization": f"Bearer {token}"})
        body = assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith("Bearer"), why
        assert token not in body["detail"]
    assert_problem(api.http.get("/v1/cases"), 401, "unauthenticated")


def test_roles_limit_what_a_token_may_do(api: Api):
    response = api.call("POST", "/v1/cases", PH_PARTNER,
                        json={"case_ref": "x", "title": "y", "classification": "z"})  # fmt: skip
    assert_problem(response, 403, "forbidden")
    case_id = api.open_case()
    # A prosecutor of the owning agency reads, but does not grant.
    assert api.call("GET", f"/v1/cases/{case_id}", TH_PROSECUTOR).status_code == 200
    assert_problem(api.grant(case_id, as_client=TH_PROSECUTOR), 403, "forbidden")


def test_grant_revoke_and_expiry_take_effect_on_the_next_request(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    upload(api, case_id, package)
    path = package.manifest["files"][0]["path"]
    file_url = f"/v1/cases/{case_id}/packages/{package.package_id}/files/{path}"
    granted = api.grant(case_id, "PH")
    assert granted.status_code == 201
    grant = granted.json()
    assert grant["live"] is True
    assert api.call("GET", file_url, PH_PARTNER).content == package.data(path)
    assert_problem(api.call("GET", file_url, VN_PARTNER), 404, "not_found")
    # The grantee may read, not manage.
    assert_problem(api.call("GET", f"/v1/cases/{case_id}/grants", PH_PARTNER), 403, "forbidden")
    revoke_url = f"/v1/cases/{case_id}/grants/{grant['grant_id']}"
    assert api.call("DELETE", revoke_url, TH_INVESTIGATOR).status_code == 200
    assert_problem(api.call("DELETE", revoke_url, TH_INVESTIGATOR), 409, "conflict")
    # PH's token still names the case; the database says no.
    assert_problem(api.call("GET", file_url, PH_PARTNER), 404, "not_found")
    listed = api.call("GET", f"/v1/cases/{case_id}/grants", TH_INVESTIGATOR).json()["grants"]
    assert [g["live"] for g in listed] == [False]
    # An expired grant opens nothing either.
    with session_scope(api.context.engine) as session:
        past = datetime.now(UTC) - timedelta(minutes=1)
        session.add(GrantRow(id=str(uuid.uuid4()), case_id=case_id, grantee_country="PH",
                             scope="read", legal_basis_type="mla", legal_basis_reference="old",
                             expires_at=past, issued_by=TH_INVESTIGATOR,
                             created_at=past - timedelta(days=1)))  # fmt: skip
    api.tokens.clear()
    assert_problem(api.call("GET", f"/v1/cases/{case_id}", PH_PARTNER), 404, "not_found")
    assert api.actions(case_id).count("grant.revoked") == 1
    api.verify_ledger()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"scope": ["write"]}, "scope"),
        ({"grantee_country": "Philippines"}, "grantee_country"),
        ({"grantee_agency": "VN-C06"}, "grantee_agency"),
        ({"legal_basis": {"type": "hunch", "reference": "x"}}, "legal_basis.type"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
    ],
)
def test_bad_grants_are_refused_and_not_recorded(api: Api, overrides, fragment):
    case_id = api.open_case()
    body = assert_problem(api.grant(case_id, **overrides), 422, "invalid_input")
    assert fragment in body["detail"]
    assert api.actions(case_id) == ["case.opened"]


def test_only_the_owner_may_grant_and_others_cannot_tell_the_case_exists(api: Api):
    case_id = api.open_case()
    assert api.grant(case_id).status_code == 201
    body = {
        "grantee_country": "VN",
        "scope": ["read"],
        "legal_basis": {"type": "mla", "reference": "x"},
        "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    }
    assert_problem(api.call("POST", f"/v1/cases/{case_id}/grants", PH_PARTNER, json=body),
                   403, "forbidden")  # fmt: skip
    assert_problem(api.call("POST", f"/v1/cases/{case_id}/grants", VN_PARTNER, json=body),
                   404, "not_found")  # fmt: skip
    assert api.actions(case_id) == ["case.opened", "grant.issued"]


def test_a_client_id_beside_the_assertion_must_be_its_issuer(api: Api):
    assertion = make_client_assertion(
        client_id=PH_PARTNER, signer=dev_signer("PH-NBI"), audience=TOKEN_URL
    )
    response = token_request(api, assertion, client_id=VN_PARTNER)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_revoking_the_agency_key_ends_its_clients_logins(api: Api):
    signer = Signer.generate()
    now = datetime.now(UTC)
    pem = public_key_pem(signer.public_key)
    with session_scope(api.context.engine) as session:
        log = api.context.log
        agencies.register_agency(session, log=log, now=now, agency_id="ID-POLRI",
                                 country="ID", name="Indonesian National Police",
                                 operator="operator:test")  # fmt: skip
        agencies.register_key(session, log=log, now=now, agency_id="ID-POLRI", public_key=pem,
                              not_before=now - timedelta(days=1),
                              not_after=now + timedelta(days=30), operator="operator:test")  # fmt: skip
        agencies.register_client(session, log=log, now=now, client_id="id-polri-partner",
                                 agency_id="ID-POLRI", role=Role.PARTNER, public_key=pem,
                                 operator="operator:test")  # fmt: skip

    def login() -> int:
        assertion = make_client_assertion(
            client_id="id-polri-partner", signer=signer, audience=TOKEN_URL
        )
        return int(token_request(api, assertion).status_code)

    assert login() == 200
    with session_scope(api.context.engine) as session:
        agencies.revoke_key(session, log=api.context.log, now=datetime.now(UTC),
                            agency_id="ID-POLRI", kid=signer.key_id, operator="operator:test")  # fmt: skip
    assert login() == 401
    api.verify_ledger()


def test_oversized_json_bodies_get_413_and_openapi_is_served(api: Api):
    response = api.call("POST", "/v1/cases", TH_INVESTIGATOR, content=b"{}",
                        headers={"Content-Length": str(65 * 1024 * 1024),
                                 "Content-Type": "application/json"})  # fmt: skip
    assert_problem(response, 413, "payload_too_large")
    spec = api.http.get("/openapi.json").json()
    for path in ("/v1/token", "/v1/cases", "/v1/cases/{case_id}/custody", "/v1/ledger/checkpoint",
                 "/v1/cases/{case_id}/packages/{package_id}/files/{path}"):  # fmt: skip
        assert path in spec["paths"]
