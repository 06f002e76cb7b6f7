"""Ledger entries: canonical bytes, the schema and the pydantic model agree, every bad field fails."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import rfc8785
from hypothesis import given, strategies as st

from exchange.errors import InvalidInputError
from exchange.ledger.entry import (
    GENESIS_PREV,
    SCHEMA,
    Action,
    Actor,
    LedgerEntry,
    NewEntry,
    entry_hash,
    format_time,
    make_entry,
    parse_entry,
)
from exchange.model import canonical_bytes
from exchange.schema import load_schema, schema_errors

PACKAGE = "0b9e7c1a-3f4d-4e2b-9a6c-5d8e7f6a1b2c"
ACTOR = Actor(agency="TH-RTP", country="TH", subject="client:th-rtp-investigator")
# (case_seq, case_prev) of an entry about a case; see exchange/ledger/casechain.py.
LINK = (4, "cd" * 32)


def new(**overrides: Any) -> NewEntry:
    fields: dict[str, Any] = {
        "actor": ACTOR,
        "action": Action.PACKAGE_SEALED,
        "case_id": "TH-2026-0042",
        "package_id": PACKAGE,
        "details": {"manifest_sha256": "ab" * 32, "files": 3, "bytes": 1024},
    }
    fields.update(overrides)
    return NewEntry(**fields)


def test_canonical_bytes_are_exact(now: datetime) -> None:
    _, data = make_entry(new(), seq=0, prev=GENESIS_PREV, time=now, case_link=LINK)
    assert data == (
        b'{"action":"package.sealed","actor":{"agency":"TH-RTP","country":"TH",'
        b'"subject":"client:th-rtp-investigator"},"case_id":"TH-2026-0042",'
        b'"case_prev":"' + b"cd" * 32 + b'","case_seq":4,'
        b'"details":{"bytes":1024,"files":3,"manifest_sha256":"' + b"ab" * 32 + b'"},'
        b'"package_id":"' + PACKAGE.encode() + b'","prev":"' + b"0" * 64 + b'",'
        b'"seq":0,"time":"2026-11-29T12:00:00.000000Z","v":2}'
    )
    assert entry_hash(data) == hashlib.sha256(data).digest()


def test_optional_ids_are_left_out(now: datetime) -> None:
    entry, data = make_entry(
        new(action=Action.AGENCY_REGISTERED, case_id=None, package_id=None, details={}),
        seq=7,
        prev="cd" * 32,
        time=now,
    )
    assert b"case_id" not in data
    assert b"package_id" not in data
    assert entry.case_id is None
    assert entry.details == {}


def test_round_trip_through_parse(now: datetime) -> None:
    entry, data = make_entry(new(), seq=3, prev="ef" * 32, time=now, case_link=LINK)
    assert parse_entry(data) == entry
    assert schema_errors(SCHEMA, entry.to_wire()) == []
    assert canonical_bytes(LedgerEntry.from_wire(entry.to_wire())) == data


def test_time_is_utc_with_z() -> None:
    bangkok = timezone(timedelta(hours=7))
    assert format_time(datetime(2026, 1, 2, 7, 0, tzinfo=bangkok)) == "2026-01-02T00:00:00.000000Z"
    with pytest.raises(InvalidInputError, match="ledger time must be timezone-aware"):
        format_time(datetime(2026, 1, 2))  # the naive time under test


def test_action_enum_matches_the_schema() -> None:
    assert load_schema(SCHEMA)["properties"]["action"]["enum"] == [a.value for a in Action]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"case_id": ""}, "ledger entry /case_id: String should match pattern"),
        ({"case_id": "x" * 129}, "ledger entry /case_id: String should match pattern"),
        ({"package_id": "not-a-uuid"}, "ledger entry /package_id: String should match pattern"),
        ({"action": "case.deleted"}, "ledger entry /action: Input should be"),
        (
            {"details": {f"k{i}": i for i in range(101)}},
            "ledger entry /details: Dictionary should have at most 100 items",
        ),
    ],
)
def test_bad_new_entries_are_refused(
    overrides: dict[str, Any], message: str, now: datetime
) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("/", "/")):
        make_entry(new(**overrides), seq=0, prev=GENESIS_PREV, time=now, case_link=LINK)


@pytest.mark.parametrize(
    ("seq", "prev", "message"),
    [
        (-1, GENESIS_PREV, "ledger entry /seq: Input should be greater than or equal to 0"),
        (0, "AB" * 32, "ledger entry /prev: String should match pattern"),
        (0, "ab" * 31, "ledger entry /prev: String should match pattern"),
    ],
)
def test_bad_seq_or_prev_is_refused(seq: int, prev: str, message: str, now: datetime) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_entry(new(), seq=seq, prev=prev, time=now, case_link=LINK)


@pytest.mark.parametrize(
    ("field", "value"),
    [("agency", "th-rtp"), ("agency", "TH-RTP\n"), ("country", "THA"), ("subject", " ")],
)
def test_bad_actor_is_refused(field: str, value: str) -> None:
    fields = {"agency": "TH-RTP", "country": "TH", "subject": "s"} | {field: value}
    with pytest.raises(ValueError, match=field):
        Actor.model_validate(fields)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda w: w | {"extra": 1},
            "not valid against ledger-entry.v2.json: /: Additional properties",
        ),
        (
            lambda w: w | {"time": "2026-11-29T12:00:00+07:00"},
            "not valid against ledger-entry.v2.json: /time",
        ),
        (
            lambda w: w | {"time": "2026-02-30T12:00:00Z"},
            "not valid against ledger-entry.v2.json: /time",
        ),
        (lambda w: w | {"seq": True}, "not valid against ledger-entry.v2.json: /seq"),
        (
            lambda w: {k: v for k, v in w.items() if k != "details"},
            "'details' is a required property",
        ),
    ],
)
def test_parse_refuses_what_the_schema_refuses(mutate: Any, message: str, now: datetime) -> None:
    entry, _ = make_entry(new(), seq=1, prev="ab" * 32, time=now, case_link=LINK)
    with pytest.raises(InvalidInputError, match=message):
        parse_entry(canonical_bytes(mutate(entry.to_wire())))


def test_parse_refuses_non_canonical_bytes(now: datetime) -> None:
    _, data = make_entry(new(), seq=1, prev="ab" * 32, time=now, case_link=LINK)
    with pytest.raises(InvalidInputError, match="ledger entry: bytes are not RFC 8785 canonical"):
        parse_entry(data.replace(b'"seq":1', b'"seq": 1'))
    with pytest.raises(InvalidInputError, match="duplicate key 'seq'"):
        parse_entry(data[:-1] + b',"seq":1}')


def test_utc_now_is_accepted() -> None:
    entry, _ = make_entry(new(), seq=0, prev=GENESIS_PREV, time=datetime.now(UTC), case_link=LINK)
    assert entry.time.endswith("Z")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    details=st.dictionaries(st.text(max_size=6), _JSON, max_size=5),
    subject=st.text(min_size=1, max_size=12).filter(lambda s: not s.isspace() and s.strip() != ""),
    seq=st.integers(0, 2**53 - 1),
)
def test_entry_bytes_are_the_models_rfc8785_form(
    details: dict[str, Any], subject: str, seq: int
) -> None:
    # make_entry serializes the validated plain dict, not the model: the two must never differ.
    actor = Actor(agency="PH-NBI", country="PH", subject=subject)
    entry, data = make_entry(
        new(actor=actor, details=details),
        seq=seq,
        prev="ab" * 32,
        time=datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
        case_link=LINK,
    )
    assert data == rfc8785.dumps(entry.to_wire())


def test_v1_entries_still_parse(now: datetime) -> None:
    # A ledger written before v2 keeps verifying: its entries have no v, case_seq or case_prev.
    entry, _ = make_entry(new(), seq=2, prev="ab" * 32, time=now, case_link=LINK)
    wire = {k: v for k, v in entry.to_wire().items() if k not in ("v", "case_seq", "case_prev")}
    old = parse_entry(canonical_bytes(wire))
    assert (old.v, old.case_seq, old.case_prev, old.case_id) == (None, None, None, "TH-2026-0042")
    assert schema_errors("ledger-entry.v1.json", wire) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda w: {k: v for k, v in w.items() if k != "case_seq"},
            "'case_seq' is a dependency of 'case_id'",
        ),
        (
            lambda w: {k: v for k, v in w.items() if k not in ("case_id", "package_id")},
            "'case_id' is a dependency of 'case_seq'",
        ),
        (lambda w: w | {"case_seq": -1}, "ledger-entry.v2.json: /case_seq"),
        (lambda w: w | {"case_prev": "AB" * 32}, "ledger-entry.v2.json: /case_prev"),
        (
            lambda w: {k: v for k, v in w.items() if k != "v"},
            "not valid against ledger-entry.v1.json: /: Additional properties",
        ),
        (lambda w: w | {"v": 3}, "ledger-entry.v2.json: /v"),
        (
            lambda w: w | {"actor": w["actor"] | {"act": {"sub": "officer-7", "x": 1}}},
            "ledger-entry.v2.json: /actor/act",
        ),
    ],
)
def test_v2_case_link_rules(mutate: Any, message: str, now: datetime) -> None:
    entry, _ = make_entry(new(), seq=1, prev="ab" * 32, time=now, case_link=LINK)
    with pytest.raises(InvalidInputError, match=message):
        parse_entry(canonical_bytes(mutate(entry.to_wire())))


def test_model_refuses_a_case_entry_without_its_link(now: datetime) -> None:
    with pytest.raises(InvalidInputError, match="case_seq and case_prev go with case_id"):
        make_entry(new(), seq=1, prev="ab" * 32, time=now)
    with pytest.raises(InvalidInputError, match="case_seq and case_prev go with case_id"):
        make_entry(
            new(case_id=None, package_id=None), seq=1, prev="ab" * 32, time=now, case_link=LINK
        )


def test_acting_officer_is_recorded(now: datetime) -> None:
    actor = Actor.model_validate(
        {**ACTOR.to_wire(), "act": {"sub": "officer-7", "name": "Insp. Somchai"}}
    )
    _, data = make_entry(new(actor=actor), seq=1, prev="ab" * 32, time=now, case_link=LINK)
    assert b'"act":{"name":"Insp. Somchai","sub":"officer-7"}' in data
    assert parse_entry(data).actor.act == actor.act


def test_package_viewed_is_a_v2_action_only(now: datetime) -> None:
    entry, data = make_entry(
        new(action=Action.PACKAGE_VIEWED, details={"view": "manifest", "grant": None}),
        seq=1,
        prev="ab" * 32,
        time=now,
        case_link=LINK,
    )
    assert parse_entry(data).action is Action.PACKAGE_VIEWED
    v1 = {k: v for k, v in entry.to_wire().items() if k not in ("v", "case_seq", "case_prev")}
    with pytest.raises(
        InvalidInputError, match=r"not valid against ledger-entry\.v1\.json: /action"
    ):
        parse_entry(canonical_bytes(v1))
    with pytest.raises(InvalidInputError, match=r"package\.viewed needs v 2"):
        LedgerEntry.from_wire(v1)
