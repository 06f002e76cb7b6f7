"""DPoP (RFC 9449): proofs of possession that bind access tokens to a client's key.

Pure: no clock, no database, no web request. The caller passes in `now`, the request's method
and URL, and a replay store (`remember_jti`). Proofs are compact JWS made and checked with PyJWT
(the signature), with the header, the embedded JWK and every claim checked here first, because
PyJWT knows nothing of `dpop+jwt`, `htm`, `htu`, `ath` or nonces. JWK thumbprints follow
RFC 7638 (for the two key types accepted, its canonical JSON is a fixed template).

Failures raise `InvalidDPoPProofError` (or `DPoPNonceRequiredError`, which carries the nonce to
send back); messages name the failed check but never echo proof content.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from exchange.errors import DPoPNonceRequiredError, InvalidDPoPProofError, InvalidInputError
from exchange.model import parse_json
from exchange.signing import (
    ALGORITHMS,
    PublicKey,
    Signer,
    algorithms_for,
    b64url,
    b64url_decode,
)

DPOP_TYP: Final = "dpop+jwt"
# Every alg a proof may use (advertised in `WWW-Authenticate: DPoP algs=...` and metadata).
DPOP_ALGS: Final = ALGORITHMS
# A proof is for one request, made just before it: older ones are refused, and remembered jtis
# are kept exactly as long as their proof could still be accepted.
PROOF_MAX_AGE: Final = timedelta(seconds=60)
# Client clocks ahead of ours.
PROOF_CLOCK_LEEWAY: Final = timedelta(seconds=10)
MAX_PROOF_LENGTH: Final = 4096
NONCE_WINDOW: Final = timedelta(minutes=5)
_JTI_PATTERN: Final = re.compile(r"^[\x21-\x7e]{1,255}\Z")
_NONCE_PATTERN: Final = re.compile(r"^[0-9]{1,12}\.[A-Za-z0-9_-]{22}\Z")
_HTM_PATTERN: Final = re.compile(r"^[A-Z]{1,16}\Z")
_PUBLIC_MEMBERS: Final = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


def _reject(check: str) -> InvalidDPoPProofError:
    return InvalidDPoPProofError(f"invalid DPoP proof: {check}")


# --------------------------------------------------------------------------- keys and thumbprints


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK (RFC 7517/8037) of an Ed25519 or P-256 key, required members only."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    numbers = key.public_numbers()
    if not isinstance(key.curve, ec.SECP256R1):
        raise InvalidInputError("DPoP keys are Ed25519 or P-256")
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of an OKP or EC public JWK.

    The hash input is the JSON of the required members only, in lexicographic order, with no
    whitespace; the members here are ASCII (base64url and curve names), so `json.dumps` with
    sorted keys and compact separators writes exactly RFC 7638's form.
    """
    members = _PUBLIC_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise InvalidInputError("not an OKP or EC public JWK")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def key_thumbprint(key: PublicKey) -> str:
    """The RFC 7638 thumbprint of a public key (the `jkt` a token is bound to)."""
    return jwk_thumbprint(public_jwk(key))


