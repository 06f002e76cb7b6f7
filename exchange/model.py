"""Wire and domain types mirroring `schemas/`, and the one canonical serialisation (RFC 8785).

Signatures and hashes are always computed over `canonical_bytes`, never over a file's own bytes.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NewType

import rfc8785
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from exchange.errors import InvalidInputError

KeyId = NewType("KeyId", str)
AgencyId = NewType("AgencyId", str)

MANIFEST_FORMAT = "exchange.manifest/v1"
MANIFEST_JWS_TYP = "exchange-manifest+jws"

# Patterns are the schema's, anchored with \Z so that a trailing newline never slips through.
_TEXT = r"\S"
_AGENCY = r"^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}\Z"
_COUNTRY = r"^[A-Z]{2}\Z"
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
_TIMESTAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})\Z"
_SHA256 = r"^[0-9a-f]{64}\Z"
_MEDIA_TYPE = r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z"
_IMEI = r"^[0-9]{14,16}\Z"


def _check_pattern(pattern: str) -> Any:
    compiled = re.compile(pattern)

    def check(value: object) -> object:
        if isinstance(value, str) and not compiled.search(value):
            raise ValueError(f"does not match {pattern!r}")
        return value

    return BeforeValidator(check)


def _check_timestamp(value: object) -> object:
    if isinstance(value, str):
        datetime.fromisoformat(value)  # ValueError for impossible dates, as the schema's format
    return value


def _integral(value: object) -> object:
    # JSON Schema counts 1.0 as an integer; accept it as the schema does, but never a bool.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    return value


Text = Annotated[str, Field(min_length=1, max_length=500, strict=True), _check_pattern(_TEXT)]
Timestamp = Annotated[
    str, Field(strict=True), BeforeValidator(_check_timestamp), _check_pattern(_TIMESTAMP)
]


class WireModel(BaseModel):
    """Frozen pydantic model that rejects unknown fields, as the schemas do."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object form, with absent optional fields left out."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class LegalBasisType(StrEnum):
    """The legal instrument under which evidence was collected or is shared."""

    WARRANT = "warrant"
    MLA = "mla"
    PRODUCTION_ORDER = "production_order"
    EIO = "eio"
    OTHER = "other"


class LegalBasis(WireModel):
    """Legal basis of a collection or a grant."""

    type: LegalBasisType = Field(strict=False)
    reference: Text
    issued_by: Text
    valid_until: Timestamp | None = None


class Person(WireModel):
    """Who handled the evidence, by name and role."""

    name: Text
    role: Text


class Tool(WireModel):
    """The acquisition tool and its exact version."""

    name: Text
    version: Text


class SourceDevice(WireModel):
    """The device the evidence was acquired from."""

    description: Text
    serial: Text | None = None
    imei: Annotated[str, Field(strict=True), _check_pattern(_IMEI)] | None = None


class Collection(WireModel):
    """Collection provenance: who, when, where, how, with what, from what, under which seals."""

    collected_by: Person
    collected_at: Timestamp
    location: Text
    method: Text
    tool: Tool
    source_device: SourceDevice
    seal_numbers: Annotated[list[Text], Field(max_length=1000)]


class FileEntry(WireModel):
    """One evidence file: its path under data/, size, SHA-256 and media type."""

    path: Annotated[str, Field(min_length=1, max_length=1024, strict=True)]
    size: Annotated[int, BeforeValidator(_integral), Field(ge=0, le=2**50)]
    sha256: Annotated[str, Field(strict=True), _check_pattern(_SHA256)]
    media_type: Annotated[str, Field(strict=True), _check_pattern(_MEDIA_TYPE)]


