"""Key ids, raw signatures and the detached JWS, checked by a second, independent path."""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

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
        "alg": "EdDSA" if kind == "ed25519" else "ES256",
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
    decoded = jwt.api_jws.decode_complete(attached, key=signer.public_key, algorithms=["EdDSA"])
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
