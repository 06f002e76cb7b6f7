"""Access tokens (RFC 9068) and client assertions (RFC 7523); the only module that calls PyJWT's
`jwt.encode`/`jwt.decode` for either.

Nothing here reads a clock, a database or a web request: the service passes in `now`, the
registered client keys and a replay store. Every failure is an `UnauthenticatedError` whose
message names the failed check but never echoes token content.

PyJWT is always called with the algorithm list, issuer, audience and required claims pinned,
and with its own clock checks switched off (time is a parameter here, checked below). The JOSE
header is parsed and checked by this module first, so `kid` is validated before any key lookup
and `typ` is checked at all (PyJWT never does).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.types import Options
from pydantic import ValidationError

from exchange.errors import ExchangeError, InvalidInputError, UnauthenticatedError
from exchange.model import (
    MAX_OFFICER_TEXT,
    ActingOfficer,
    KeyId,
    Principal,
    Role,
    parse_json,
)
from exchange.signing import (
    ALGORITHMS,
    ED25519,
    EDDSA,
    KEY_ID_PATTERN,
    PublicKey,
    Signer,
    algorithms_for,
    b64url,
    b64url_decode,
    key_id,
)

ACCESS_TOKEN_TYP: Final = "at+jwt"  # noqa: S105  # a JOSE typ, not a secret
# Access tokens are signed as RFC 9864 `Ed25519`; `EdDSA` (the same signature under its deprecated
# name) is still accepted, so tokens from a replica not yet upgraded keep working, and can still
# be emitted (the issuer's `algorithm`) while such replicas serve.
ACCESS_TOKEN_ALG: Final = ED25519
ACCESS_TOKEN_ALGS: Final = (ED25519, EDDSA)
MAX_ACCESS_TOKEN_TTL: Final = timedelta(minutes=15)
MAX_ASSERTION_LIFETIME: Final = timedelta(minutes=5)
# Tolerated clock difference for iat/nbf in the future (client clocks, replicas); never for exp.
CLOCK_LEEWAY: Final = timedelta(seconds=30)
MAX_TOKEN_LENGTH: Final = 8192
# Case scopes one token may name: access follows the live grants on every request, so tokens
# carry role scopes only and never one scope per granted case (see docs/auth.md). 16 case
# scopes keep a token under 2 KB.
MAX_TOKEN_CASES: Final = 16
# Verified access tokens remembered per verifier (see `TokenVerifier.verify`).
VERIFIED_CACHE_SIZE: Final = 1024

# One table: the scopes each role's token carries, before per-case read scopes are appended.
# Admins run the registry (agencies, keys, clients) and may audit custody, but hold no evidence
# or case scopes: seeing evidence always goes through an agency's investigator/partner clients.
ROLE_SCOPES: Final[Mapping[Role, tuple[str, ...]]] = {
    Role.INVESTIGATOR: (
        "cases:write",
        "evidence:upload",
        "grants:manage",
        "evidence:read",
        "custody:read",
    ),
    Role.PARTNER: ("evidence:read", "custody:read"),
    Role.PROSECUTOR: ("evidence:read", "custody:read"),
    Role.ADMIN: ("admin", "custody:read"),
}

CLIENT_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
AGENCY_PATTERN: Final = re.compile(r"^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}\Z")
COUNTRY_PATTERN: Final = re.compile(r"^[A-Z]{2}\Z")
CASE_ID_PATTERN: Final = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
)
JTI_PATTERN: Final = re.compile(r"^[\x21-\x7e]{1,255}\Z")
# RFC 7638 SHA-256 JWK thumbprint, base64url: the `cnf.jkt` of a DPoP-bound token (RFC 9449).
JKT_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{43}\Z")
# RFC 6749 §3.3 scope-token characters.
SCOPE_TOKEN_PATTERN: Final = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+\Z")

_ACCESS_CLAIMS: Final = (
    "iss",
    "aud",
    "sub",
    "client_id",
    "exp",
    "iat",
    "nbf",
    "jti",
    "agency",
    "country",
    "role",
    "scope",
)
_ASSERTION_CLAIMS: Final = ("iss", "sub", "aud", "exp", "iat", "jti")


def _pinned_options(required: Iterable[str], *, strict_aud: bool) -> Options:
    # PyJWT's clock checks read the system clock; time is a parameter here, checked by hand.
    return {
        "require": list(required),
        "strict_aud": strict_aud,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
    }


def _assertion_options() -> Options:
    return _pinned_options(_ASSERTION_CLAIMS, strict_aud=False)


def case_scope(case_id: str) -> str:
    """The scope naming read access to one case: ``case:<case_id>:read``."""
    return f"case:{case_id}:read"


def role_scopes(role: Role, case_ids: Iterable[str] = ()) -> list[str]:
    """The role's scopes followed by one sorted, de-duplicated case read scope per case id.

    Raises `InvalidInputError` for a malformed case id or more than `MAX_TOKEN_CASES` of them.
    """
    cases = sorted(set(case_ids))
    if len(cases) > MAX_TOKEN_CASES:
        raise InvalidInputError(f"a token names at most {MAX_TOKEN_CASES} cases")
    for case_id in cases:
        if not CASE_ID_PATTERN.match(case_id):
            raise InvalidInputError(f"case id {case_id!r} is not a lowercase UUID")
    return [*ROLE_SCOPES[role], *(case_scope(c) for c in cases)]


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return int(moment.timestamp())


def _reject(message: str) -> UnauthenticatedError:
    return UnauthenticatedError(message)


def _read_header(token: object, *, what: str) -> dict[str, Any]:
    """Split a compact JWS and return its parsed protected header; no trust implied."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise _reject(f"{what}: malformed")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _reject(f"{what}: malformed")
    try:
        header = parse_json(b64url_decode(parts[0]), what="JOSE header")
    except (ValueError, ExchangeError) as exc:
        raise _reject(f"{what}: malformed header") from exc
    if not isinstance(header, dict):
        raise _reject(f"{what}: malformed header")
    return header