def _coordinate(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    try:
        raw = b64url_decode(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise _reject("jwk")
    return raw


def key_from_jwk(jwk: object) -> PublicKey:
    """The public key of a proof's `jwk` header: Ed25519 or P-256, and never a private key."""
    if not isinstance(jwk, dict):
        raise _reject("jwk")
    kty = jwk.get("kty")
    members = _PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
    # Only the public members, plus the descriptive ones a JWK may carry; "d" is a private key.
    if members is None or not set(jwk) <= {*members, "alg", "kid", "use", "key_ops"}:
        raise _reject("jwk")
    try:
        if kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise _reject("jwk")
            return ed25519.Ed25519PublicKey.from_public_bytes(_coordinate(jwk, "x"))
        if jwk.get("crv") != "P-256":
            raise _reject("jwk")
        x = int.from_bytes(_coordinate(jwk, "x"), "big")
        y = int.from_bytes(_coordinate(jwk, "y"), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError as exc:  # a point not on the curve
        raise _reject("jwk") from exc


def access_token_hash(access_token: str) -> str:
    """The `ath` claim: base64url SHA-256 of the access token's ASCII bytes (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def normalize_htu(url: str) -> str:
    """A URL as `htu` compares it: no query or fragment, scheme and host lowercase, no default
    port, percent-encoding normalized (RFC 3986 §6.2.2), empty path as ``/``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError("URL with a malformed port") from exc
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    path = re.sub(r"%[0-9A-Fa-f]{2}", _normalize_escape, parts.path) or "/"
    return urlunsplit((scheme, netloc, path, "", ""))


def _normalize_escape(match: re.Match[str]) -> str:
    byte = int(match.group(0)[1:], 16)
    return chr(byte) if byte in _UNRESERVED else match.group(0).upper()


# --------------------------------------------------------------------------- server nonces


class NonceSource:
    """Server-provided DPoP nonces (RFC 9449 §8-9) that every replica issues and accepts alike.

    A nonce is a time window's number with an HMAC over it, keyed from a secret all replicas
    share (see `from_signer`): nothing is stored, and a nonce is valid in its own window and the
    next, so a client holding the latest one is never refused at a window boundary.
    """

    def __init__(self, secret: bytes, *, window: timedelta = NONCE_WINDOW) -> None:
        """`secret`: at least 32 bytes known to every replica and nobody else."""
        if len(secret) < 32:
            raise InvalidInputError("the DPoP nonce secret must be at least 32 bytes")
        self._key = secret
        self._window = int(window.total_seconds())

    @classmethod
    def from_signer(cls, signer: Signer) -> NonceSource:
        """Nonces keyed (HKDF-SHA256) from the token issuer's private key, which every replica
        of one exchange holds; the key itself never signs a nonce."""
        raw = signer.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        secret = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"evidence-exchange dpop nonce v1"
        ).derive(raw)
        return cls(secret)

    def _mac(self, window: int) -> str:
        digest = hmac.new(self._key, str(window).encode("ascii"), hashlib.sha256).digest()
        return b64url(digest[:16])

    def current(self, now: datetime) -> str:
        """The nonce to hand out now."""
        window = int(now.timestamp()) // self._window
        return f"{window}.{self._mac(window)}"

    def is_valid(self, nonce: object, now: datetime) -> bool:
        """Whether `nonce` was handed out in this window or the previous one."""
        if not isinstance(nonce, str) or not _NONCE_PATTERN.match(nonce):
            return False
        window_text, mac = nonce.split(".")
        window = int(window_text)
        current = int(now.timestamp()) // self._window
        if window not in (current, current - 1):
            return False
        return hmac.compare_digest(mac, self._mac(window))


# --------------------------------------------------------------------------- proofs


def make_proof(
    signer: Signer,
    *,
    htm: str,
    htu: str,
    now: datetime,
    access_token: str | None = None,
    nonce: str | None = None,
) -> str:
    """A DPoP proof JWT for one request: `htm` the method, `htu` the URL (query dropped)."""
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": htm.upper(),
        "htu": normalize_htu(htu),
        "iat": int(now.timestamp()),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    headers = {"typ": DPOP_TYP, "jwk": public_jwk(signer.public_key)}
    return jwt.encode(claims, signer.private_key, algorithm=signer.algorithm, headers=headers)


@dataclass(frozen=True)
class VerifiedProof:
    """What a checked proof establishes: the key (its thumbprint) and the jti it used."""

    jkt: str
    jti: str
    replay_key: str
    remember_until: datetime


def _header(proof: str) -> dict[str, Any]:
    parts = proof.split(".")
    if len(parts) != 3 or not all(parts):
        raise _reject("malformed")
    try:
        header = parse_json(b64url_decode(parts[0]), what="DPoP header")
    except (ValueError, InvalidInputError) as exc:
        raise _reject("malformed header") from exc
    if not isinstance(header, dict):
        raise _reject("malformed header")
    return header


def _numeric_date(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**40:
        raise _reject("iat")
    return int(value)


def verify_proof(
    proof: object,
    *,
    htm: str,
    htu: str,
    now: datetime,
    remember_jti: Callable[[str, datetime], bool],
    access_token: str | None = None,
    bound_jkt: str | None = None,
    nonces: NonceSource | None = None,
) -> VerifiedProof:
    """Check a DPoP proof against one request and return the key's thumbprint.

    `htm`/`htu` are the request's method and URL (as the server is reached: its public URL).
    With `access_token`, the proof's `ath` must be that token's hash, and with `bound_jkt` its
    key must be the one the token is bound to. With `nonces`, the proof must carry a current
    nonce, else `DPoPNonceRequiredError`. `remember_jti(key, until)` records the proof's jti
    (per key) and returns False if it was seen before; it runs last, so a refused proof never
    burns a jti. Raises `InvalidDPoPProofError`.
    """
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_LENGTH:
        raise _reject("malformed")
    header = _header(proof)
    if set(header) != {"typ", "alg", "jwk"}:
        raise _reject("header must hold exactly typ, alg and jwk")
    typ = header["typ"]
    if not isinstance(typ, str) or typ.lower() != DPOP_TYP:
        raise _reject("typ")
    key = key_from_jwk(header["jwk"])
    alg = header["alg"]
    if alg not in algorithms_for(key):
        raise _reject("algorithm")
    try:
        claims = jwt.decode(
            proof,
            key=key,
            algorithms=[alg],
            options={
                "require": ["jti", "htm", "htu", "iat"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise _reject("signature") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise _reject(f"missing claim {exc.claim}") from exc
    except jwt.PyJWTError as exc:
        raise _reject("malformed") from exc

    jti = claims["jti"]
    if not isinstance(jti, str) or not _JTI_PATTERN.match(jti):
        raise _reject("jti")
    claimed_htm = claims["htm"]
    if not isinstance(claimed_htm, str) or not _HTM_PATTERN.match(claimed_htm):
        raise _reject("htm")
    if claimed_htm != htm.upper():
        raise _reject("htm is not this request's method")
    claimed_htu = claims["htu"]
    try:
        if not isinstance(claimed_htu, str) or normalize_htu(claimed_htu) != normalize_htu(htu):
            raise _reject("htu is not this request's URL")
    except InvalidInputError as exc:
        raise _reject("htu") from exc
    iat = _numeric_date(claims["iat"])
    current = int(now.timestamp())
    if iat > current + int(PROOF_CLOCK_LEEWAY.total_seconds()):
        raise _reject("issued in the future")
    if iat < current - int(PROOF_MAX_AGE.total_seconds()):
        raise _reject("too old")
    if access_token is not None:
        if claims.get("ath") != access_token_hash(access_token):
            raise _reject("ath is not the access token's hash")
    jkt = jwk_thumbprint(header["jwk"])
    if bound_jkt is not None and not hmac.compare_digest(jkt, bound_jkt):
        raise _reject("key is not the one the access token is bound to")
    if nonces is not None and not nonces.is_valid(claims.get("nonce"), now):
        raise DPoPNonceRequiredError(
            "the DPoP proof must carry the server's nonce", nonce=nonces.current(now)
        )
    # One jti per key: a jti replayed under another key is another key's (failed) business.
    replay_key = hashlib.sha256(f"{jkt}.{jti}".encode("ascii")).hexdigest()
    until = datetime.fromtimestamp(iat, tz=UTC) + PROOF_MAX_AGE + PROOF_CLOCK_LEEWAY
    if not remember_jti(replay_key, until):
        raise _reject("replayed jti")
    return VerifiedProof(jkt=jkt, jti=jti, replay_key=replay_key, remember_until=until)
