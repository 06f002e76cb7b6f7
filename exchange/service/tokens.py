"""The token endpoint's use case: a verified client assertion in, an access token out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete

from exchange.auth import TokenIssuer, TokenVerifier, verify_client_assertion
from exchange.errors import UnauthenticatedError
from exchange.model import Role
from exchange.service.agencies import client_keys
from exchange.storage.tables import AgencyRow, ClientRow, UsedJtiRow


@dataclass(frozen=True)
class IssuedToken:
    """An access token and what it carries."""

    access_token: str
    expires_in: int
    scope: str


def remember_jti(session: Session, jti: str, expires_at: datetime, *, now: datetime) -> bool:
    """Record a client-assertion id; False if it was already used (a replay).

    Expired ids are purged first: an assertion that old is refused for its `exp` anyway.
    """
    session.exec(delete(UsedJtiRow).where(col(UsedJtiRow.expires_at) < now))
    if session.get(UsedJtiRow, jti) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(UsedJtiRow(jti=jti, expires_at=expires_at))
    except IntegrityError:
        return False  # a concurrent request used it first
    return True


def issue_token(
    session: Session,
    *,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    assertion: str,
    token_endpoint: str,
    now: datetime,
    client_id: str | None = None,
    dpop_jkt: str | None = None,
) -> IssuedToken:
    """Verify an RFC 7523 client assertion and issue an access token for its client.

    The token carries the client's role scopes only, never one scope per granted case: which
    cases it may read is decided by the live grants on every request (docs/auth.md), so the
    token's size does not grow with the grants. A `client_id` sent beside the assertion must be
    its issuer. The officer the assertion names (`act`) is carried by the token.
    `dpop_jkt` (a proven DPoP key's thumbprint) binds the token to that key. Raises
    `UnauthenticatedError` for any failure.
    """
    verified = verify_client_assertion(
        assertion,
        client_keys=partial(client_keys, session, now=now),
        token_endpoint=token_endpoint,
        now=now,
        remember_jti=lambda jti, exp: remember_jti(session, jti, exp, now=now),
    )
    if client_id is not None and client_id != verified.client_id:
        raise UnauthenticatedError("invalid client assertion: client_id is not the assertion's")
    client = session.get(ClientRow, verified.client_id)
    agency = session.get(AgencyRow, client.agency_id) if client else None
    if client is None or agency is None:
        raise UnauthenticatedError("invalid client assertion: unknown client")
    role = Role(client.role)
    token = issuer.issue(
        client_id=client.id,
        agency=agency.id,
        country=agency.country,
        role=role,
        now=now,
        act=verified.act,
        dpop_jkt=dpop_jkt,
    )
    # Read back through the verifier: the answer states exactly what the token carries.
    issued = verifier.verify(token, now=now)
    return IssuedToken(
        access_token=token,
        expires_in=int((issued.expires_at - now).total_seconds()),
        scope=" ".join(sorted(issued.scopes, key=_scope_order)),
    )


def _scope_order(scope: str) -> tuple[bool, str]:
    return scope.startswith("case:"), scope
