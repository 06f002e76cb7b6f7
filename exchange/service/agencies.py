"""The registry the operator keeps: agencies, their signing keys, and their API clients."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlmodel import Session, col, select

from exchange.errors import ConflictError, InvalidInputError, NotFoundError
from exchange.ledger.entry import Action, Actor, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.model import Role
from exchange.signing import PublicKey, key_id, load_public_key_pem, public_key_pem
from exchange.storage import ledger_store
from exchange.storage.tables import AgencyKeyRow, AgencyRow, ClientRow
from exchange.trust import TrustedKey, TrustStore

AGENCY_PATTERN: Final = re.compile(r"^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}\Z")
CLIENT_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


@dataclass(frozen=True)
class DevClient:
    """A client the development bootstrap registers with its agency's key."""

    client_id: str
    agency: str
    role: Role


def _operator(agency: str, country: str, subject: str) -> Actor:
    return Actor(agency=agency, country=country, subject=subject)


def register_agency(
    session: Session,
    *,
    log: LogSigner,
    now: datetime,
    agency_id: str,
    country: str,
    name: str,
    operator: str,
) -> AgencyRow:
    """Register an agency (ledger `agency.registered`); `ConflictError` if it exists."""
    if not AGENCY_PATTERN.match(agency_id):
        raise InvalidInputError(f"agency id {agency_id!r} is not like TH-RTP")
    if agency_id[:2] != country:
        raise InvalidInputError(f"agency {agency_id} does not belong to country {country}")
    if not name.strip() or len(name) > 500:
        raise InvalidInputError("agency name must be 1 to 500 characters")
    if session.get(AgencyRow, agency_id) is not None:
        raise ConflictError(f"agency {agency_id} is already registered")
    row = AgencyRow(id=agency_id, country=country, name=name, created_at=now)
    session.add(row)
    session.flush()
    ledger_store.append(
        session,
        NewEntry(
            actor=_operator(agency_id, country, operator),
            action=Action.AGENCY_REGISTERED,
            details={"agency": agency_id, "country": country, "name": name},
        ),
        log=log,
        now=now,
    )
    return row


def register_key(
    session: Session,
    *,
    log: LogSigner,
    now: datetime,
    agency_id: str,
    public_key: str,
    not_before: datetime,
    not_after: datetime,
    operator: str,
) -> AgencyKeyRow:
    """Register a signing key (PEM) of an agency (ledger `key.registered`)."""
    agency = session.get(AgencyRow, agency_id)
    if agency is None:
        raise NotFoundError(f"agency {agency_id} is not registered")
    key = load_public_key_pem(public_key.encode("ascii"))
    kid = key_id(key)
    if not not_before < not_after:
        raise InvalidInputError("not_before must be before not_after")
    if session.get(AgencyKeyRow, kid) is not None:
        raise ConflictError(f"key {kid} is already registered")
    row = AgencyKeyRow(
        key_id=kid,
        agency_id=agency_id,
        public_key_pem=public_key_pem(key),
        not_before=not_before,
        not_after=not_after,
        created_at=now,
    )
    session.add(row)
    session.flush()
    ledger_store.append(
        session,
        NewEntry(
            actor=_operator(agency_id, agency.country, operator),
            action=Action.KEY_REGISTERED,
            details={
                "agency": agency_id,
                "key_id": kid,
                "not_before": not_before.isoformat(),
                "not_after": not_after.isoformat(),
            },
        ),
        log=log,
        now=now,
    )
    return row


def revoke_key(
    session: Session, *, log: LogSigner, now: datetime, agency_id: str, kid: str, operator: str
) -> AgencyKeyRow:
    """Revoke an agency key from `now` on (ledger `key.revoked`); `ConflictError` if revoked."""
    row = session.get(AgencyKeyRow, kid)
    if row is None or row.agency_id != agency_id:
        raise NotFoundError(f"agency {agency_id} has no key {kid}")
    if row.revoked_at is not None:
        raise ConflictError(f"key {kid} was already revoked at {row.revoked_at.isoformat()}")
    row.revoked_at = now
    session.add(row)
    session.flush()
    agency = session.get(AgencyRow, agency_id)
    country = agency.country if agency else agency_id[:2]
    ledger_store.append(
        session,
        NewEntry(
            actor=_operator(agency_id, country, operator),
            action=Action.KEY_REVOKED,
            details={"agency": agency_id, "key_id": kid},
        ),
        log=log,
        now=now,
    )
    return row


