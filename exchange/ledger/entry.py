"""Ledger entries: the wire model (schemas/ledger-entry.v2.json, v1 still read), builder, hashes.

An entry is RFC 8785 canonical JSON; entry hash = SHA-256(canonical bytes), and each entry's
`prev` is the hex entry hash of the one before it (64 zeros for seq 0). A v2 entry about a case
also carries its place in the case's own chain (`case_seq`, `case_prev`, see
`exchange.ledger.casechain`), which is what lets a custody bundle prove it is complete. See
docs/ledger.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from exchange.errors import InvalidInputError
from exchange.model import ActingOfficer, WireModel, canonical_bytes, parse_json
from exchange.schema import validate

SCHEMA_V1 = "ledger-entry.v1.json"
SCHEMA = "ledger-entry.v2.json"
VERSION = 2
GENESIS_PREV = "0" * 64

_AGENCY = r"^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}$"
_COUNTRY = r"^[A-Z]{2}$"
_SHA256 = r"^[0-9a-f]{64}$"
_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$"
_CASE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_MAX_SEQ = 2**53 - 1


class Action(StrEnum):
    """What happened; the schema's `action` enum (add a member there and here together)."""

    CASE_OPENED = "case.opened"
    PACKAGE_REGISTERED = "package.registered"
    PACKAGE_SEALED = "package.sealed"
    GRANT_ISSUED = "grant.issued"
    GRANT_REVOKED = "grant.revoked"
    BUNDLE_FETCHED = "bundle.fetched"
    CUSTODY_EXPORTED = "custody.exported"
    AGENCY_REGISTERED = "agency.registered"
    KEY_REGISTERED = "key.registered"
    KEY_REVOKED = "key.revoked"
    CLIENT_REGISTERED = "client.registered"
    # v2 only: an operator refused, then allowed again, a client's logins.
    CLIENT_DISABLED = "client.disabled"
    CLIENT_ENABLED = "client.enabled"
    INTEGRITY_FAILURE = "integrity.failure"
    # v2 only: a partner read a package's manifest and metadata, or the case's package list.
    PACKAGE_VIEWED = "package.viewed"


def _time_check(value: object) -> object:
    if isinstance(value, str):
        datetime.fromisoformat(value)  # ValueError for impossible dates, as the schema's format
    return value


def _is_int(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    return value


Subject = Annotated[str, Field(min_length=1, max_length=500, strict=True, pattern=r"\S")]


class Actor(WireModel):
    """Who did it: the agency, its country, the acting subject (client id) and the officer."""

    agency: Annotated[str, Field(strict=True, pattern=_AGENCY)]
    country: Annotated[str, Field(strict=True, pattern=_COUNTRY)]
    subject: Subject
    act: ActingOfficer | None = None


class LedgerEntry(WireModel):
    """One custody ledger entry (schemas/ledger-entry.v2.json; v1 entries have no `v`)."""

    v: Literal[2] | None = None
    seq: Annotated[int, BeforeValidator(_is_int), Field(ge=0, le=_MAX_SEQ)]
    prev: Annotated[str, Field(strict=True, pattern=_SHA256)]
    time: Annotated[str, Field(strict=True, pattern=_TIME), BeforeValidator(_time_check)]
    actor: Actor
    action: Annotated[Action, Field(strict=False)]
    case_id: Annotated[str, Field(strict=True, pattern=_CASE_ID)] | None = None
    package_id: Annotated[str, Field(strict=True, pattern=_UUID)] | None = None
    details: Annotated[dict[str, Any], Field(max_length=100)]
    case_seq: Annotated[int, BeforeValidator(_is_int), Field(ge=0, le=_MAX_SEQ)] | None = None
    case_prev: Annotated[str, Field(strict=True, pattern=_SHA256)] | None = None

    @model_validator(mode="after")
    def _version_fields(self) -> LedgerEntry:
        # The schemas' dependentRequired, and v1's lack of these fields, as one rule.
        if self.v is None:
            if self.case_seq is not None or self.case_prev is not None:
                raise ValueError("case_seq and case_prev need v 2")
            if self.actor.act is not None:
                raise ValueError("actor.act needs v 2")
            if self.action == Action.PACKAGE_VIEWED:
                raise ValueError("package.viewed needs v 2")
        elif (self.case_id is None) != (self.case_seq is None) or (self.case_id is None) != (
            self.case_prev is None
        ):
            raise ValueError("case_seq and case_prev go with case_id, all or none")
        return self

    @classmethod
    def from_wire(cls, obj: object) -> LedgerEntry:
        """Build from a parsed JSON object; raises `InvalidInputError` naming the first problem."""
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise InvalidInputError(f"ledger entry {_first_error(exc)}") from exc


@dataclass(frozen=True)
class NewEntry:
    """What a caller records; the store adds seq, prev and time."""

    actor: Actor
    action: Action
    case_id: str | None = None
    package_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=256)
def format_time(now: datetime) -> str:
    """RFC 3339 UTC with microseconds and a Z suffix; raises `InvalidInputError` if naive."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInputError("ledger time must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(data: bytes) -> bytes:
    """SHA-256 of an entry's canonical bytes (the hash chain's link)."""
    return hashlib.sha256(data).digest()


def make_entry(
    new: NewEntry,
    *,
    seq: int,
    prev: str,
    time: datetime,
    case_link: tuple[int, str] | None = None,
) -> tuple[LedgerEntry, bytes]:
    """The v2 entry at `seq` after the entry whose hex hash is `prev`, and its canonical bytes.

    `case_link` is (case_seq, hex case_prev) for an entry about a case, required exactly then.
    Raises `InvalidInputError` naming the first field that does not fit the schema.
    """
    wire: dict[str, Any] = {
        "v": VERSION,
        "seq": seq,
        "prev": prev,
        "time": format_time(time),
        "actor": _actor_wire(new.actor),
        "action": str(new.action),
        "details": new.details,
    }
    if new.case_id is not None:
        wire["case_id"] = new.case_id
    if case_link is not None:
        wire["case_seq"], wire["case_prev"] = case_link
    if new.package_id is not None:
        wire["package_id"] = new.package_id
    try:
        entry = LedgerEntry.model_validate(wire)
    except ValidationError as exc:
        raise InvalidInputError(f"ledger entry {_first_error(exc)}") from exc
    # `wire` passed validation and holds only plain JSON values, so its canonical bytes are the
    # entry's (a test holds the two equal); skipping the model's dump saves a third of the time.
    return entry, entry_bytes(wire)


def entry_bytes(wire: dict[str, Any]) -> bytes:
    """Canonical bytes of an entry object that `LedgerEntry` has validated.

    The model fixes every key and number outside `details` (ASCII keys, safe integers), so only
    `details` decides whether the fast serializer is exact.
    """
    return canonical_bytes(wire, free=wire["details"])


@lru_cache(maxsize=1024)
def _actor_wire(actor: Actor) -> dict[str, Any]:
    # Requests of one client share one Actor; its plain form is the same every time.
    return actor.to_wire()


def parse_entry(data: bytes) -> LedgerEntry:
    """Parse canonical entry bytes (v1 or v2); raises `InvalidInputError` unless valid and canonical."""
    obj = parse_json(data, what="ledger entry")
    validate(SCHEMA if isinstance(obj, dict) and "v" in obj else SCHEMA_V1, obj)
    entry = LedgerEntry.from_wire(obj)
    if canonical_bytes(entry) != data:
        raise InvalidInputError("ledger entry: bytes are not RFC 8785 canonical")
    return entry


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = "/" + "/".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}"