def _read_unverified_claims(token: str, *, what: str) -> dict[str, Any]:
    try:
        claims = parse_json(b64url_decode(token.split(".")[1]), what="JWT claims")
    except (ValueError, ExchangeError) as exc:
        raise _reject(f"{what}: malformed claims") from exc
    if not isinstance(claims, dict):
        raise _reject(f"{what}: malformed claims")
    return claims


def _numeric_date(claims: Mapping[str, Any], name: str, *, what: str) -> int:
    value = claims.get(name)
    # Bounded, so that 1e400 (a float infinity to json) or 10**400 never reaches int()/datetime.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**40:
        raise _reject(f"{what}: {name} is not a NumericDate")
    return int(value)


def _string_claim(
    claims: Mapping[str, Any], name: str, pattern: re.Pattern[str], *, what: str
) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise _reject(f"{what}: {name}")
    return value


def _is_officer_text(value: object) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_OFFICER_TEXT or value.isspace():
        return False
    # Control characters could forge lines of a printed custody timeline.
    if any(unicodedata.category(c) == "Cc" for c in value):
        return False
    try:
        value.encode("utf-8")  # a lone surrogate has no UTF-8 form: no entry could record it
    except UnicodeEncodeError:
        return False
    return True


def _officer_text(act: Mapping[str, Any], member: str, *, what: str) -> None:
    if not _is_officer_text(act.get(member)):
        raise _reject(
            f"{what}: act.{member} must be 1 to {MAX_OFFICER_TEXT} characters of text, not blank"
        )