def register_client(
    session: Session,
    *,
    log: LogSigner,
    now: datetime,
    client_id: str,
    agency_id: str,
    role: Role,
    public_key: str,
    operator: str,
) -> ClientRow:
    """Register an API client of an agency with its public key (ledger `client.registered`)."""
    if not CLIENT_PATTERN.match(client_id):
        raise InvalidInputError(f"client id {client_id!r} is malformed")
    agency = session.get(AgencyRow, agency_id)
    if agency is None:
        raise NotFoundError(f"agency {agency_id} is not registered")
    if session.get(ClientRow, client_id) is not None:
        raise ConflictError(f"client {client_id} is already registered")
    key = load_public_key_pem(public_key.encode("ascii"))
    row = ClientRow(
        id=client_id,
        agency_id=agency_id,
        role=Role(role).value,
        public_key_pem=public_key_pem(key),
        key_id=key_id(key),
        created_at=now,
    )
    session.add(row)
    session.flush()
    ledger_store.append(
        session,
        NewEntry(
            actor=_operator(agency_id, agency.country, operator),
            action=Action.CLIENT_REGISTERED,
            details={"client_id": client_id, "role": row.role, "key_id": row.key_id},
        ),
        log=log,
        now=now,
    )
    return row


def _set_client_disabled(
    session: Session,
    *,
    log: LogSigner,
    now: datetime,
    client_id: str,
    disabled: bool,
    operator: str,
) -> ClientRow:
    row = session.get(ClientRow, client_id)
    if row is None:
        raise NotFoundError(f"client {client_id} is not registered")
    if disabled and row.disabled_at is not None:
        raise ConflictError(
            f"client {client_id} was already disabled at {row.disabled_at.isoformat()}"
        )
    if not disabled and row.disabled_at is None:
        raise ConflictError(f"client {client_id} is not disabled")
    row.disabled_at = now if disabled else None
    session.add(row)
    session.flush()
    agency = session.get(AgencyRow, row.agency_id)
    country = agency.country if agency else row.agency_id[:2]
    ledger_store.append(
        session,
        NewEntry(
            actor=_operator(row.agency_id, country, operator),
            action=Action.CLIENT_DISABLED if disabled else Action.CLIENT_ENABLED,
            details={"client_id": client_id, "agency": row.agency_id},
        ),
        log=log,
        now=now,
    )
    return row


def disable_client(
    session: Session, *, log: LogSigner, now: datetime, client_id: str, operator: str
) -> ClientRow:
    """Refuse every login of a client from `now` on (ledger `client.disabled`).

    Tokens it already holds stay valid until they expire (at most 15 minutes).
    `NotFoundError` if unknown, `ConflictError` if it is disabled already.
    """
    return _set_client_disabled(
        session, log=log, now=now, client_id=client_id, disabled=True, operator=operator
    )


def enable_client(
    session: Session, *, log: LogSigner, now: datetime, client_id: str, operator: str
) -> ClientRow:
    """Let a disabled client log in again (ledger `client.enabled`).

    `NotFoundError` if unknown, `ConflictError` if it is not disabled.
    """
    return _set_client_disabled(
        session, log=log, now=now, client_id=client_id, disabled=False, operator=operator
    )


def list_agencies(session: Session) -> Sequence[AgencyRow]:
    """Every registered agency, by id."""
    return session.exec(select(AgencyRow).order_by(col(AgencyRow.id))).all()


