"""Key ids, raw signatures and the detached JWS, checked by a second, independent path."""

from __future__ import annotations

import base64
import hashlib
import json
import warnings

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwk as joserfc_jwk, jws as joserfc_jws
from jwcrypto import jwk as jwcrypto_jwk, jws as jwcrypto_jws

from exchange.errors import InvalidInputError, VerificationError
from exchange.model import MANIFEST_JWS_TYP
from exchange.signing import (
    Signer,
    key_id,
    load_private_key_pem,
    load_public_key_pem,
    sign_detached_jws,
    verify_detached_jws,
    verify_signature,
)

PAYLOAD = b'{"format":"exchange.manifest/v1","package_id":"x"}'


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_key_id_is_sha256_of_spki_der_first_16_bytes():
    signer = Signer.generate()
    der = signer.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_id(signer.public_key) == hashlib.sha256(der).hexdigest()[:32]
    assert len(signer.key_id) == 32


def test_key_id_of_a_fixed_key():
    # RFC 8032 test 1 secret key; its SPKI DER is the fixed 12-byte prefix plus the raw key.
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = ed25519.Ed25519PrivateKey.from_private_bytes(secret).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    spki = bytes.fromhex("302a300506032b6570032100") + raw
    assert key_id(public) == hashlib.sha256(spki).hexdigest()[:32]


@pytest.mark.parametrize("kind", ["ed25519", "es256"])
def test_detached_jws_verifies_with_cryptography_directly(kind: str):
    signer = (
        Signer.generate() if kind == "ed25519" else Signer(ec.generate_private_key(ec.SECP256R1()))
    )
    jws = sign_detached_jws(payload=PAYLOAD, signer=signer, typ=MANIFEST_JWS_TYP)
    head, middle, sig = jws.split(".")
    assert middle == ""
    header = json.loads(_unb64(head))
    assert header == {
        "alg": "Ed25519" if kind == "ed25519" else "ES256",
        "kid": signer.key_id,
        "typ": MANIFEST_JWS_TYP,
    }
    # RFC 7515 §5.2 by hand: signing input = b64(header) . b64(payload).
    signing_input = f"{head}.{base64.urlsafe_b64encode(PAYLOAD).rstrip(b'=').decode()}".encode()
    signature = _unb64(sig)
    public = signer.public_key
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, signing_input)
    else:
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))


def test_detached_jws_verifies_with_pyjwt_once_the_payload_is_reattached():
    signer = Signer.generate()
    head, _, sig = sign_detached_jws(payload=PAYLOAD, signer=signer, typ="t").split(".")
    attached = f"{head}.{base64.urlsafe_b64encode(PAYLOAD).rstrip(b'=').decode()}.{sig}"
    decoded = jwt.api_jws.decode_complete(attached, key=signer.public_key, algorithms=["Ed25519"])
    assert decoded["payload"] == PAYLOAD


def test_detached_jws_fails_for_another_payload():
    signer = Signer.generate()
    jws = sign_detached_jws(payload=PAYLOAD, signer=signer, typ="t")
    with pytest.raises(VerificationError) as info:
        verify_detached_jws(jws=jws, payload=PAYLOAD + b" ", public_key=signer.public_key, typ="t")
    assert info.value.reason == "bad_signature"


def test_raw_signature_round_trip_and_failure():
    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    sig = signer.sign(b"data")
    assert len(sig) == 64
    verify_signature(public_key=signer.public_key, signature=sig, data=b"data")
    with pytest.raises(VerificationError):
        verify_signature(public_key=signer.public_key, signature=sig, data=b"other")
    with pytest.raises(VerificationError):
        verify_signature(public_key=signer.public_key, signature=sig[:63], data=b"data")


def test_pem_round_trip():
    signer = Signer.generate()
    again = Signer(load_private_key_pem(signer.private_pem()))
    assert again.key_id == signer.key_id


def test_unsupported_keys_are_refused():
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidInputError, match="unsupported curve secp384r1"):
        load_public_key_pem(pem)
    with pytest.raises(InvalidInputError, match="not a PEM public key"):
        load_public_key_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


# --- RFC 9864: Ed25519 is emitted, EdDSA still verifies --------------------------------------


def _attached(jws: str, payload: bytes = PAYLOAD) -> str:
    head, _, sig = jws.split(".")
    return f"{head}.{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}.{sig}"


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_an_ed25519_key_signs_and_verifies_under_both_names(alg: str):
    signer = Signer.generate()
    jws = sign_detached_jws(payload=PAYLOAD, signer=signer, typ="t", algorithm=alg)
    assert json.loads(_unb64(jws.split(".")[0]))["alg"] == alg
    header = verify_detached_jws(jws=jws, payload=PAYLOAD, public_key=signer.public_key, typ="t")
    assert header.alg == alg


