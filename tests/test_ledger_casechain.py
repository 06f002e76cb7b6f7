"""The per-case chain: its definition by hand, and the deep audit that holds every case to it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from exchange.errors import InvalidInputError
from exchange.ledger import casechain, merkle
from exchange.ledger.entry import GENESIS_PREV, Action, Actor, NewEntry, make_entry

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TH = Actor(agency="TH-RTP", country="TH", subject="client:th")


def test_the_chain_is_what_docs_ledger_md_says() -> None:
    # Written out from the definition, not through the module.
    h0 = hashlib.sha256(b"exchange.case-chain/v1\x00" + b"TH-2026-0042").digest()
    leaf = hashlib.sha256(b"\x00" + b"entry bytes").digest()
    h1 = hashlib.sha256(h0 + (7).to_bytes(8, "big") + leaf).digest()
    assert casechain.genesis("TH-2026-0042") == h0
    assert casechain.advance(h0, 7, leaf) == h1
    assert casechain.fold("TH-2026-0042", [(7, leaf)]) == (1, h1)
    assert casechain.fold("TH-2026-0042", []) == (0, h0)
    # Another case's chain never meets this one.
    assert casechain.genesis("TH-2026-0043") != h0


def entries(links: list[tuple[str, tuple[int, str] | None]]) -> list[bytes]:
    out, prev = [], GENESIS_PREV
    for seq, (case_id, link) in enumerate(links):
        _, data = make_entry(
            NewEntry(TH, Action.BUNDLE_FETCHED, case_id, None, {"n": seq}),
            seq=seq, prev=prev, time=NOW, case_link=link,
        )  # fmt: skip
        out.append(data)
        prev = hashlib.sha256(data).hexdigest()
    return out


def honest(case_ids: list[str]) -> list[bytes]:
    heads = casechain.Heads()
    out, prev = [], GENESIS_PREV
    for seq, case_id in enumerate(case_ids):
        count, head = heads.link(case_id)
        _, data = make_entry(
            NewEntry(TH, Action.BUNDLE_FETCHED, case_id, None, {"n": seq}),
            seq=seq, prev=prev, time=NOW, case_link=(count, head.hex()),
        )  # fmt: skip
        heads.add(case_id, seq, merkle.leaf_hash(data))
        out.append(data)
        prev = hashlib.sha256(data).hexdigest()
    return out


def test_the_deep_audit_accepts_interleaved_honest_chains() -> None:
    check = casechain.DeepCheck()
    for data in honest(["A", "B", "A", "A", "C", "B"]):
        check(data)


def test_the_deep_audit_names_a_wrong_case_seq() -> None:
    good = honest(["A", "A"])
    head = casechain.advance(casechain.genesis("A"), 0, merkle.leaf_hash(good[0]))
    bad = entries([("A", (0, casechain.genesis("A").hex())), ("A", (5, head.hex()))])
    check = casechain.DeepCheck()
    check(bad[0])
    with pytest.raises(InvalidInputError, match=r"case A: case_seq 5, but 1 entries of the case"):
        check(bad[1])


def test_the_deep_audit_names_a_wrong_case_prev() -> None:
    bad = entries([("A", (0, casechain.genesis("A").hex())), ("A", (1, "ab" * 32))])
    check = casechain.DeepCheck()
    check(bad[0])
    with pytest.raises(InvalidInputError, match="case A: case_prev is not the chain head"):
        check(bad[1])