def list_keys(session: Session, *, agency_id: str | None = None) -> Sequence[AgencyKeyRow]:
    """Registered agency keys (of one agency if given), by agency then validity start."""
    query = select(AgencyKeyRow).order_by(col(AgencyKeyRow.agency_id), col(AgencyKeyRow.not_before))
    if agency_id is not None:
        query = query.where(AgencyKeyRow.agency_id == agency_id)
    return session.exec(query).all()


def list_clients(session: Session, *, agency_id: str | None = None) -> Sequence[ClientRow]:
    """Registered API clients (of one agency if given), by id."""
    query = select(ClientRow).order_by(col(ClientRow.id))
    if agency_id is not None:
        query = query.where(ClientRow.agency_id == agency_id)
    return session.exec(query).all()


def trusted_key(row: AgencyKeyRow, country: str) -> TrustedKey:
    """The trust-store record of a registered agency key."""
    return TrustedKey(
        agency=row.agency_id,
        country=country,
        key_id=key_id(load_public_key_pem(row.public_key_pem.encode("ascii"))),
        public_key=load_public_key_pem(row.public_key_pem.encode("ascii")),
        not_before=row.not_before,
        not_after=row.not_after,
        revoked_at=row.revoked_at,
    )


def trust_store(session: Session, *, agency_ids: Iterable[str] | None = None) -> TrustStore:
    """A trust store of the registered agency keys (of `agency_ids` only, if given)."""
    query = select(AgencyKeyRow, AgencyRow).where(AgencyKeyRow.agency_id == AgencyRow.id)
    if agency_ids is not None:
        query = query.where(col(AgencyKeyRow.agency_id).in_(list(agency_ids)))
    return TrustStore(trusted_key(k, a.country) for k, a in session.exec(query).all())


def client_keys(session: Session, client_id: str, *, now: datetime) -> Sequence[PublicKey]:
    """The keys a client's assertions may be signed with: none if unknown or disabled.

    A client holding one of its agency's keys loses it the moment that key is revoked.
    """
    client = session.get(ClientRow, client_id)
    if client is None or (client.disabled_at is not None and client.disabled_at <= now):
        return []
    agency_key = session.get(AgencyKeyRow, client.key_id)
    if (
        agency_key is not None
        and agency_key.revoked_at is not None
        and agency_key.revoked_at <= now
    ):
        return []
    return [load_public_key_pem(client.public_key_pem.encode("ascii"))]


def bootstrap_dev_registry(
    session: Session,
    *,
    log: LogSigner,
    now: datetime,
    keys: Iterable[TrustedKey],
    clients: Iterable[DevClient],
) -> list[str]:
    """Register the development agencies, keys and clients that are not registered yet.

    Each gets its ledger entry like any operator registration. Returns what was registered.
    """
    # Nodes starting together would all see "not registered yet" and collide on the insert.
    ledger_store.lock_appends(session)
    done: list[str] = []
    operator = "operator:dev-bootstrap"
    pems: dict[str, str] = {}
    for key in keys:
        if session.get(AgencyRow, key.agency) is None:
            register_agency(
                session,
                log=log,
                now=now,
                agency_id=key.agency,
                country=key.country,
                name=f"{key.agency} (development)",
                operator=operator,
            )
            done.append(f"agency {key.agency}")
        pem = public_key_pem(key.public_key)
        pems.setdefault(key.agency, pem)
        if session.get(AgencyKeyRow, key.key_id) is None:
            register_key(
                session,
                log=log,
                now=now,
                agency_id=key.agency,
                public_key=pem,
                not_before=key.not_before,
                not_after=key.not_after,
                operator=operator,
            )
            done.append(f"key {key.key_id} of {key.agency}")
    for client in clients:
        if client.agency not in pems or session.get(ClientRow, client.client_id) is not None:
            continue
        register_client(
            session,
            log=log,
            now=now,
            client_id=client.client_id,
            agency_id=client.agency,
            role=client.role,
            public_key=pems[client.agency],
            operator=operator,
        )
        done.append(f"client {client.client_id} ({client.role.value}) of {client.agency}")
    return done