def test_both_names_carry_the_same_signature_over_their_own_header():
    # Ed25519 and EdDSA are one signature scheme: only the header (so the signing input) differs.
    signer = Signer.generate()
    for alg in ("Ed25519", "EdDSA"):
        head, _, sig = sign_detached_jws(
            payload=PAYLOAD, signer=signer, typ="t", algorithm=alg
        ).split(".")
        signing_input = _attached(f"{head}..{sig}").rsplit(".", 1)[0].encode()
        public = signer.public_key
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(_unb64(sig), signing_input)


@pytest.mark.parametrize(
    ("key_kind", "alg", "allowed"),
    [
        ("es256", "Ed25519", "ES256"),
        ("es256", "EdDSA", "ES256"),
        ("ed25519", "ES256", "Ed25519 or EdDSA"),
    ],
)
def test_an_alg_that_does_not_fit_the_trusted_key_is_refused(key_kind: str, alg: str, allowed: str):
    trusted = (
        Signer.generate()
        if key_kind == "ed25519"
        else Signer(ec.generate_private_key(ec.SECP256R1()))
    )
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": alg, "kid": trusted.key_id, "typ": "t"}).encode()
    ).rstrip(b"=")
    signing_input = header + b"." + base64.urlsafe_b64encode(PAYLOAD).rstrip(b"=")
    sig = base64.urlsafe_b64encode(trusted.sign(signing_input)).rstrip(b"=").decode()
    with pytest.raises(VerificationError) as info:
        verify_detached_jws(
            jws=f"{header.decode()}..{sig}", payload=PAYLOAD, public_key=trusted.public_key, typ="t"
        )
    assert info.value.reason == "bad_jws"
    assert info.value.message == f"JWS alg {alg} does not match the trusted key ({allowed})"


def test_a_p256_key_cannot_be_asked_to_sign_as_ed25519():
    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidInputError) as info:
        sign_detached_jws(payload=PAYLOAD, signer=signer, typ="t", algorithm="Ed25519")
    assert info.value.message == "a ES256 key cannot sign with JWS alg Ed25519"


def test_pyjwt_ed25519_refuses_an_ed448_key():
    # The fully-specified name pins the curve: PyJWT's EdDSA would take Ed448 too.
    ed448_key = ed448.Ed448PrivateKey.generate()
    with pytest.raises(jwt.InvalidKeyError):
        jwt.api_jws.encode(PAYLOAD, ed448_key, algorithm="Ed25519")
    token = jwt.api_jws.encode(PAYLOAD, ed448_key, algorithm="EdDSA")
    with pytest.raises(jwt.InvalidKeyError):
        jwt.api_jws.decode_complete(
            token.replace(token.split(".")[0], _b64json({"alg": "Ed25519"}), 1),
            key=ed448_key.public_key(),
            algorithms=["Ed25519"],
        )


def _b64json(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _okp_jwk(signer: Signer) -> dict[str, str | list[str]]:
    raw = signer.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x}


def test_joserfc_verifies_what_we_emit():
    signer = Signer.generate()
    jws = sign_detached_jws(payload=PAYLOAD, signer=signer, typ=MANIFEST_JWS_TYP)
    key = joserfc_jwk.import_key(_okp_jwk(signer))
    # joserfc refuses Ed25519 unless asked for by name, and warns on EdDSA (RFC 9864).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj = joserfc_jws.deserialize_compact(_attached(jws), key, algorithms=["Ed25519"])
    assert obj.payload == PAYLOAD
    assert obj.protected["alg"] == "Ed25519"


def test_jwcrypto_verifies_what_we_emit():
    signer = Signer.generate()
    jws = sign_detached_jws(payload=PAYLOAD, signer=signer, typ=MANIFEST_JWS_TYP)
    token = jwcrypto_jws.JWS()
    token.deserialize(_attached(jws))
    token.verify(jwcrypto_jwk.JWK(**_okp_jwk(signer)), alg="Ed25519")
    assert token.payload == PAYLOAD


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_we_verify_what_joserfc_signs_under_either_name(alg: str):
    signer = Signer.generate()
    private = joserfc_jwk.import_key(signer.private_pem(), "OKP")
    header = {"alg": alg, "kid": signer.key_id, "typ": "t"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that EdDSA is deprecated
        compact = joserfc_jws.serialize_compact(header, PAYLOAD, private, algorithms=[alg])
    head, _, sig = compact.split(".")
    verified = verify_detached_jws(
        jws=f"{head}..{sig}", payload=PAYLOAD, public_key=signer.public_key, typ="t"
    )
    assert verified.alg == alg
    with pytest.raises(VerificationError) as info:
        verify_detached_jws(
            jws=f"{head}..{sig}", payload=PAYLOAD + b" ", public_key=signer.public_key, typ="t"
        )
    assert info.value.reason == "bad_signature"
