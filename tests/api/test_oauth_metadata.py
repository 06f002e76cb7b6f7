"""OAuth 2.0 discovery: authorization server metadata (RFC 8414), the JWK Set's media type
(RFC 7517 §8.5), and the bearer challenge with and without a token (RFC 6750 §3)."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.client import make_client_assertion
from tests.api.conftest import TESTSERVER, TH_INVESTIGATOR, Api, dev_signer
from tests.api.test_packages import assert_problem

METADATA = "/.well-known/oauth-authorization-server"


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_metadata_names_the_issuer_token_endpoint_and_keys(api: Api):
    response = api.http.get(METADATA)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "issuer": TESTSERVER,
        "token_endpoint": f"{TESTSERVER}/v1/token",
        "jwks_uri": f"{TESTSERVER}/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["Ed25519", "EdDSA", "ES256"],
        "response_types_supported": [],
        "scopes_supported": [
            "admin",
            "cases:write",
            "custody:read",
            "evidence:read",
            "evidence:upload",
            "grants:manage",
        ],
        "dpop_signing_alg_values_supported": ["Ed25519", "EdDSA", "ES256"],
    }


def test_a_client_logs_in_and_checks_its_token_from_the_metadata_alone(api: Api):
    metadata = api.http.get(METADATA).json()
    assertion = make_client_assertion(
        client_id=TH_INVESTIGATOR,
        signer=dev_signer("TH-RTP"),
        audience=metadata["token_endpoint"],
    )
    token = api.http.post(
        metadata["token_endpoint"],
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    ).json()["access_token"]
    keys = api.http.get(metadata["jwks_uri"])
    assert keys.headers["content-type"] == "application/jwk-set+json"
    header, claims, signature = token.split(".")
    kid = json.loads(_b64url(header))["kid"]
    (jwk,) = [k for k in keys.json()["keys"] if k["kid"] == kid]
    # Checked with the raw key from the JWK Set, not with the exchange's own verifier.
    Ed25519PublicKey.from_public_bytes(_b64url(jwk["x"])).verify(
        _b64url(signature), f"{header}.{claims}".encode()
    )
    assert json.loads(_b64url(claims))["iss"] == metadata["issuer"]


def test_the_jwk_set_has_its_registered_media_type(api: Api):
    response = api.http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/jwk-set+json"
    assert [k["kty"] for k in response.json()["keys"]] == ["OKP"]


def test_a_request_without_a_token_gets_the_challenge_without_an_error_code(api: Api):
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = api.http.get("/v1/cases", headers=headers)
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer", headers


def test_a_request_with_a_bad_token_gets_invalid_token(api: Api):
    for token in ("nope", api.token(TH_INVESTIGATOR)[:-4] + "AAAA"):
        response = api.http.get("/v1/cases", headers={"Authorization": f"Bearer {token}"})
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
