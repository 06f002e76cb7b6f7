"""Access tokens and client assertions with real keys: happy paths and every token attack."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from joserfc import jwk as joserfc_jwk, jwt as joserfc_jwt

from exchange.auth import (
    MAX_TOKEN_CASES,
    ROLE_SCOPES,
    TokenIssuer,
    TokenVerifier,
    VerifiedAssertion,
    keys_from_jwks,
    role_scopes,
    verify_client_assertion,
)
from exchange.errors import InvalidInputError, UnauthenticatedError
from exchange.model import ActingOfficer, Role
from exchange.signing import PublicKey, Signer, b64url, b64url_decode, key_id

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
ISSUER = "https://exchange.test"
AUDIENCE = "https://exchange.test/v1"
TOKEN_ENDPOINT = "https://exchange.test/v1/token"
CASE_A = "0b5e6f3c-8a39-4d4b-9b8e-2f1f7a3c9d01"
CASE_B = "7d1c2e4f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
INVESTIGATOR_SCOPES = "cases:write evidence:upload grants:manage evidence:read custody:read"


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS built by hand, so that any header or claim can be set."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    signature = sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64url(signature)}"


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(body))


@pytest.fixture(scope="module")
def issuer_signer() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="module")
def issuer(issuer_signer: Signer) -> TokenIssuer:
    return TokenIssuer(issuer_signer, issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="module")
def verifier(issuer: TokenIssuer) -> TokenVerifier:
    return TokenVerifier(issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE)


def issue(issuer: TokenIssuer, *, role: Role = Role.PARTNER, now: datetime = NOW) -> str:
    return issuer.issue(
        client_id="ph-nbi-partner-1",
        agency="PH-NBI",
        country="PH",
        role=role,
        case_ids=[CASE_B, CASE_A, CASE_A],
        now=now,
    )


def good_claims() -> dict[str, Any]:
    t = int(NOW.timestamp())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ph-nbi-partner-1",
        "client_id": "ph-nbi-partner-1",
        "exp": t + 600,
        "iat": t,
        "nbf": t,
        "jti": "f" * 32,
        "agency": "PH-NBI",
        "country": "PH",
        "role": "partner",
        "scope": "evidence:read custody:read",
    }


def good_header(signer: Signer) -> dict[str, Any]:
    return {"alg": "EdDSA", "kid": signer.key_id, "typ": "at+jwt"}


def rejected(verifier: TokenVerifier, token: str, message: str) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        verifier.verify(token, now=NOW)
    assert info.value.message == f"invalid access token: {message}"


# --------------------------------------------------------------------------- access tokens


def test_issued_token_has_rfc9068_header_and_claims(issuer: TokenIssuer, issuer_signer: Signer):
    header, claims = parts(issue(issuer))
    assert header == {"alg": "Ed25519", "kid": issuer_signer.key_id, "typ": "at+jwt"}
    t = int(NOW.timestamp())
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == claims["client_id"] == "ph-nbi-partner-1"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (t, t, t + 900)
    assert len(claims["jti"]) == 32
    assert (claims["agency"], claims["country"], claims["role"]) == ("PH-NBI", "PH", "partner")
    assert claims["scope"] == (f"evidence:read custody:read case:{CASE_A}:read case:{CASE_B}:read")


def test_each_token_gets_a_fresh_jti(issuer: TokenIssuer):
    assert parts(issue(issuer))[1]["jti"] != parts(issue(issuer))[1]["jti"]


def test_verify_returns_principal(issuer: TokenIssuer, verifier: TokenVerifier):
    token = issue(issuer, role=Role.INVESTIGATOR)
    principal = verifier.verify(token, now=NOW + timedelta(minutes=14))
    assert principal.client_id == "ph-nbi-partner-1"
    assert (principal.agency, principal.country, principal.role) == (
        "PH-NBI",
        "PH",
        Role.INVESTIGATOR,
    )
    assert principal.scopes == frozenset(
        [*INVESTIGATOR_SCOPES.split(), f"case:{CASE_A}:read", f"case:{CASE_B}:read"]
    )
    assert principal.token_id == parts(token)[1]["jti"]
    assert principal.expires_at == NOW + timedelta(minutes=15)


def test_signature_verifies_independently_of_pyjwt(issuer: TokenIssuer, issuer_signer: Signer):
    token = issue(issuer)
    head, body, signature = token.split(".")
    raw = issuer_signer.public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    # A fresh key object built from the raw bytes: no PyJWT, no shared object.
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(
        b64url_decode(signature), f"{head}.{body}".encode("ascii")
    )


def test_role_scopes_table():
    assert " ".join(ROLE_SCOPES[Role.INVESTIGATOR]) == INVESTIGATOR_SCOPES
    assert ROLE_SCOPES[Role.PARTNER] == ("evidence:read", "custody:read")
    assert ROLE_SCOPES[Role.PROSECUTOR] == ("evidence:read", "custody:read")
    assert "admin" in ROLE_SCOPES[Role.ADMIN]
    assert "evidence:read" not in ROLE_SCOPES[Role.ADMIN]
    assert set(ROLE_SCOPES) == set(Role)
    assert role_scopes(Role.PROSECUTOR, [CASE_B, CASE_A]) == [
        "evidence:read",
        "custody:read",
        f"case:{CASE_A}:read",
        f"case:{CASE_B}:read",
    ]


def test_case_id_that_is_not_a_uuid_is_refused(issuer: TokenIssuer):
    with pytest.raises(InvalidInputError, match="is not a lowercase UUID"):
        issuer.issue(
            client_id="c1", agency="PH-NBI", country="PH", role=Role.PARTNER,
            case_ids=["x y"], now=NOW,
        )  # fmt: skip


def test_issuer_refuses_long_ttl_and_p256_key(issuer_signer: Signer):
    with pytest.raises(InvalidInputError, match="at most 15 minutes"):
        TokenIssuer(issuer_signer, issuer=ISSUER, audience=AUDIENCE, ttl=timedelta(minutes=16))
    p256 = Signer(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidInputError, match="must be Ed25519"):
        TokenIssuer(p256, issuer=ISSUER, audience=AUDIENCE)


def test_jwks_publishes_current_and_previous_keys(issuer_signer: Signer):
    old = Signer.generate()
    rotated = TokenIssuer(
        issuer_signer, issuer=ISSUER, audience=AUDIENCE, previous_keys=[old.public_key]
    )
    jwks = rotated.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [issuer_signer.key_id, old.key_id]
    raw = issuer_signer.public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert jwks["keys"][0] == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw),
        "kid": issuer_signer.key_id,
        "alg": "Ed25519",
        "use": "sig",
    }
    keys = keys_from_jwks(jwks)
    assert set(keys) == {issuer_signer.key_id, old.key_id}
    # A token from the old key still verifies through the published set.
    old_token = TokenIssuer(old, issuer=ISSUER, audience=AUDIENCE).issue(
        client_id="c1", agency="PH-NBI", country="PH", role=Role.PARTNER, case_ids=[], now=NOW
    )
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)
    assert verifier.verify(old_token, now=NOW).client_id == "c1"


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_tokens_signed_under_either_name_verify(issuer_signer: Signer, alg: str):
    # A replica still signing EdDSA (rolling upgrade) and one signing Ed25519 serve the same tokens.
    legacy = TokenIssuer(issuer_signer, issuer=ISSUER, audience=AUDIENCE, algorithm=alg)
    token = legacy.issue(
        client_id="c1", agency="PH-NBI", country="PH", role=Role.PARTNER, case_ids=[], now=NOW
    )
    assert parts(token)[0]["alg"] == alg
    assert legacy.jwks()["keys"][0]["alg"] == alg
    keys = keys_from_jwks(legacy.jwks())
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)
    assert verifier.verify(token, now=NOW).client_id == "c1"


@pytest.mark.parametrize("alg", ["ES256", "Ed448", "ed25519", "EdDSA "])
def test_token_with_another_alg_name_is_rejected(
    verifier: TokenVerifier, issuer_signer: Signer, alg: str
):
    header = {**good_header(issuer_signer), "alg": alg}
    rejected(verifier, forge(header, good_claims(), issuer_signer.sign), "algorithm")


def test_issuer_refuses_an_unknown_algorithm(issuer_signer: Signer):
    with pytest.raises(InvalidInputError, match="signed with one of"):
        TokenIssuer(issuer_signer, issuer=ISSUER, audience=AUDIENCE, algorithm="ES256")


def test_joserfc_verifies_an_issued_token_through_the_jwks(issuer: TokenIssuer):
    token = issue(issuer)
    key_set = joserfc_jwk.KeySet.import_key_set(issuer.jwks())  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RFC 9864 deprecation warning: we emit Ed25519
        decoded = joserfc_jwt.decode(token, key_set, algorithms=["Ed25519"])
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.claims["client_id"] == "ph-nbi-partner-1"


def test_jwks_with_lying_kid_is_refused(issuer: TokenIssuer):
    jwks = issuer.jwks()
    jwks["keys"][0]["kid"] = "0" * 32
    with pytest.raises(InvalidInputError, match="kid is not the key's id"):
        keys_from_jwks(jwks)


def test_verifier_refuses_ed448_and_mislabelled_keys(issuer_signer: Signer):
    ed448_key = ed448.Ed448PrivateKey.generate().public_key()
    with pytest.raises(InvalidInputError, match="must be Ed25519"):
        TokenVerifier({"a" * 32: ed448_key}, issuer=ISSUER, audience=AUDIENCE)  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="is not the id of its key"):
        TokenVerifier({"a" * 32: issuer_signer.public_key}, issuer=ISSUER, audience=AUDIENCE)


def test_alg_none_is_rejected(verifier: TokenVerifier, issuer_signer: Signer):
    header = {**good_header(issuer_signer), "alg": "none"}
    token = forge(header, good_claims(), lambda _: b"")
    rejected(verifier, token, "malformed")  # empty signature part: not even a JWS
    token = forge(header, good_claims(), lambda _: b"x")
    rejected(verifier, token, "algorithm")


def test_hs256_with_public_key_as_secret_is_rejected(
    verifier: TokenVerifier, issuer_signer: Signer
):
    pem = issuer_signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = issuer_signer.public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    header = {**good_header(issuer_signer), "alg": "HS256"}
    for secret in (pem, raw):

        def mac(data: bytes, secret: bytes = secret) -> bytes:
            return hmac.new(secret, data, hashlib.sha256).digest()

        rejected(verifier, forge(header, good_claims(), mac), "algorithm")


def test_unknown_kid_is_rejected(verifier: TokenVerifier):
    stranger = Signer.generate()
    token = forge(good_header(stranger), good_claims(), stranger.sign)
    rejected(verifier, token, "unknown kid")


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "A" * 32, "a" * 31, "a" * 33, "", 7, None, ["a" * 32]]
)
def test_malformed_kid_is_rejected_before_lookup(verifier: TokenVerifier, kid: object):
    stranger = Signer.generate()
    token = forge({"alg": "EdDSA", "kid": kid, "typ": "at+jwt"}, good_claims(), stranger.sign)
    rejected(verifier, token, "kid")


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+JWS", "", None, "application/jwt"])
def test_wrong_typ_is_rejected(verifier: TokenVerifier, issuer_signer: Signer, typ: object):
    token = forge({**good_header(issuer_signer), "typ": typ}, good_claims(), issuer_signer.sign)
    rejected(verifier, token, "typ")


def test_application_at_jwt_typ_is_accepted(verifier: TokenVerifier, issuer_signer: Signer):
    header = {**good_header(issuer_signer), "typ": "application/at+jwt"}
    token = forge(header, good_claims(), issuer_signer.sign)
    assert verifier.verify(token, now=NOW).role == Role.PARTNER


def test_missing_typ_or_extra_header_is_rejected(verifier: TokenVerifier, issuer_signer: Signer):
    header = good_header(issuer_signer)
    del header["typ"]
    rejected(verifier, forge(header, good_claims(), issuer_signer.sign), "header")
    jku = {**good_header(issuer_signer), "jku": "https://evil.test/jwks"}
    rejected(verifier, forge(jku, good_claims(), issuer_signer.sign), "header")


def test_expired_token_is_rejected(issuer: TokenIssuer, verifier: TokenVerifier):
    token = issue(issuer)
    assert verifier.verify(token, now=NOW + timedelta(seconds=899)).client_id
    with pytest.raises(UnauthenticatedError, match=r"^invalid access token: expired$"):
        verifier.verify(token, now=NOW + timedelta(seconds=900))


def test_token_past_exp_is_rejected(issuer: TokenIssuer, verifier: TokenVerifier):
    token = issue(issuer, now=NOW - timedelta(minutes=15))
    rejected(verifier, token, "expired")


def test_token_not_yet_valid_is_rejected(issuer: TokenIssuer, verifier: TokenVerifier):
    token = issue(issuer, now=NOW + timedelta(minutes=1))
    rejected(verifier, token, "not yet valid")
    # Within the 30 s clock leeway it passes.
    assert verifier.verify(issue(issuer, now=NOW + timedelta(seconds=30)), now=NOW).client_id


def test_nbf_in_future_is_rejected(verifier: TokenVerifier, issuer_signer: Signer):
    claims = {**good_claims(), "nbf": int(NOW.timestamp()) + 120}
    rejected(
        verifier, forge(good_header(issuer_signer), claims, issuer_signer.sign), "not yet valid"
    )


def test_lifetime_beyond_15_minutes_is_rejected(verifier: TokenVerifier, issuer_signer: Signer):
    claims = {**good_claims(), "exp": int(NOW.timestamp()) + 3600}
    token = forge(good_header(issuer_signer), claims, issuer_signer.sign)
    rejected(verifier, token, "lifetime too long")


@pytest.mark.parametrize(
    ("claim", "value", "message"),
    [
        ("iss", "https://evil.test", "issuer"),
        ("aud", "https://other.test/v1", "audience"),
        ("aud", [AUDIENCE, "https://other.test"], "audience"),
        ("sub", "someone-else", "sub"),
        ("role", "superuser", "role"),
        ("role", ["admin"], "role"),
        ("scope", "", "scope"),
        ("country", "ph", "country"),
        ("agency", "PH_NBI", "agency"),
        ("scope", "evidence:read  custody:read", "scope"),
        ("scope", ["evidence:read"], "scope"),
        ("exp", "tomorrow", "exp is not a NumericDate"),
        ("iat", True, "iat is not a NumericDate"),
        ("jti", "", "jti"),
        ("client_id", "a b", "client_id"),
    ],
)
def test_bad_claim_is_rejected(
    verifier: TokenVerifier, issuer_signer: Signer, claim: str, value: object, message: str
):
    claims = {**good_claims(), claim: value}
    rejected(verifier, forge(good_header(issuer_signer), claims, issuer_signer.sign), message)


@pytest.mark.parametrize(
    "claim", ["exp", "iat", "nbf", "jti", "sub", "client_id", "agency", "country", "role", "scope"]
)
def test_missing_claim_is_rejected(verifier: TokenVerifier, issuer_signer: Signer, claim: str):
    claims = good_claims()
    del claims[claim]
    token = forge(good_header(issuer_signer), claims, issuer_signer.sign)
    rejected(verifier, token, f"missing claim {claim}")


def test_tampered_payload_is_rejected(issuer: TokenIssuer, verifier: TokenVerifier):
    head, body, signature = issue(issuer).split(".")
    claims = json.loads(b64url_decode(body))
    claims["role"] = "investigator"
    claims["scope"] += " grants:manage"
    tampered = f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"
    rejected(verifier, tampered, "signature")


def test_other_key_with_same_kid_is_rejected(verifier: TokenVerifier, issuer_signer: Signer):
    impostor = Signer.generate()
    token = forge(good_header(issuer_signer), good_claims(), impostor.sign)
    rejected(verifier, token, "signature")


def test_ed448_signed_token_is_rejected(verifier: TokenVerifier, issuer_signer: Signer):
    ed448_private = ed448.Ed448PrivateKey.generate()
    # With the issuer's kid: the pinned Ed25519 key refuses the Ed448 signature.
    token = forge(good_header(issuer_signer), good_claims(), ed448_private.sign)
    rejected(verifier, token, "signature")
    # With the Ed448 key's own kid: unknown.
    own_kid = {**good_header(issuer_signer), "kid": key_id(ed448_private.public_key())}  # type: ignore[arg-type]
    rejected(verifier, forge(own_kid, good_claims(), ed448_private.sign), "unknown kid")


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "a..c", "!!!.e30.AA", "e30.e30.AA", "W10.e30.AA", "x" * 9000],
)
def test_garbage_is_rejected(verifier: TokenVerifier, token: str):
    with pytest.raises(UnauthenticatedError, match=r"^invalid access token: "):
        verifier.verify(token, now=NOW)


def test_duplicate_header_key_is_rejected(verifier: TokenVerifier, issuer_signer: Signer):
    head = b64url(
        b'{"alg":"EdDSA","kid":"%s","typ":"JWT","typ":"at+jwt"}' % issuer_signer.key_id.encode()
    )
    body = b64url(json.dumps(good_claims()).encode())
    token = f"{head}.{body}.{b64url(issuer_signer.sign(f'{head}.{body}'.encode()))}"
    rejected(verifier, token, "malformed header")


# --------------------------------------------------------------------------- verified-token memo


def test_token_verified_before_still_has_its_times_checked(issuer: TokenIssuer):
    verifier = TokenVerifier(issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE)
    token = issue(issuer)
    assert verifier.verify(token, now=NOW).client_id == "ph-nbi-partner-1"
    # Remembered now; expiry and not-before are still checked against each request's time.
    with pytest.raises(UnauthenticatedError, match=r"^invalid access token: expired$"):
        verifier.verify(token, now=NOW + timedelta(seconds=900))
    with pytest.raises(UnauthenticatedError, match=r"^invalid access token: not yet valid$"):
        verifier.verify(token, now=NOW - timedelta(seconds=31))
    assert verifier.verify(token, now=NOW - timedelta(seconds=30)).client_id


def test_remembered_token_gives_the_same_principal(issuer: TokenIssuer):
    token = issue(issuer, role=Role.INVESTIGATOR)
    fresh = TokenVerifier(issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE)
    first = fresh.verify(token, now=NOW)
    again = fresh.verify(token, now=NOW + timedelta(minutes=10))
    other = TokenVerifier(issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE)
    assert first == again == other.verify(token, now=NOW + timedelta(minutes=10))


def test_a_token_differing_from_a_remembered_one_is_verified_afresh(issuer: TokenIssuer):
    verifier = TokenVerifier(issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE)
    token = issue(issuer)
    verifier.verify(token, now=NOW)
    head, body, signature = token.split(".")
    claims = json.loads(b64url_decode(body))
    claims["role"] = "investigator"
    rejected(verifier, f"{head}.{b64url(json.dumps(claims).encode())}.{signature}", "signature")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    rejected(verifier, f"{head}.{body}.{flipped}", "signature")


def test_rejections_are_not_remembered(issuer: TokenIssuer, issuer_signer: Signer):
    verifier = TokenVerifier(issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE)
    # Not yet valid at NOW, valid a minute later: the first refusal must not stick.
    token = issue(issuer, now=NOW + timedelta(minutes=1))
    rejected(verifier, token, "not yet valid")
    assert verifier.verify(token, now=NOW + timedelta(minutes=1)).client_id
    forged = forge(good_header(issuer_signer), good_claims(), Signer.generate().sign)
    rejected(verifier, forged, "signature")
    rejected(verifier, forged, "signature")


def test_a_full_memo_keeps_verifying_every_token(issuer: TokenIssuer):
    verifier = TokenVerifier(
        issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE, cache_size=2
    )
    tokens = [issue(issuer, now=NOW - timedelta(minutes=i)) for i in range(5)]
    for _ in range(3):
        for token in tokens:
            assert verifier.verify(token, now=NOW).token_id == parts(token)[1]["jti"]
    with pytest.raises(UnauthenticatedError, match=r"expired$"):
        verifier.verify(tokens[-1], now=NOW + timedelta(minutes=11))
    unmemoized = TokenVerifier(
        issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE, cache_size=0
    )
    assert unmemoized.verify(tokens[0], now=NOW) == verifier.verify(tokens[0], now=NOW)


# --------------------------------------------------------------------------- client assertions


class Registry:
    """Registered client keys and a jti store, as the service keeps them in its database."""

    def __init__(self, keys: dict[str, list[PublicKey]]) -> None:
        self.keys = keys
        self.seen: dict[str, datetime] = {}

    def client_keys(self, client_id: str) -> Sequence[PublicKey]:
        return self.keys.get(client_id, [])

    def remember_jti(self, jti: str, expires_at: datetime) -> bool:
        if jti in self.seen:
            return False
        self.seen[jti] = expires_at
        return True

    def verify(self, assertion: str, *, now: datetime = NOW) -> str:
        return self.verified(assertion, now=now).client_id

    def verified(self, assertion: str, *, now: datetime = NOW) -> VerifiedAssertion:
        return verify_client_assertion(
            assertion,
            client_keys=self.client_keys,
            token_endpoint=TOKEN_ENDPOINT,
            now=now,
            remember_jti=self.remember_jti,
        )


@pytest.fixture(scope="module")
def th_client() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="module")
def ph_client() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def registry(th_client: Signer, ph_client: Signer) -> Registry:
    return Registry(
        {"th-rtp-inv-1": [th_client.public_key], "ph-nbi-partner-1": [ph_client.public_key]}
    )


def assertion_claims(client_id: str, **overrides: object) -> dict[str, Any]:
    t = int(NOW.timestamp())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_ENDPOINT,
        "iat": t,
        "exp": t + 120,
        "jti": f"jti-{client_id}-{t}",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def assertion(signer: Signer, claims: dict[str, Any], **header: object) -> str:
    return forge({"alg": signer.algorithm, "typ": "JWT", **header}, claims, signer.sign)


def refused(registry: Registry, token: str, message: str, *, now: datetime = NOW) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        registry.verify(token, now=now)
    assert info.value.message == f"invalid client assertion: {message}"


def test_ed25519_client_assertion_is_accepted(registry: Registry, th_client: Signer):
    claims = assertion_claims("th-rtp-inv-1")
    assert registry.verify(assertion(th_client, claims, kid=th_client.key_id)) == "th-rtp-inv-1"
    assert registry.seen == {claims["jti"]: NOW + timedelta(seconds=120)}


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_ed25519_client_assertion_is_accepted_under_either_name(
    registry: Registry, th_client: Signer, alg: str
):
    token = forge({"alg": alg, "typ": "JWT"}, assertion_claims("th-rtp-inv-1"), th_client.sign)
    assert registry.verify(token) == "th-rtp-inv-1"


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_a_p256_key_cannot_pass_as_ed25519(registry: Registry, ph_client: Signer, alg: str):
    token = forge({"alg": alg, "typ": "JWT"}, assertion_claims("ph-nbi-partner-1"), ph_client.sign)
    refused(registry, token, "no registered key of the client matches")
    assert registry.seen == {}


def test_es256_client_assertion_is_accepted(registry: Registry, ph_client: Signer):
    token = assertion(ph_client, assertion_claims("ph-nbi-partner-1"))
    assert registry.verify(token) == "ph-nbi-partner-1"


def test_client_with_rotated_keys_may_sign_with_either(registry: Registry, th_client: Signer):
    new_key = Signer.generate()
    registry.keys["th-rtp-inv-1"].append(new_key.public_key)
    assert registry.verify(assertion(new_key, assertion_claims("th-rtp-inv-1", jti="a")))
    assert registry.verify(assertion(th_client, assertion_claims("th-rtp-inv-1", jti="b")))


def test_assertion_with_wrong_audience_is_refused(registry: Registry, th_client: Signer):
    claims = assertion_claims("th-rtp-inv-1", aud="https://exchange.test/v1/other")
    refused(registry, assertion(th_client, claims), "audience")
    assert registry.seen == {}


def test_assertion_living_longer_than_5_minutes_is_refused(registry: Registry, th_client: Signer):
    t = int(NOW.timestamp())
    claims = assertion_claims("th-rtp-inv-1", exp=t + 301)
    refused(registry, assertion(th_client, claims), "lifetime exceeds 5 minutes")
    # An old iat cannot hide a far exp either.
    claims = assertion_claims("th-rtp-inv-1", iat=t - 600, exp=t + 60)
    refused(registry, assertion(th_client, claims), "lifetime exceeds 5 minutes")
    assert registry.seen == {}


def test_replayed_assertion_is_refused(registry: Registry, th_client: Signer):
    token = assertion(th_client, assertion_claims("th-rtp-inv-1"))
    assert registry.verify(token) == "th-rtp-inv-1"
    refused(registry, token, "replayed jti", now=NOW + timedelta(seconds=10))


def test_iss_not_equal_sub_is_refused(registry: Registry, th_client: Signer):
    claims = assertion_claims("th-rtp-inv-1", sub="ph-nbi-partner-1")
    refused(registry, assertion(th_client, claims), "sub must equal iss")


def test_assertion_signed_by_another_agency_key_is_refused(
    registry: Registry, th_client: Signer, ph_client: Signer
):
    # TH's key claiming to be PH's client: PH's only key is P-256, so no key matches EdDSA.
    refused(
        registry,
        assertion(th_client, assertion_claims("ph-nbi-partner-1")),
        "no registered key of the client matches",
    )
    # Another Ed25519 agency key claiming TH's client: the signature fails.
    vn = Signer.generate()
    refused(registry, assertion(vn, assertion_claims("th-rtp-inv-1")), "signature")
    assert registry.seen == {}


def test_header_alg_cannot_choose_the_key(registry: Registry, ph_client: Signer):
    # PH's P-256 key signs, but the header says EdDSA: only Ed25519 keys are tried, none fits.
    token = forge(
        {"alg": "EdDSA", "typ": "JWT"}, assertion_claims("ph-nbi-partner-1"), ph_client.sign
    )
    refused(registry, token, "no registered key of the client matches")
    token = forge(
        {"alg": "HS256"},
        assertion_claims("ph-nbi-partner-1"),
        lambda d: hmac.new(b"k", d, hashlib.sha256).digest(),
    )
    refused(registry, token, "algorithm")


def test_expired_assertion_is_refused(registry: Registry, th_client: Signer):
    token = assertion(th_client, assertion_claims("th-rtp-inv-1"))
    refused(registry, token, "expired", now=NOW + timedelta(seconds=120))
    assert registry.seen == {}


@pytest.mark.parametrize(
    ("exp", "message"),
    [
        ("1e400", "exp is not a NumericDate"),  # json reads it as a float infinity
        ("1" + "0" * 400, "exp is not a NumericDate"),
        ("-1", "exp is not a NumericDate"),
        ('"soon"', "exp is not a NumericDate"),
        ("null", "missing claim exp"),
        ("Infinity", "malformed claims"),
    ],
)
def test_assertion_with_absurd_exp_is_refused(
    registry: Registry, th_client: Signer, exp: str, message: str
):
    claims = json.dumps(assertion_claims("th-rtp-inv-1", exp=0))
    head = b64url(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
    body = b64url(claims.replace('"exp": 0', f'"exp": {exp}').encode())
    token = f"{head}.{body}.{b64url(th_client.sign(f'{head}.{body}'.encode()))}"
    refused(registry, token, message)
    assert registry.seen == {}


def test_assertion_from_the_future_is_refused(registry: Registry, th_client: Signer):
    t = int(NOW.timestamp())
    claims = assertion_claims("th-rtp-inv-1", iat=t + 60, exp=t + 120)
    refused(registry, assertion(th_client, claims), "issued in the future")


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "aud", "sub"])
def test_assertion_missing_claim_is_refused(registry: Registry, th_client: Signer, claim: str):
    claims = assertion_claims("th-rtp-inv-1", **{claim: None})
    refused(registry, assertion(th_client, claims), f"missing claim {claim}")


def test_unknown_or_malformed_client_is_refused(registry: Registry, th_client: Signer):
    refused(
        registry,
        assertion(th_client, assertion_claims("nobody")),
        "no registered key of the client matches",
    )
    refused(registry, assertion(th_client, assertion_claims("../x y")), "iss")


def test_access_token_is_not_a_client_assertion(registry: Registry, th_client: Signer):
    token = assertion(th_client, assertion_claims("th-rtp-inv-1"), typ="at+jwt")
    refused(registry, token, "header")


def test_assertion_with_wrong_kid_is_refused(registry: Registry, th_client: Signer):
    other = Signer.generate()
    token = assertion(th_client, assertion_claims("th-rtp-inv-1"), kid=other.key_id)
    refused(registry, token, "no registered key of the client matches")
    refused(registry, assertion(th_client, assertion_claims("th-rtp-inv-1"), kid="../k"), "kid")


# --------------------------------------------------------------------------- the acting officer

OFFICER = {"sub": "th-rtp-officer-0042", "name": "Pol. Lt. Somchai K."}


def test_assertion_act_names_the_acting_officer(registry: Registry, th_client: Signer):
    claims = assertion_claims("th-rtp-inv-1", act=OFFICER)
    verified = registry.verified(assertion(th_client, claims))
    assert verified == VerifiedAssertion(
        client_id="th-rtp-inv-1",
        act=ActingOfficer(sub="th-rtp-officer-0042", name="Pol. Lt. Somchai K."),
    )
    only_id = assertion_claims("th-rtp-inv-1", act={"sub": "7"}, jti="only-id")
    assert registry.verified(assertion(th_client, only_id)).act == ActingOfficer(sub="7")
    without = assertion_claims("th-rtp-inv-1", jti="without")
    assert registry.verified(assertion(th_client, without)).act is None


TEXT_RULE = "must be 1 to 200 characters of text, not blank"


@pytest.mark.parametrize(
    ("act", "message"),
    [
        ("th-rtp-officer-0042", "act must be an object"),
        (["th-rtp-officer-0042"], "act must be an object"),
        (None, "act must be an object"),
        ({}, f"act.sub {TEXT_RULE}"),
        ({"name": "Somchai"}, f"act.sub {TEXT_RULE}"),
        ({"sub": ""}, f"act.sub {TEXT_RULE}"),
        ({"sub": " \t "}, f"act.sub {TEXT_RULE}"),
        ({"sub": 42}, f"act.sub {TEXT_RULE}"),
        ({"sub": "x" * 201}, f"act.sub {TEXT_RULE}"),
        ({"sub": "7", "name": "n" * 201}, f"act.name {TEXT_RULE}"),
        ({"sub": "7", "name": ""}, f"act.name {TEXT_RULE}"),
        ({"sub": "7", "name": None}, f"act.name {TEXT_RULE}"),
        ({"sub": "7", "name": "Somchai\n#12 forged line"}, f"act.name {TEXT_RULE}"),
        ({"sub": "7\u0000"}, f"act.sub {TEXT_RULE}"),
        ({"sub": "7", "role": "boss"}, "act may hold only sub and name"),
        ({"sub": "7", "act": {"sub": "8"}}, "act may hold only sub and name"),
    ],
)
def test_a_bad_act_claim_is_refused_and_burns_no_jti(
    registry: Registry, th_client: Signer, act: object, message: str
):
    claims = assertion_claims("th-rtp-inv-1")
    claims["act"] = act
    refused(registry, assertion(th_client, claims), message)
    assert registry.seen == {}


def test_an_act_of_exactly_200_characters_is_accepted(registry: Registry, th_client: Signer):
    act = {"sub": "s" * 200, "name": "ñ" * 200}
    claims = assertion_claims("th-rtp-inv-1", act=act)
    assert registry.verified(assertion(th_client, claims)).act == ActingOfficer(**act)


def test_an_act_with_a_lone_surrogate_is_refused(registry: Registry, th_client: Signer):
    # json.dumps writes the surrogate as \ud800, which json.loads reads back as a lone surrogate.
    claims = assertion_claims("th-rtp-inv-1", act={"sub": "7\ud800"})
    refused(registry, assertion(th_client, claims), f"act.sub {TEXT_RULE}")


def test_the_act_claim_is_signed_with_the_assertion(registry: Registry, th_client: Signer):
    token = assertion(th_client, assertion_claims("th-rtp-inv-1", act=OFFICER))
    head, _, signature = token.split(".")
    swapped = assertion_claims("th-rtp-inv-1", act={"sub": "someone-else"})
    body = b64url(json.dumps(swapped).encode())
    refused(registry, f"{head}.{body}.{signature}", "signature")


def test_the_access_token_carries_act_into_the_principal(
    issuer: TokenIssuer, verifier: TokenVerifier
):
    officer = ActingOfficer(**OFFICER)
    token = issuer.issue(
        client_id="th-rtp-inv-1", agency="TH-RTP", country="TH", role=Role.INVESTIGATOR,
        case_ids=[], now=NOW, act=officer,
    )  # fmt: skip
    assert parts(token)[1]["act"] == OFFICER
    assert verifier.verify(token, now=NOW).act == officer
    plain = issue(issuer)
    assert "act" not in parts(plain)[1]
    assert verifier.verify(plain, now=NOW).act is None


def test_a_remembered_token_keeps_its_own_act(issuer: TokenIssuer):
    # The memo is keyed by the token's bytes: two tokens of one client, one naming an officer,
    # one not, never lend each other their act.
    fresh = TokenVerifier(issuer.verification_keys(), issuer=ISSUER, audience=AUDIENCE)
    tokens = {
        name: issuer.issue(
            client_id="th-rtp-inv-1",
            agency="TH-RTP",
            country="TH",
            role=Role.INVESTIGATOR,
            case_ids=[],
            now=NOW,
            act=act,
        )
        for name, act in [
            ("a", ActingOfficer(sub="a")),
            ("none", None),
            ("b", ActingOfficer(sub="b")),
        ]
    }
    for _ in range(2):
        assert fresh.verify(tokens["a"], now=NOW).act == ActingOfficer(sub="a")
        assert fresh.verify(tokens["none"], now=NOW).act is None
        assert fresh.verify(tokens["b"], now=NOW).act == ActingOfficer(sub="b")


@pytest.mark.parametrize(
    ("act", "message"),
    [
        ("officer", "act must be an object"),
        ({"sub": ""}, f"act.sub {TEXT_RULE}"),
        ({"sub": "7", "x": 1}, "act may hold only sub and name"),
    ],
)
def test_a_token_with_a_bad_act_is_rejected(
    verifier: TokenVerifier, issuer_signer: Signer, act: object, message: str
):
    token = forge(good_header(issuer_signer), good_claims() | {"act": act}, issuer_signer.sign)
    rejected(verifier, token, message)


# --------------------------------------------------------------------------- DPoP binding


JKT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_a_dpop_bound_token_carries_cnf_jkt(issuer: TokenIssuer, verifier: TokenVerifier):
    token = issuer.issue(
        client_id="c1",
        agency="PH-NBI",
        country="PH",
        role=Role.PARTNER,
        case_ids=[],
        now=NOW,
        dpop_jkt=JKT,
    )
    assert parts(token)[1]["cnf"] == {"jkt": JKT}
    assert verifier.verify(token, now=NOW).dpop_jkt == JKT
    assert verifier.verify(issue(issuer), now=NOW).dpop_jkt is None


def test_issuer_refuses_a_malformed_thumbprint(issuer: TokenIssuer):
    with pytest.raises(InvalidInputError, match="43 base64url characters"):
        issuer.issue(
            client_id="c1",
            agency="PH-NBI",
            country="PH",
            role=Role.PARTNER,
            case_ids=[],
            now=NOW,
            dpop_jkt="short",
        )


@pytest.mark.parametrize(
    "cnf",
    [{"jkt": "short"}, {"jkt": JKT, "x5t#S256": "x"}, {}, [JKT], JKT, None, {"jkt": 5}],
)
def test_a_malformed_cnf_is_rejected(verifier: TokenVerifier, issuer_signer: Signer, cnf: object):
    token = forge(good_header(issuer_signer), {**good_claims(), "cnf": cnf}, issuer_signer.sign)
    rejected(verifier, token, "cnf")


def test_a_token_names_at_most_16_cases_and_stays_under_2_kb(issuer: TokenIssuer):
    cases = [str(uuid.UUID(int=n, version=4)) for n in range(MAX_TOKEN_CASES + 1)]
    largest = issuer.issue(
        client_id="ph-nbi-partner", agency="PH-NBI", country="PH", role=Role.PARTNER,
        case_ids=cases[:MAX_TOKEN_CASES], now=NOW,
    )  # fmt: skip
    assert len(largest) < 2048
    with pytest.raises(InvalidInputError, match="a token names at most 16 cases"):
        issuer.issue(
            client_id="ph-nbi-partner", agency="PH-NBI", country="PH", role=Role.PARTNER,
            case_ids=cases, now=NOW,
        )  # fmt: skip