def _acting_officer(claims: Mapping[str, Any], *, what: str) -> ActingOfficer | None:
    """The `act` claim (RFC 8693 §4.1: the officer a client acts for), or None if absent.

    Bounded as a ledger entry's `actor.act`, so every entry made with the token can record it;
    no nested `act` (a delegation chain) or other member is accepted.
    """
    if "act" not in claims:
        return None
    act = claims["act"]
    if not isinstance(act, dict):
        raise _reject(f"{what}: act must be an object")
    if not set(act) <= {"sub", "name"}:
        raise _reject(f"{what}: act may hold only sub and name")
    _officer_text(act, "sub", what=what)
    if "name" in act:
        _officer_text(act, "name", what=what)
    try:
        return ActingOfficer.model_validate(act)
    except ValidationError as exc:  # the entry's own bounds, should they ever differ from ours
        raise _reject(f"{what}: act") from exc


# --------------------------------------------------------------------------- client assertions


@dataclass(frozen=True)
class VerifiedAssertion:
    """What a verified client assertion proved: the client, and the officer acting, if named."""

    client_id: str
    act: ActingOfficer | None = None


def verify_client_assertion(
    assertion: str,
    *,
    client_keys: Callable[[str], Sequence[PublicKey]],
    token_endpoint: str,
    now: datetime,
    remember_jti: Callable[[str, datetime], bool],
) -> VerifiedAssertion:
    """Verify an RFC 7523 private_key_jwt client assertion; return the client id and officer.

    `client_keys(client_id)` returns the client's registered, currently valid keys (empty if
    unknown); the key, not the header, decides the algorithm. `remember_jti(jti, expires_at)`
    records the jti and returns False if it was already seen. An `act` claim (signed with the
    rest of the assertion) names the officer acting; see `_acting_officer`. Raises
    `UnauthenticatedError`.
    """
    what = "invalid client assertion"
    header = _read_header(assertion, what=what)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise _reject(f"{what}: algorithm")
    if header.get("typ") == ACCESS_TOKEN_TYP or "crit" in header:
        # An access token must never pass as a client assertion; no extensions are understood.
        raise _reject(f"{what}: header")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not KEY_ID_PATTERN.match(kid)):
        raise _reject(f"{what}: kid")

    unverified = _read_unverified_claims(assertion, what=what)
    client_id = _string_claim(unverified, "iss", CLIENT_ID_PATTERN, what=what)
    candidates = [
        key
        for key in client_keys(client_id)
        if alg in algorithms_for(key) and (kid is None or key_id(key) == kid)
    ]
    if not candidates:
        raise _reject(f"{what}: no registered key of the client matches")

    claims: dict[str, Any] | None = None
    for key in candidates:
        try:
            claims = jwt.decode(
                assertion,
                key=key,
                algorithms=[alg],
                audience=token_endpoint,
                issuer=client_id,
                options=_assertion_options(),
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAudienceError as exc:
            raise _reject(f"{what}: audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise _reject(f"{what}: issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _reject(f"{what}: missing claim {exc.claim}") from exc
        except jwt.PyJWTError as exc:
            raise _reject(f"{what}: malformed") from exc
    if claims is None:
        raise _reject(f"{what}: signature")

    if claims.get("sub") != client_id:
        raise _reject(f"{what}: sub must equal iss")
    exp = _numeric_date(claims, "exp", what=what)
    iat = _numeric_date(claims, "iat", what=what)
    jti = _string_claim(claims, "jti", JTI_PATTERN, what=what)
    act = _acting_officer(claims, what=what)
    current = _epoch(now)
    leeway = int(CLOCK_LEEWAY.total_seconds())
    lifetime = int(MAX_ASSERTION_LIFETIME.total_seconds())
    if "nbf" in claims and _numeric_date(claims, "nbf", what=what) > current + leeway:
        raise _reject(f"{what}: not yet valid")
    if iat > current + leeway:
        raise _reject(f"{what}: issued in the future")
    if exp <= current:
        raise _reject(f"{what}: expired")
    if exp - iat > lifetime or exp - current > lifetime:
        raise _reject(f"{what}: lifetime exceeds 5 minutes")
    # Remember the jti last, so a rejected assertion never burns a jti.
    if not remember_jti(jti, datetime.fromtimestamp(exp, tz=now.tzinfo)):
        raise _reject(f"{what}: replayed jti")
    return VerifiedAssertion(client_id=client_id, act=act)


# --------------------------------------------------------------------------- access tokens


def _require_ed25519(key: object) -> ed25519.Ed25519PublicKey:
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidInputError(f"access-token keys must be Ed25519, not {type(key).__name__}")
    return key


def jwk(public_key: ed25519.Ed25519PublicKey, *, alg: str = ACCESS_TOKEN_ALG) -> dict[str, str]:
    """The RFC 8037 OKP JWK of an Ed25519 public key, with kid, alg and use=sig."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw),
        "kid": key_id(public_key),
        "alg": alg,
        "use": "sig",
    }


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, ed25519.Ed25519PublicKey]:
    """Parse a JWK Set of Ed25519 signing keys (as `TokenIssuer.jwks` writes) into kid -> key.

    Raises `InvalidInputError` for any other key type or a kid that is not the key's own id.
    """
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise InvalidInputError("JWK Set has no keys list")
    for entry in entries:
        if not isinstance(entry, dict) or (entry.get("kty"), entry.get("crv")) != (
            "OKP",
            "Ed25519",
        ):
            raise InvalidInputError("JWK Set holds a key that is not Ed25519")
        if (
            entry.get("alg", ACCESS_TOKEN_ALG) not in ACCESS_TOKEN_ALGS
            or entry.get("use", "sig") != "sig"
        ):
            raise InvalidInputError("JWK Set holds a key not meant for Ed25519 signatures")
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(str(entry.get("x"))))
        except ValueError as exc:
            raise InvalidInputError("JWK Set holds a malformed Ed25519 key") from exc
        if entry.get("kid") != key_id(key):
            raise InvalidInputError("JWK kid is not the key's id")
        keys[key_id(key)] = key
    return keys


class TokenIssuer:
    """Signs RFC 9068 access tokens with the exchange's Ed25519 issuer key."""

    def __init__(
        self,
        signer: Signer,
        *,
        issuer: str,
        audience: str,
        ttl: timedelta = MAX_ACCESS_TOKEN_TTL,
        previous_keys: Iterable[PublicKey] = (),
        algorithm: str = ACCESS_TOKEN_ALG,
    ) -> None:
        """`previous_keys` are retired issuer keys still published in the JWKS during rotation;
        `algorithm` is the JWS alg tokens are signed with (``Ed25519``, or the legacy ``EdDSA``)."""
        if not signer.is_ed25519:
            raise InvalidInputError("the token issuer key must be Ed25519")
        if algorithm not in ACCESS_TOKEN_ALGS:
            raise InvalidInputError(f"access tokens are signed with one of {ACCESS_TOKEN_ALGS}")
        self._algorithm = algorithm
        if not timedelta(0) < ttl <= MAX_ACCESS_TOKEN_TTL:
            raise InvalidInputError("access-token ttl must be positive and at most 15 minutes")
        self._signer = signer
        self._kid = signer.key_id
        self._issuer = issuer
        self._audience = audience
        self._ttl_seconds = int(ttl.total_seconds())
        published = [_require_ed25519(signer.public_key), *map(_require_ed25519, previous_keys)]
        self._public_keys: dict[str, ed25519.Ed25519PublicKey] = {key_id(k): k for k in published}

    @property
    def key_id(self) -> KeyId:
        """The kid of the current signing key."""
        return self._kid

    def issue(
        self,
        *,
        client_id: str,
        agency: str,
        country: str,
        role: Role,
        case_ids: Iterable[str] = (),
        now: datetime,
        act: ActingOfficer | None = None,
        dpop_jkt: str | None = None,
    ) -> str:
        """A signed access token for one client: its role scopes, plus one read scope per case
        in `case_ids` (at most `MAX_TOKEN_CASES`: a token never grows with a client's grants).

        `act` names the officer the client acts for (the token's `act` claim, RFC 8693 §4.1).
        `dpop_jkt` binds the token to a DPoP key (RFC 9449 `cnf.jkt`, the key's thumbprint).
        """
        if not CLIENT_ID_PATTERN.match(client_id):
            raise InvalidInputError(f"client id {client_id!r} is malformed")
        if not AGENCY_PATTERN.match(agency):
            raise InvalidInputError(f"agency {agency!r} is malformed")
        if not COUNTRY_PATTERN.match(country):
            raise InvalidInputError(f"country {country!r} is not ISO 3166-1 alpha-2")
        issued = _epoch(now)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": client_id,
            "client_id": client_id,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self._ttl_seconds,
            "jti": secrets.token_hex(16),
            "agency": agency,
            "country": country,
            "role": Role(role).value,
            "scope": " ".join(role_scopes(Role(role), case_ids)),
        }
        if act is not None:
            claims["act"] = act.to_wire()
        if dpop_jkt is not None:
            if not JKT_PATTERN.match(dpop_jkt):
                raise InvalidInputError("a DPoP key thumbprint is 43 base64url characters")
            claims["cnf"] = {"jkt": dpop_jkt}
        return jwt.encode(
            claims,
            self._signer.private_key,
            algorithm=self._algorithm,
            headers={"typ": ACCESS_TOKEN_TYP, "kid": self._kid},
        )

    def verification_keys(self) -> dict[str, ed25519.Ed25519PublicKey]:
        """kid -> public key of every published issuer key, for a `TokenVerifier`."""
        return dict(self._public_keys)

    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK Set of the issuer's public keys, current key first."""
        return {"keys": [jwk(k, alg=self._algorithm) for k in self._public_keys.values()]}


@dataclass(frozen=True)
class _Verified:
    """What a verified access token proved, and the times to check again on every use."""

    principal: Principal
    exp: int
    not_before: int  # the later of nbf and iat


class TokenVerifier:
    """Verifies the exchange's access tokens against pinned Ed25519 keys and returns a Principal.

    A token that verified is remembered (by its SHA-256, up to `cache_size` of them): its
    signature, header and claims are a function of its bytes and of the pinned keys, which never
    change for this verifier, so only the time checks are repeated when it comes back.
    """

    def __init__(
        self,
        keys: Mapping[str, PublicKey],
        *,
        issuer: str,
        audience: str,
        max_ttl: timedelta = MAX_ACCESS_TOKEN_TTL,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        """`keys` maps kid -> Ed25519 public key; each kid must be that key's own id."""
        self._keys: dict[str, ed25519.Ed25519PublicKey] = {}
        for kid, key in keys.items():
            pinned = _require_ed25519(key)
            if key_id(pinned) != kid:
                raise InvalidInputError(f"kid {kid!r} is not the id of its key")
            self._keys[kid] = pinned
        self._issuer = issuer
        self._audience = audience
        self._max_ttl = int(max_ttl.total_seconds())
        self._options = _pinned_options(_ACCESS_CLAIMS, strict_aud=True)
        self._cache_size = cache_size
        self._verified: dict[bytes, _Verified] = {}
        self._lock = threading.Lock()  # verify runs on the event loop and in worker threads

    def verify(self, token: str, *, now: datetime) -> Principal:
        """Verify signature, header, issuer, audience, times and claims; raise `UnauthenticatedError`."""
        what = "invalid access token"
        if len(token) > MAX_TOKEN_LENGTH:  # before hashing it
            raise _reject(f"{what}: malformed")
        digest = hashlib.sha256(token.encode()).digest()
        current = _epoch(now)
        known = self._verified.get(digest)
        if known is not None and known.principal.expires_at.tzinfo is now.tzinfo:
            _check_times(known.exp, known.not_before, current, what=what)
            return known.principal
        verified = self._verify_uncached(token, current=current, tzinfo=now.tzinfo, what=what)
        self._remember(digest, verified, current)
        return verified.principal

    def _remember(self, digest: bytes, verified: _Verified, current: int) -> None:
        with self._lock:
            if len(self._verified) >= self._cache_size:
                live = {d: v for d, v in self._verified.items() if v.exp > current}
                # Still full of live tokens: start over rather than track recency per hit.
                self._verified = live if len(live) < self._cache_size else {}
            if self._cache_size > 0:
                self._verified[digest] = verified

    def _verify_uncached(
        self, token: str, *, current: int, tzinfo: tzinfo | None, what: str
    ) -> _Verified:
        header = _read_header(token, what=what)
        if set(header) != {"alg", "kid", "typ"}:
            raise _reject(f"{what}: header")
        alg = header["alg"]
        if alg not in ACCESS_TOKEN_ALGS:
            raise _reject(f"{what}: algorithm")
        typ = header["typ"]
        if not isinstance(typ, str) or typ.lower() not in (ACCESS_TOKEN_TYP, "application/at+jwt"):
            raise _reject(f"{what}: typ")
        kid = header["kid"]
        if not isinstance(kid, str) or not KEY_ID_PATTERN.match(kid):
            raise _reject(f"{what}: kid")
        key = self._keys.get(kid)
        if key is None:
            raise _reject(f"{what}: unknown kid")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                options=self._options,
            )
        except jwt.InvalidSignatureError as exc:
            raise _reject(f"{what}: signature") from exc
        except jwt.InvalidAudienceError as exc:
            raise _reject(f"{what}: audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise _reject(f"{what}: issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _reject(f"{what}: missing claim {exc.claim}") from exc
        except jwt.PyJWTError as exc:
            raise _reject(f"{what}: malformed") from exc

        exp = _numeric_date(claims, "exp", what=what)
        iat = _numeric_date(claims, "iat", what=what)
        nbf = _numeric_date(claims, "nbf", what=what)
        _check_times(exp, max(nbf, iat), current, what=what)
        if exp - iat > self._max_ttl:
            raise _reject(f"{what}: lifetime too long")

        client_id = _string_claim(claims, "client_id", CLIENT_ID_PATTERN, what=what)
        if claims["sub"] != client_id:
            raise _reject(f"{what}: sub")
        agency = _string_claim(claims, "agency", AGENCY_PATTERN, what=what)
        country = _string_claim(claims, "country", COUNTRY_PATTERN, what=what)
        jti = _string_claim(claims, "jti", JTI_PATTERN, what=what)
        try:
            role = Role(claims["role"])
        except ValueError as exc:
            raise _reject(f"{what}: role") from exc
        scope = claims["scope"]
        if not isinstance(scope, str):
            raise _reject(f"{what}: scope")
        scopes = scope.split(" ")
        if not all(SCOPE_TOKEN_PATTERN.match(s) for s in scopes):
            raise _reject(f"{what}: scope")
        act = _acting_officer(claims, what=what)
        dpop_jkt: str | None = None
        if "cnf" in claims:
            cnf = claims["cnf"]
            if (
                not isinstance(cnf, dict)
                or set(cnf) != {"jkt"}
                or not isinstance(cnf["jkt"], str)
                or not JKT_PATTERN.match(cnf["jkt"])
            ):
                raise _reject(f"{what}: cnf")
            dpop_jkt = cnf["jkt"]
        principal = Principal(
            client_id=client_id,
            agency=agency,
            country=country,
            role=role,
            scopes=frozenset(scopes),
            token_id=jti,
            expires_at=datetime.fromtimestamp(exp, tz=tzinfo),
            act=act,
            dpop_jkt=dpop_jkt,
        )
        return _Verified(principal=principal, exp=exp, not_before=max(nbf, iat))


def _check_times(exp: int, not_before: int, current: int, *, what: str) -> None:
    if exp <= current:
        raise _reject(f"{what}: expired")
    if not_before > current + int(CLOCK_LEEWAY.total_seconds()):
        raise _reject(f"{what}: not yet valid")
