"""Keys, key ids, raw signatures and detached JWS (RFC 7515 appendix F); cryptography and PyJWT only.

Only Ed25519 and ECDSA P-256 (JWS ``ES256``) are accepted. The key decides the algorithm: a JWS
header's ``alg`` must agree with the trusted key, never the other way round.

Ed25519 signatures are named ``Ed25519`` (RFC 9864's fully-specified algorithm), which is what
the exchange emits; the older polymorphic ``EdDSA`` (RFC 8037, deprecated by RFC 9864) names the
very same signature bytes and stays accepted, so everything signed before keeps verifying.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from jwt.algorithms import OKPAlgorithm, get_default_algorithms

from exchange.errors import InvalidInputError, VerificationError
from exchange.model import KeyId

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}\Z")
ED25519: Final = "Ed25519"
EDDSA: Final = "EdDSA"
# Every JWS alg accepted anywhere; which one a given key may use is `algorithms_for(key)`.
ALGORITHMS: Final = (ED25519, EDDSA, "ES256")


class _Ed25519Algorithm(OKPAlgorithm):
    """RFC 9864 ``Ed25519``: PyJWT's EdDSA restricted to Ed25519 keys (never Ed448)."""

    def prepare_key(self, key: Any) -> Any:
        prepared = super().prepare_key(key)
        if not isinstance(prepared, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            raise jwt.InvalidKeyError("the Ed25519 algorithm needs an Ed25519 key")
        return prepared


def _register_ed25519() -> None:
    # PyJWT 2.15 knows only the polymorphic "EdDSA" (its RFC 9864 support is an open pull
    # request); its public register_algorithm adds the fully-specified name to the module-level
    # PyJWS that jwt.encode/jwt.decode use. A later PyJWT that ships it natively is left alone.
    if ED25519 not in get_default_algorithms():
        try:
            jwt.register_algorithm(ED25519, _Ed25519Algorithm())
        except ValueError:
            pass  # registered already (a module reload)


_register_ed25519()


def key_id(public_key: PublicKey) -> KeyId:
    """Lowercase hex of the first 16 bytes of SHA-256 over the key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyId(hashlib.sha256(der).digest()[:16].hex())


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    """The JWS `alg` the exchange signs with for a key: Ed25519 (RFC 9864), or ES256 for P-256."""
    return algorithms_for(key)[0]


def algorithms_for(key: PublicKey | PrivateKey) -> tuple[str, ...]:
    """Every JWS `alg` a key may verify under, preferred first: Ed25519 keys also take EdDSA."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return (ED25519, EDDSA)
    if isinstance(key.curve, ec.SECP256R1):
        return ("ES256",)
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
        """The JWS algorithm this signer emits (see `algorithm_for`)."""
        return algorithm_for(self.private_key)

    @property
    def is_ed25519(self) -> bool:
        """True for an Ed25519 key (JWS ``Ed25519`` or the legacy ``EdDSA``)."""
        return isinstance(self.private_key, ed25519.Ed25519PrivateKey)

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


def signing_algorithm(signer: Signer, algorithm: str | None) -> str:
    """`algorithm` if the signer's key may use it, else `InvalidInputError`; None: the default."""
    if algorithm is None:
        return signer.algorithm
    if algorithm not in algorithms_for(signer.private_key):
        raise InvalidInputError(f"a {signer.algorithm} key cannot sign with JWS alg {algorithm}")
    return algorithm


def sign_detached_jws(
    *, payload: bytes, signer: Signer, typ: str, algorithm: str | None = None
) -> str:
    """Compact JWS over `payload` with the payload left out: ``header..signature``.

    `algorithm` picks the legacy ``EdDSA`` name for an Ed25519 key (for verifiers not yet
    updated); by default the signer's own (`algorithm_for`).
    """
    headers = {"kid": signer.key_id, "typ": typ}
    token = jwt.api_jws.encode(
        payload,
        signer.private_key,
        algorithm=signing_algorithm(signer, algorithm),
        headers=headers,
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
    allowed = algorithms_for(public_key)
    if header.alg not in allowed:
        raise VerificationError(
            f"JWS alg {header.alg} does not match the trusted key ({' or '.join(allowed)})",
            reason="bad_jws",
        )
    head, _, signature = jws.strip().split(".")
    attached = f"{head}.{b64url(payload)}.{signature}"
    try:
        jwt.api_jws.decode_complete(attached, key=public_key, algorithms=[header.alg])
    except jwt.InvalidSignatureError as exc:
        raise VerificationError(
            "manifest signature does not verify", reason="bad_signature"
        ) from exc
    except jwt.PyJWTError as exc:
        raise VerificationError(f"JWS rejected: {exc}", reason="bad_jws") from exc
    return header
