"""Keys, key ids, raw signatures and detached JWS (RFC 7515 appendix F); cryptography and PyJWT only.

Only Ed25519 (JWS ``EdDSA``) and ECDSA P-256 (JWS ``ES256``) are accepted. The key decides the
algorithm: a JWS header's ``alg`` must agree with the trusted key, never the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from exchange.errors import InvalidInputError, VerificationError
from exchange.model import KeyId

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}\Z")
ALGORITHMS = ("EdDSA", "ES256")


def key_id(public_key: PublicKey) -> KeyId:
    """Lowercase hex of the first 16 bytes of SHA-256 over the key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyId(hashlib.sha256(der).digest()[:16].hex())


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    """The JWS `alg` a key signs with: EdDSA for Ed25519, ES256 for P-256."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise InvalidInputError(f"unsupported curve {key.curve.name}: only Ed25519 and P-256")


def load_public_key_pem(pem: bytes) -> PublicKey:
    """Parse a PEM SubjectPublicKeyInfo; raises `InvalidInputError` unless Ed25519 or P-256."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise InvalidInputError(f"unsupported public key type {type(key).__name__}")
    algorithm_for(key)
    return key


def load_private_key_pem(pem: bytes) -> PrivateKey:
    """Parse an unencrypted PEM PKCS#8 private key (Ed25519 or P-256)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidInputError(f"unsupported private key type {type(key).__name__}")
    algorithm_for(key)
    return key


def public_key_pem(key: PublicKey) -> str:
    """PEM text of a public key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@dataclass(frozen=True)
class Signer:
    """A private key with its key id; the only object in the exchange that signs."""

    private_key: PrivateKey

    @classmethod
    def generate(cls) -> Signer:
        """A fresh Ed25519 signer."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        """Load from PEM; raises `InvalidInputError` on anything but Ed25519 or P-256."""
        return cls(load_private_key_pem(pem))

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self.private_key.public_key()

    @property
    def key_id(self) -> KeyId:
        """See `key_id`."""
        return key_id(self.public_key)

    @property
    def algorithm(self) -> str:
        """JWS algorithm name."""
        return algorithm_for(self.private_key)

    def private_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (write it with mode 0600)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        """Raw signature: 64 bytes Ed25519, or r||s (32+32 bytes) for ES256 as JWS wants it."""
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        der = self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_signature(*, public_key: PublicKey, signature: bytes, data: bytes) -> None:
    """Raise `VerificationError` (reason ``bad_signature``) unless `signature` holds over `data`."""
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            if len(signature) != 64:
                raise InvalidSignature
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError("signature does not verify", reason="bad_signature") from exc


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; raises `ValueError` on anything else."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_detached_jws(*, payload: bytes, signer: Signer, typ: str) -> str:
    """Compact JWS over `payload` with the payload left out: ``header..signature``."""
    headers = {"kid": signer.key_id, "typ": typ}
    token = jwt.api_jws.encode(
        payload, signer.private_key, algorithm=signer.algorithm, headers=headers
    )
    header, _, signature = token.split(".")
    return f"{header}..{signature}"


@dataclass(frozen=True)
class JwsHeader:
    """The protected header of a detached JWS, checked for shape but not yet trusted."""

    alg: str
    kid: KeyId
    typ: str


def read_detached_jws_header(jws: str, *, typ: str) -> JwsHeader:
    """Parse and check the header of a detached compact JWS before any key lookup.

    Raises `VerificationError` (reason ``bad_jws``) if the JWS is not ``header..signature``, if the
    header has any parameter beyond alg/kid/typ, an unknown alg, a malformed kid or another typ.
    """
    parts = jws.strip().split(".")
    if len(parts) != 3 or parts[1] != "" or not parts[0] or not parts[2]:
        raise VerificationError(
            "manifest.jws is not a detached compact JWS (header..signature)", reason="bad_jws"
        )
    try:
        header: Any = json.loads(b64url_decode(parts[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError("JWS header is not base64url JSON", reason="bad_jws") from exc
    if not isinstance(header, dict) or set(header) != {"alg", "kid", "typ"}:
        keys = sorted(header) if isinstance(header, dict) else header
        raise VerificationError(
            f"JWS header must hold exactly alg, kid, typ; got {keys}", reason="bad_jws"
        )
    if header["alg"] not in ALGORITHMS:
        raise VerificationError(f"JWS alg {header['alg']!r} is not allowed", reason="bad_jws")
    if header["typ"] != typ:
        raise VerificationError(f"JWS typ {header['typ']!r} is not {typ!r}", reason="bad_jws")
    if not isinstance(header["kid"], str) or not KEY_ID_PATTERN.match(header["kid"]):
        raise VerificationError("JWS kid is not 32 lowercase hex digits", reason="bad_jws")
    return JwsHeader(alg=header["alg"], kid=KeyId(header["kid"]), typ=header["typ"])


def verify_detached_jws(*, jws: str, payload: bytes, public_key: PublicKey, typ: str) -> JwsHeader:
    """Verify a detached JWS over `payload` with a trusted key; returns its header.

    The algorithm comes from the key; a header naming another is refused. Raises
    `VerificationError` (``bad_jws`` or ``bad_signature``).
    """
    header = read_detached_jws_header(jws, typ=typ)
    expected = algorithm_for(public_key)
    if header.alg != expected:
        raise VerificationError(
            f"JWS alg {header.alg} does not match the trusted key ({expected})", reason="bad_jws"
        )
    head, _, signature = jws.strip().split(".")
    attached = f"{head}.{b64url(payload)}.{signature}"
    try:
        jwt.api_jws.decode_complete(attached, key=public_key, algorithms=[expected])
    except jwt.InvalidSignatureError as exc:
        raise VerificationError(
            "manifest signature does not verify", reason="bad_signature"
        ) from exc
    except jwt.PyJWTError as exc:
        raise VerificationError(f"JWS rejected: {exc}", reason="bad_jws") from exc
    return header