class Manifest(WireModel):
    """An evidence package manifest, format v1 (schemas/manifest.v1.json, docs/packages.md)."""

    format: Literal["exchange.manifest/v1"]
    package_id: Annotated[str, Field(strict=True), _check_pattern(_UUID)]
    case_ref: Text
    agency: Annotated[str, Field(strict=True), _check_pattern(_AGENCY)]
    country: Annotated[str, Field(strict=True), _check_pattern(_COUNTRY)]
    created_at: Timestamp
    legal_basis: LegalBasis
    collection: Collection
    files: Annotated[list[FileEntry], Field(min_length=1, max_length=100_000)]
    exhibit_ref: Text | None = None
    notes: Annotated[str, Field(max_length=10_000, strict=True)] | None = None

    @classmethod
    def from_wire(cls, obj: object) -> Manifest:
        """Build from a parsed JSON object; raises `InvalidInputError` naming the first problem."""
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "/" + "/".join(str(p) for p in first["loc"])
            raise InvalidInputError(f"manifest {where}: {first['msg']}") from exc

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes of all files."""
        return sum(f.size for f in self.files)


_MAX_SAFE_INTEGER = 2**53 - 1


_WHOLE = object()


def _is_plain(value: object) -> bool:
    """Whether `value` holds only what json.dumps renders exactly as RFC 8785 does.

    That is: str, bool, None, integers within ±(2^53 - 1), lists, and dicts whose keys sort the
    same by code point as by UTF-16 code unit (true for any key below U+D800). Floats, and keys
    that could sort differently, take the slow, general path.
    """
    # A loop over a stack, not recursion: this runs on every ledger append.
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER:  # type: ignore[operator]  # kind is int
                return False
        elif kind is dict:
            for key in item:  # type: ignore[attr-defined]  # kind is dict
                if type(key) is not str or not (key.isascii() or max(key) < "\ud800"):
                    return False
            pending.extend(item.values())  # type: ignore[attr-defined]  # kind is dict
        elif kind is list:
            pending.extend(item)  # type: ignore[arg-type]  # kind is list
        else:
            return False
    return True


def canonical_bytes(obj: object, *, free: object = _WHOLE) -> bytes:
    """RFC 8785 (JCS) canonical UTF-8 bytes of a JSON value or a `WireModel`.

    `free`, when given, is the only part of `obj` whose shape was not already validated: the
    caller vouches that every other key is below U+D800 and every other number a safe integer,
    so only `free` is walked to choose the fast path (a ledger entry's `details`).
    """
    if isinstance(obj, WireModel):
        obj = obj.to_wire()
    if _is_plain(obj if free is _WHOLE else free):
        # json.dumps escapes exactly JCS's set (quote, backslash, control characters as
        # lowercase \u00xx) and sorts keys by code point, which `_is_plain` made equal to UTF-16
        # order: twice as fast as the general serializer, which the ledger's append rate feels.
        try:
            return json.dumps(
                obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let the general path raise its error
    try:
        return rfc8785.dumps(obj)  # type: ignore[arg-type]  # rfc8785 rejects non-JSON values itself
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"value has no canonical JSON form: {exc}") from exc


def parse_json(data: bytes | str, *, what: str) -> Any:
    """Parse JSON strictly: duplicate keys, NaN/Infinity and invalid UTF-8 are errors."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InvalidInputError(f"{what}: duplicate key {key!r}")
            out[key] = value
        return out

    def no_constant(name: str) -> Any:
        raise InvalidInputError(f"{what}: {name} is not JSON")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what}: not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{what}: not JSON ({exc.msg} at line {exc.lineno})") from exc


class Role(StrEnum):
    """What a client of an agency may do."""

    INVESTIGATOR = "investigator"
    PARTNER = "partner"
    PROSECUTOR = "prosecutor"
    ADMIN = "admin"


MAX_OFFICER_TEXT = 200

OfficerText = Annotated[
    str, Field(min_length=1, max_length=MAX_OFFICER_TEXT, strict=True, pattern=r"\S")
]


class ActingOfficer(WireModel):
    """The person acting through a client, as its signed assertion named them: the `act`
    claim (RFC 8693 §4.1) of an assertion and of the access token, `actor.act` of a v2 ledger
    entry (schemas/ledger-entry.v2.json)."""

    sub: OfficerText
    name: OfficerText | None = None


class Principal(BaseModel):
    """The authenticated caller of one request, as read from a verified access token."""

    model_config = ConfigDict(frozen=True)

    client_id: str
    agency: str
    country: str
    role: Role
    scopes: frozenset[str]
    token_id: str
    expires_at: datetime
    # The officer the client acts for, from the token's own `act` claim (None: not named).
    act: ActingOfficer | None = None
    # RFC 9449 `cnf.jkt`: the thumbprint of the key every request must prove (None: unbound).
    dpop_jkt: str | None = None

    def has_scope(self, scope: str) -> bool:
        """Whether the token carries `scope`."""
        return scope in self.scopes
