"""DPoP proofs (RFC 9449) with real keys: thumbprints, proofs, nonces, and every refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwk as joserfc_jwk, jwt as joserfc_jwt

from exchange.dpop import (
    DPOP_TYP,
    NonceSource,
    VerifiedProof,
    access_token_hash,
    jwk_thumbprint,
    key_thumbprint,
    make_proof,
    normalize_htu,
    public_jwk,
    verify_proof,
)
from exchange.errors import DPoPNonceRequiredError, InvalidDPoPProofError, InvalidInputError
from exchange.signing import Signer, b64url, b64url_decode

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
URL = "https://exchange.test/v1/cases"
TOKEN = "eyJhbGciOiJFZDI1NTE5In0.eyJzdWIiOiJ4In0.c2ln"


def es256() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


class Replay:
    """A replay store as the service keeps it: key -> remember-until."""

    def __init__(self) -> None:
        self.seen: dict[str, datetime] = {}

    def __call__(self, key: str, until: datetime) -> bool:
        if key in self.seen:
            return False
        self.seen[key] = until
        return True


def check(proof: object, replay: Replay | None = None, **kwargs: Any) -> VerifiedProof:
    options: dict[str, Any] = {"htm": "GET", "htu": URL, "now": NOW}
    options.update(kwargs)
    return verify_proof(proof, remember_jti=replay if replay is not None else Replay(), **options)


def refused(proof: object, message: str, replay: Replay | None = None, **kwargs: Any) -> None:
    store = replay if replay is not None else Replay()
    before = dict(store.seen)
    with pytest.raises(InvalidDPoPProofError) as info:
        check(proof, store, **kwargs)
    assert info.value.message == f"invalid DPoP proof: {message}"
    assert store.seen == before  # a refused proof never burns a jti


def forge(header: dict[str, Any], claims: dict[str, Any], signer: Signer) -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signer.sign(f'{head}.{body}'.encode()))}"


def claims(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jti": "j-1",
        "htm": "GET",
        "htu": URL,
        "iat": int(NOW.timestamp()),
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def header(signer: Signer, **overrides: Any) -> dict[str, Any]:
    body = {"typ": DPOP_TYP, "alg": signer.algorithm, "jwk": public_jwk(signer.public_key)}
    body.update(overrides)
    return body


# --------------------------------------------------------------------------- thumbprints


def test_thumbprint_of_rfc_8037_appendix_a3():
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    # Members beyond the required ones never change the thumbprint.
    assert jwk_thumbprint({**jwk, "kid": "x", "use": "sig"}) == jwk_thumbprint(jwk)


@pytest.mark.parametrize("make", [Signer.generate, es256])
def test_thumbprints_match_joserfc(make: Any):
    signer = make()
    theirs = joserfc_jwk.import_key(public_jwk(signer.public_key)).thumbprint()  # type: ignore[arg-type]
    assert key_thumbprint(signer.public_key) == theirs


def test_thumbprint_refuses_other_key_types():
    with pytest.raises(InvalidInputError):
        jwk_thumbprint({"kty": "RSA", "n": "x", "e": "AQAB"})
    with pytest.raises(InvalidInputError):
        jwk_thumbprint({"kty": "OKP", "crv": "Ed25519"})


# --------------------------------------------------------------------------- good proofs


@pytest.mark.parametrize("make", [Signer.generate, es256])
def test_a_fresh_proof_verifies_and_names_its_key(make: Any):
    signer = make()
    replay = Replay()
    proof = make_proof(signer, htm="get", htu=URL + "?page=2#x", now=NOW, access_token=TOKEN)
    verified = check(proof, replay, access_token=TOKEN, bound_jkt=key_thumbprint(signer.public_key))
    assert verified.jkt == key_thumbprint(signer.public_key)
    assert list(replay.seen) == [verified.replay_key]
    assert replay.seen[verified.replay_key] == NOW + timedelta(seconds=70)


def test_proof_header_and_claims_are_rfc_9449():
    signer = Signer.generate()
    proof = make_proof(signer, htm="POST", htu=URL, now=NOW, access_token=TOKEN, nonce="n")
    head, body, _ = proof.split(".")
    assert json.loads(b64url_decode(head)) == {
        "alg": "Ed25519",
        "typ": "dpop+jwt",
        "jwk": public_jwk(signer.public_key),
    }
    payload = json.loads(b64url_decode(body))
    assert set(payload) == {"jti", "htm", "htu", "iat", "ath", "nonce"}
    assert payload["ath"] == access_token_hash(TOKEN)
    assert (payload["htm"], payload["htu"], payload["nonce"]) == ("POST", URL, "n")


def test_joserfc_verifies_our_proof_with_the_key_from_its_header():
    proof = make_proof(Signer.generate(), htm="GET", htu=URL, now=NOW)
    head = json.loads(b64url_decode(proof.split(".")[0]))
    key = joserfc_jwk.import_key(head["jwk"])
    decoded = joserfc_jwt.decode(proof, key, algorithms=["Ed25519"])
    assert decoded.header["typ"] == "dpop+jwt"
    assert decoded.claims["htu"] == URL


def test_we_verify_a_proof_made_by_joserfc():
    signer = es256()
    private = joserfc_jwk.import_key(signer.private_pem(), "EC")
    public = private.as_dict(private=False)
    token = joserfc_jwt.encode(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": public},
        {"jti": "their-jti", "htm": "GET", "htu": URL, "iat": int(NOW.timestamp())},
        private,
        algorithms=["ES256"],
    )
    assert check(token).jkt == private.thumbprint()


def test_htu_normalization():
    assert normalize_htu("HTTPS://Exchange.TEST:443/v1/a%7eb%2fc?q=1#f") == (
        "https://exchange.test/v1/a~b%2Fc"
    )
    assert normalize_htu("http://127.0.0.1:8000") == "http://127.0.0.1:8000/"
    # The same URL written differently passes; a different one does not.
    proof = make_proof(
        Signer.generate(), htm="GET", htu="https://EXCHANGE.test:443/v1/cases", now=NOW
    )
    assert check(proof).jti


# --------------------------------------------------------------------------- refusals


def test_a_replayed_proof_is_refused():
    replay = Replay()
    proof = make_proof(Signer.generate(), htm="GET", htu=URL, now=NOW)
    check(proof, replay)
    refused(proof, "replayed jti", replay, now=NOW + timedelta(seconds=5))


def test_the_same_jti_under_another_key_is_not_a_replay_of_it():
    replay = Replay()
    check(forge(header(a := Signer.generate()), claims(), a), replay)
    check(forge(header(b := Signer.generate()), claims(), b), replay)
    assert len(replay.seen) == 2


def test_a_proof_for_another_method_or_url_is_refused():
    proof = make_proof(Signer.generate(), htm="GET", htu=URL, now=NOW)
    refused(proof, "htm is not this request's method", htm="DELETE")
    refused(proof, "htu is not this request's URL", htu=URL + "/other")
    refused(proof, "htu is not this request's URL", htu="https://other.test/v1/cases")


@pytest.mark.parametrize(("offset", "message"), [(-61, "too old"), (11, "issued in the future")])
def test_a_stale_or_future_iat_is_refused(offset: int, message: str):
    proof = make_proof(Signer.generate(), htm="GET", htu=URL, now=NOW + timedelta(seconds=offset))
    refused(proof, message)


def test_iat_at_the_edges_of_the_window_is_accepted():
    for offset in (-60, 10):
        proof = make_proof(
            Signer.generate(), htm="GET", htu=URL, now=NOW + timedelta(seconds=offset)
        )
        assert check(proof).jti


def test_a_wrong_or_missing_ath_is_refused():
    signer = Signer.generate()
    other = make_proof(signer, htm="GET", htu=URL, now=NOW, access_token=TOKEN + "x")
    refused(other, "ath is not the access token's hash", access_token=TOKEN)
    none = make_proof(signer, htm="GET", htu=URL, now=NOW)
    refused(none, "ath is not the access token's hash", access_token=TOKEN)


def test_a_proof_with_another_key_than_the_bound_one_is_refused():
    holder, thief = Signer.generate(), Signer.generate()
    proof = make_proof(thief, htm="GET", htu=URL, now=NOW, access_token=TOKEN)
    refused(
        proof,
        "key is not the one the access token is bound to",
        access_token=TOKEN,
        bound_jkt=key_thumbprint(holder.public_key),
    )


def test_a_signature_by_another_key_than_the_jwk_is_refused():
    named, signing = Signer.generate(), Signer.generate()
    refused(forge(header(named), claims(), signing), "signature")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"typ": "JWT"}, "typ"),
        ({"typ": None}, "header must hold exactly typ, alg and jwk"),
        ({"kid": "k"}, "header must hold exactly typ, alg and jwk"),
        ({"alg": "ES256"}, "algorithm"),
        ({"alg": "none"}, "algorithm"),
        ({"alg": "HS256"}, "algorithm"),
        ({"jwk": {"kty": "OKP", "crv": "Ed448", "x": "AA"}}, "jwk"),
        ({"jwk": {"kty": "RSA", "n": "AA", "e": "AQAB"}}, "jwk"),
        ({"jwk": "key"}, "jwk"),
    ],
)
def test_bad_headers_are_refused(change: dict[str, Any], message: str):
    signer = Signer.generate()
    head = {k: v for k, v in {**header(signer), **change}.items() if v is not None}
    refused(forge(head, claims(), signer), message)


def test_a_jwk_with_a_private_key_is_refused():
    signer = Signer.generate()
    private = joserfc_jwk.import_key(signer.private_pem(), "OKP").as_dict(private=True)
    assert "d" in private
    refused(forge(header(signer, jwk=private), claims(), signer), "jwk")


def test_a_p256_point_off_the_curve_is_refused():
    signer = es256()
    jwk = public_jwk(signer.public_key)
    jwk["y"] = b64url(bytes(31) + b"\x01")
    refused(forge(header(signer, jwk=jwk), claims(), signer), "jwk")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"jti": None}, "missing claim jti"),
        ({"htm": None}, "missing claim htm"),
        ({"htu": None}, "missing claim htu"),
        ({"iat": None}, "missing claim iat"),
        ({"jti": ""}, "jti"),
        ({"jti": 7}, "malformed"),  # PyJWT itself insists on a string jti
        ({"htm": "get"}, "htm"),
        ({"htu": 5}, "htu is not this request's URL"),
        ({"htu": "https://exchange.test:x/v1/cases"}, "htu"),
        ({"iat": "now"}, "iat"),
        ({"iat": 1e400}, "iat"),  # json writes Infinity
    ],
)
def test_bad_claims_are_refused(change: dict[str, Any], message: str):
    signer = Signer.generate()
    refused(forge(header(signer), claims(**change), signer), message)


@pytest.mark.parametrize(
    "proof", [None, 7, "", "a.b", "a..c", "!!.e30.AA", "W10.e30.AA", "x" * 5000]
)
def test_garbage_is_refused(proof: object):
    with pytest.raises(InvalidDPoPProofError):
        check(proof)


# --------------------------------------------------------------------------- nonces


@pytest.fixture
def nonces() -> NonceSource:
    return NonceSource(b"k" * 32)


def test_without_the_nonce_the_server_answers_with_one(nonces: NonceSource):
    replay = Replay()
    proof = make_proof(Signer.generate(), htm="GET", htu=URL, now=NOW)
    with pytest.raises(DPoPNonceRequiredError) as info:
        check(proof, replay, nonces=nonces)
    assert info.value.code == "use_dpop_nonce"
    assert info.value.nonce == nonces.current(NOW)
    assert replay.seen == {}
    retried = make_proof(Signer.generate(), htm="GET", htu=URL, now=NOW, nonce=info.value.nonce)
    assert check(retried, replay, nonces=nonces).jti


def test_a_nonce_lives_for_its_window_and_the_next(nonces: NonceSource):
    nonce = nonces.current(NOW)
    assert nonces.is_valid(nonce, NOW + timedelta(minutes=5))
    assert not nonces.is_valid(nonce, NOW + timedelta(minutes=10))
    assert not nonces.is_valid(nonce, NOW - timedelta(minutes=5))  # not before it was made


@pytest.mark.parametrize("nonce", [None, 5, "", "1.abc", "x" * 40])
def test_malformed_nonces_are_invalid(nonces: NonceSource, nonce: object):
    assert not nonces.is_valid(nonce, NOW)


def test_a_nonce_of_another_exchange_or_a_forged_window_is_invalid(nonces: NonceSource):
    other = NonceSource(b"o" * 32)
    assert not nonces.is_valid(other.current(NOW), NOW)
    window, mac = nonces.current(NOW).split(".")
    assert not nonces.is_valid(f"{int(window) + 1}.{mac}", NOW + timedelta(minutes=5))


def test_replicas_sharing_the_issuer_key_share_nonces():
    issuer = Signer.generate()
    a, b = NonceSource.from_signer(issuer), NonceSource.from_signer(Signer(issuer.private_key))
    assert b.is_valid(a.current(NOW), NOW)
    assert not NonceSource.from_signer(Signer.generate()).is_valid(a.current(NOW), NOW)


def test_a_short_nonce_secret_is_refused():
    with pytest.raises(InvalidInputError):
        NonceSource(b"short")
